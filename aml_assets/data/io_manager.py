"""The datastore IO manager: hands dataset references between assets and registers versions.

Step outputs are already published by the step itself (atomically, content-addressed); what
this IO manager stores is the small ``DatasetRef`` that says where, per run, so concurrent runs
never read each other's references. Outputs declared as registered become dataset versions here.
"""


import json
from typing import Any

from dagster import (
    ConfigurableIOManager,
    DagsterInvariantViolationError,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)

from aml_assets.data.datasets import DatasetRef, read_pandas
from aml_assets.data.datastore import Datastore
from aml_assets.data.registry import DatasetRegistry
from aml_assets.errors import DatasetError

REGISTERED_KEY = "aml/registered"


def _asset_name(context: InputContext | OutputContext) -> str:
    return context.asset_key.to_python_identifier()


class DatastoreIOManager(ConfigurableIOManager):
    """Stores dataset references on the workspace datastore; registers dataset versions."""

    datastore: ResourceDependency[Datastore]

    def _ref_path(self, asset: str, run_id: str) -> str:
        return f"_refs/{asset}/{run_id}.json"

    def handle_output(self, context: OutputContext, obj: DatasetRef) -> None:
        if not isinstance(obj, DatasetRef):
            raise DatasetError(
                f"Asset '{_asset_name(context)}' returned {type(obj).__name__}; the datastore IO "
                "manager stores DatasetRef values produced by aml-assets steps."
            )
        definition = context.definition_metadata or {}
        if definition.get(REGISTERED_KEY):
            registry = DatasetRegistry(self.datastore)
            version, created = registry.register(
                obj,
                description=definition.get("aml/description"),
                tags=json.loads(definition.get("aml/tags") or "{}"),
            )
            obj = obj.model_copy(update={"version": version})
            if created:
                context.log.info(f"Registered dataset '{obj.name}' version {version}")
            else:
                context.log.info(
                    f"Dataset '{obj.name}' content is unchanged; reusing registered version {version}"
                )
            context.add_output_metadata(
                {
                    "dataset_version": MetadataValue.int(version),
                    "dataset_version_created": MetadataValue.bool(created),
                }
            )
        payload = obj.model_dump_json().encode()
        asset = _asset_name(context)
        self.datastore.write_bytes(self._ref_path(asset, context.run_id), payload)
        self.datastore.write_bytes(f"_refs/{asset}/latest.json", payload)

    def load_ref(self, asset: str, run_id: str | None) -> DatasetRef:
        """The reference an asset's materialization in ``run_id`` stored (else its latest)."""
        for rel in ([self._ref_path(asset, run_id)] if run_id else []) + [f"_refs/{asset}/latest.json"]:
            if self.datastore.exists(rel):
                return DatasetRef.model_validate_json(self.datastore.read_bytes(rel))
        raise DatasetError(
            f"Dataset '{asset}' has never been materialized on datastore '{self.datastore.name}'. "
            f"Materialize '{asset}' (or run the pipeline) first."
        )

    def load_input(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        try:
            run_id = upstream.run_id if upstream is not None else None
        except DagsterInvariantViolationError:  # upstream not materialized in a known run
            run_id = None
        ref = self.load_ref(_asset_name(context), run_id)
        wanted = getattr(context.dagster_type, "typing_type", None)
        if getattr(wanted, "__name__", "") == "DataFrame" and ref.is_tabular:
            local = self.datastore.local_path(ref.path)
            if local is None:
                raise DatasetError(
                    f"Dataset '{ref.name}' is on a remote datastore; load it through DatasetRef "
                    "or the dataset registry instead of a DataFrame input."
                )
            return read_pandas(local, ref.format, ref.separator, ref.name)
        return ref
