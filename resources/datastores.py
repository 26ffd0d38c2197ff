"""Datastores of the reference project: the embedded local default."""

from aml_assets import LocalDatastore


def datastores() -> dict:
    """``workspace``: a local folder ($AML_DATASTORE_ROOT, else the platform's data folder)."""
    return {"workspace": LocalDatastore(name="workspace")}
