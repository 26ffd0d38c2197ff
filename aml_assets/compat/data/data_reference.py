"""``azureml.data.data_reference`` (v1): ``DataReference``, building ours
(``aml_assets.data.references.DataReference``)."""

from __future__ import annotations

from typing import Any

from aml_assets.compat._support import BuildsOurs, no_counterpart, resource_name
from aml_assets.data import references

__all__ = ["DataReference"]


class DataReference(metaclass=BuildsOurs):
    """v1's ``DataReference(datastore, data_reference_name=None, path_on_datastore=None,
    mode='mount', path_on_compute=None, overwrite=False)``: a file or folder on the datastore
    whose resource key ``datastore`` names (a compat ``Datastore``, or the key itself)."""

    _ours = references.DataReference

    def __new__(
        cls,
        datastore: Any,
        data_reference_name: str | None = None,
        path_on_datastore: str | None = None,
        mode: str = "mount",
        path_on_compute: str | None = None,
        overwrite: bool = False,
        **ours: Any,
    ) -> references.DataReference:
        if path_on_compute:
            no_counterpart(
                f"DataReference(path_on_compute={path_on_compute!r})",
                "read the input's path from the script's argument (or Run.input_datasets): a "
                "step receives its inputs in a private folder.",
            )
        return references.DataReference(
            resource_name(datastore, "datastore") or "workspace",
            data_reference_name,
            path_on_datastore,
            mode,
            **ours,
        )
