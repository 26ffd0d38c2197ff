"""``azureml.data`` (v1): ``OutputFileDatasetConfig`` (ours, with v1's arguments); v1's dataset
classes are made by ``aml_assets.compat.core.Dataset``."""

from __future__ import annotations

from typing import Any

from aml_assets.compat._support import BuildsOurs, missing_names, no_counterpart, resource_name
from aml_assets.data import references

__all__ = ["HDFSOutputDatasetConfig", "OutputFileDatasetConfig"]


class OutputFileDatasetConfig(metaclass=BuildsOurs):
    """v1's ``OutputFileDatasetConfig(name=None, destination=None, source=None,
    partition_format=None)``; ``destination`` is ``(datastore, 'path')`` with the datastore a
    compat ``Datastore`` or its resource key. Builds
    ``aml_assets.data.references.OutputFileDatasetConfig``."""

    _ours = references.OutputFileDatasetConfig

    def __new__(
        cls,
        name: str | None = None,
        destination: Any = None,
        source: str | None = None,
        partition_format: str | None = None,
        **ours: Any,
    ) -> references.OutputFileDatasetConfig:
        if source:
            no_counterpart(
                f"OutputFileDatasetConfig(source={source!r}) (a fixed folder on the compute)",
                "write the output into the folder the step receives as its argument.",
            )
        if partition_format:
            no_counterpart(
                "OutputFileDatasetConfig(partition_format=...)",
                "write the partition folders yourself and read them with pyarrow.dataset / Spark.",
            )
        if destination is not None:
            if not (isinstance(destination, tuple) and len(destination) == 2):
                raise TypeError(f"destination {destination!r} is not (datastore, 'path/on/it')")
            destination = (resource_name(destination[0], "destination datastore"), str(destination[1]))
        return references.OutputFileDatasetConfig(name, destination, **ours)


class HDFSOutputDatasetConfig(metaclass=BuildsOurs):
    """v1's ``HDFSOutputDatasetConfig(name=None, destination=None)``: a Synapse Spark step's
    output. Spark writes it into the folder the step receives (a local path Spark writes like
    HDFS); builds ``aml_assets.data.references.OutputFileDatasetConfig``."""

    _ours = references.OutputFileDatasetConfig

    def __new__(cls, name: str | None = None, destination: Any = None) -> references.OutputFileDatasetConfig:
        return OutputFileDatasetConfig(name=name, destination=destination)


__getattr__ = missing_names(
    "aml_assets.compat.data",
    "azureml.data",
    {
        "TabularDataset": "aml_assets.compat.core.Dataset.Tabular.from_delimited_files(...).",
        "FileDataset": "aml_assets.compat.core.Dataset.File.from_files(...).",
        "OutputTabularDatasetConfig": "OutputFileDatasetConfig(...).read_delimited_files() or "
        ".read_parquet_files().",
    },
)
