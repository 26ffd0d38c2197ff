"""Registered datasets: named, immutable versions 1, 2, 3... with lineage; list, load, delete.

A version is a small record created exclusively at ``datasets/<name>/versions/<N>.json``; it
points at published content that is never modified. A new version is created only when the
content differs from the latest version's, so rerunning a pipeline does not mint versions.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aml_assets.data.datasets import DatasetRef, read_pandas
from aml_assets.data.datastore import Datastore
from aml_assets.data.workspace import workspace_datastore
from aml_assets.errors import DatasetError

_WIDTH = 6  # zero-padded, so a listing sorts by version


def _versions_dir(name: str) -> str:
    return f"datasets/{name}/versions"


@dataclass
class RegisteredDataset:
    """One version of a registered dataset."""

    name: str
    version: int
    record: dict[str, Any]
    datastore: Datastore

    @property
    def ref(self) -> DatasetRef:
        """The dataset's content reference."""
        return DatasetRef(**self.record["ref"])

    @property
    def uri(self) -> str:
        """Where the content is."""
        return self.ref.uri

    @property
    def lineage(self) -> dict[str, Any]:
        """Run, step, fingerprint and input dataset versions that produced this version."""
        return self.record.get("lineage", {})

    def local_path(self) -> Path:
        """A local path to the content (downloaded to a temporary folder if the store is remote)."""
        ref = self.ref
        local = self.datastore.local_path(ref.path)
        if local is not None:
            return local
        return self.datastore.download(ref.path, Path(tempfile.mkdtemp(prefix=f"aml-{self.name}-")))

    def to_pandas_dataframe(self):
        """Load as a pandas DataFrame (tabular datasets)."""
        ref = self.ref
        if not ref.is_tabular:
            raise DatasetError(
                f"Dataset '{self.name}' v{self.version} holds files, not a table; use local_path()."
            )
        return read_pandas(self.local_path(), ref.format, ref.separator, self.name)

    def to_spark_dataframe(self, spark=None):
        """Load as a Spark DataFrame on the active (or given) SparkSession."""
        from pyspark.sql import SparkSession

        ref = self.ref
        spark = spark or SparkSession.builder.getOrCreate()
        path = str(self.local_path())
        if ref.format == "parquet":
            return spark.read.parquet(path)
        return spark.read.option("header", "true").option("inferSchema", "true").option("sep", ref.separator).csv(path)


class DatasetRegistry:
    """The registered datasets of one datastore."""

    def __init__(self, datastore: Datastore | None = None):
        # Default: the workspace datastore the environment selects, as the pipeline and the CLI
        # see it, so `DatasetRegistry().get(...)` works the same in a notebook and a step script.
        self.datastore = datastore or workspace_datastore()

    def list_datasets(self) -> list[str]:
        """Names of every registered dataset."""
        return [n for n in self.datastore.list_dir("datasets") if self.versions(n)]

    def versions(self, name: str) -> list[int]:
        """Version numbers of a dataset, ascending."""
        return sorted(
            int(n.removesuffix(".json"))
            for n in self.datastore.list_dir(_versions_dir(name))
            if n.endswith(".json") and n.removesuffix(".json").isdigit()
        )

    def get(self, name: str, version: int | None = None) -> RegisteredDataset:
        """A version of a dataset (the latest by default)."""
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.list_datasets()) or "none yet"
            raise DatasetError(
                f"No registered dataset '{name}' on datastore '{self.datastore.name}' "
                f"(registered: {known}). Run the pipeline that registers it first."
            )
        version = versions[-1] if version is None else version
        if version not in versions:
            raise DatasetError(
                f"Dataset '{name}' has no version {version}; it has versions "
                f"{', '.join(map(str, versions))}."
            )
        record = json.loads(self.datastore.read_bytes(f"{_versions_dir(name)}/{version:0{_WIDTH}d}.json"))
        return RegisteredDataset(name, version, record, self.datastore)

    def register(
        self,
        ref: DatasetRef,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> tuple[int, bool]:
        """Register a ref's content as the next version unless it equals the latest version.

        Returns (version, created). Safe under concurrent registration: versions are created
        exclusively, and a lost race re-reads and retries.
        """
        for _ in range(100):
            versions = self.versions(ref.name)
            if versions:
                latest = self.get(ref.name, versions[-1])
                if latest.record["ref"]["content_hash"] == ref.content_hash:
                    return latest.version, False
            version = (versions[-1] if versions else 0) + 1
            record = {
                "name": ref.name,
                "version": version,
                "description": description,
                "tags": tags or {},
                "created": time.time(),
                "ref": ref.model_dump(mode="json") | {"version": version},
                "lineage": {**(ref.producer or {}), "inputs": ref.input_versions},
            }
            record["lineage"].pop("stats", None)
            rel = f"{_versions_dir(ref.name)}/{version:0{_WIDTH}d}.json"
            if self.datastore.create_exclusive(rel, json.dumps(record, indent=1).encode()):
                return version, True
        raise DatasetError(f"Could not register dataset '{ref.name}': too many concurrent writers.")

    def delete_version(self, name: str, version: int, *, force: bool = False) -> None:
        """Delete a version record. Refused unless ``force=True``: versions are meant to be kept."""
        if not force:
            raise DatasetError(
                f"Refusing to delete dataset '{name}' version {version}: registered versions are "
                "immutable. Pass force=True (CLI: --force) if you really mean it."
            )
        self.get(name, version)
        self.datastore.delete(f"{_versions_dir(name)}/{version:0{_WIDTH}d}.json")
