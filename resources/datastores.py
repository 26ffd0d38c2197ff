"""Datastores of the reference project: the embedded local default, or Azure Blob by config."""

import os

from dagster import EnvVar

from aml_assets import LocalDatastore
from aml_assets.azure_datastore import AzureBlobDatastore


def datastores() -> dict:
    """The ``workspace`` datastore, chosen when the definitions load.

    - ``AML_DATASTORE=azure``: Azure Blob Storage, container ``$AML_AZURE_CONTAINER``, credentials
      from ``$AZURE_STORAGE_CONNECTION_STRING`` (read through ``EnvVar`` at run time, so the
      connection string is never stored in Dagster's run configuration);
    - otherwise (default): a local folder ($AML_DATASTORE_ROOT, else the platform's data folder).
    """
    if os.environ.get("AML_DATASTORE", "").strip().lower() == "azure":
        return {
            "workspace": AzureBlobDatastore(
                name="workspace",
                container=EnvVar("AML_AZURE_CONTAINER"),
                connection_string=EnvVar("AZURE_STORAGE_CONNECTION_STRING"),
            )
        }
    return {"workspace": LocalDatastore(name="workspace")}
