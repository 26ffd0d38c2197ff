"""The ported pipeline's Dagster Definitions: its compute target and datastores as resources,
named as the v1 code names them (``workspace.yaml`` points here)."""

from aml_assets import LocalDatastore, LocalProcessCluster
from pipeline import pipeline1

RESOURCES = {
    # v1's default datastore, and the two datastores the article names.
    "workspace": LocalDatastore(),
    "workspaceblobstore": LocalDatastore(name="workspaceblobstore"),
    "workspacefilestore": LocalDatastore(name="workspacefilestore"),
    "aml_compute": LocalProcessCluster(max_concurrent_steps=2),
}

defs = pipeline1.to_definitions(RESOURCES)
