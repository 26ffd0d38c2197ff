"""Datastores of the reference project: the embedded local default, or Azure Blob by config."""

from aml_assets.data.workspace import workspace_datastore


def datastores() -> dict:
    """The ``workspace`` datastore, chosen when the definitions load.

    ``AML_DATASTORE=azure`` selects Azure Blob Storage (container ``$AML_AZURE_CONTAINER``,
    credentials from ``$AZURE_STORAGE_CONNECTION_STRING``); otherwise a local folder
    (``$AML_DATASTORE_ROOT``, else the platform's data folder).
    """
    return {"workspace": workspace_datastore("workspace")}
