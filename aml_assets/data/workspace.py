"""Which datastore is the workspace's: chosen by environment, for projects and the CLI alike."""

from __future__ import annotations

import os

from dagster import EnvVar

from aml_assets.data.datastore import Datastore, LocalDatastore

#: ``azure`` selects Azure Blob Storage; anything else (or unset) the local folder.
SELECT_ENV = "AML_DATASTORE"
CONTAINER_ENV = "AML_AZURE_CONTAINER"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
PREFIX_ENV = "AML_AZURE_PREFIX"


def workspace_datastore(name: str = "workspace") -> Datastore:
    """The workspace datastore selected by ``$AML_DATASTORE``.

    - ``azure``: Azure Blob Storage, container ``$AML_AZURE_CONTAINER`` (folder
      ``$AML_AZURE_PREFIX`` in it, if set), credentials from
      ``$AZURE_STORAGE_CONNECTION_STRING`` (both through ``EnvVar``, read at run time, so the
      connection string is never stored in Dagster's run configuration);
    - otherwise: a local folder (``$AML_DATASTORE_ROOT``, else the platform's data folder).
    """
    if os.environ.get(SELECT_ENV, "").strip().lower() == "azure":
        from aml_assets.data.azure import AzureBlobDatastore

        return AzureBlobDatastore(
            name=name,
            container=EnvVar(CONTAINER_ENV),
            connection_string=EnvVar(CONNECTION_STRING_ENV),
            prefix=os.environ.get(PREFIX_ENV, ""),
        )
    return LocalDatastore(name=name)
