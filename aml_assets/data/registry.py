"""Registered datasets: named, immutable versions 1, 2, 3... with lineage; list, load, delete.

A version is a small record created exclusively at ``datasets/<name>/versions/<N>.json`` (paths
from ``aml_assets.data.layout``); it points at published content that is never modified. Rules:

- **Numbers are never reused.** A forced delete leaves a tombstone
  (``datasets/<name>/tombstones/<N>.json``); the next version is numbered after the highest
  version *or* tombstone, so "version 3" always means the same content.
- **Unchanged content mints no version**, but only once the latest version's stored data has
  been re-checked against the integrity record it was registered with: data corrupted since is
  reported and the freshly published content becomes a new version. No version is ever made to
  point at data known to be corrupt.
- **Content equal to an older version** (not the latest) becomes a new version, so "latest" is
  always what the pipeline produced last; the record says ``same_content_as: K``.
- **A malformed record** (bad JSON, no ``ref``) is reported by name and skipped, never a crash.
- Registration is safe under concurrent writers: records are created exclusively, and a writer
  that loses the race re-reads and retries.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aml_assets.data import layout
from aml_assets.data.content import StatCache
from aml_assets.data.datasets import DatasetRef, read_pandas
from aml_assets.data.datastore import Datastore, open_stat_cache
from aml_assets.data.integrity import check_content
from aml_assets.data.workspace import workspace_datastore
from aml_assets.errors import DatasetError

_log = logging.getLogger(__name__)

_RETRIES = 100


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


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

    @property
    def same_content_as(self) -> int | None:
        """The older version whose content this one repeats (registered again to be latest)."""
        return self.record.get("same_content_as")

    def local_path(self) -> Path:
        """A local path to the content. On a remote store it is downloaded to a new temporary
        folder that the caller owns (and removes when done)."""
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
        local = self.datastore.local_path(ref.path)
        if local is not None:
            return read_pandas(local, ref.format, ref.separator, self.name, ref.reader)
        # A remote store: the frame is read whole, so its download goes as soon as it is read
        # (one temporary folder per call used to stay behind in /tmp).
        with tempfile.TemporaryDirectory(prefix=f"aml-{self.name}-") as tmp:
            path = self.datastore.download(ref.path, Path(tmp))
            return read_pandas(path, ref.format, ref.separator, self.name, ref.reader)

    def to_spark_dataframe(self, spark=None):
        """Load as a Spark DataFrame on the active (or given) SparkSession."""
        from pyspark.sql import SparkSession

        ref = self.ref
        spark = spark or SparkSession.builder.getOrCreate()
        path = str(self.local_path())
        if ref.format == "parquet":
            return spark.read.parquet(path)
        return spark.read.option("header", "true").option("inferSchema", "true").option("sep", ref.separator).csv(path)


@dataclass(frozen=True)
class Registration:
    """What ``DatasetRegistry.register_ref`` did.

    ``created`` False: the content equals the latest version's, whose stored data was re-checked
    and is sound. ``same_content_as``: a new version repeating an older one's content.
    ``replaced_corrupt``: the latest version had this content but its stored data no longer
    matches its record (``problems`` says how); the new version points at the fresh copy.
    """

    version: int
    created: bool
    same_content_as: int | None = None
    replaced_corrupt: int | None = None
    problems: tuple[str, ...] = ()

    def describe(self, name: str) -> str:
        """A log line for this registration."""
        if not self.created:
            return f"Dataset '{name}' content is unchanged; reusing registered version {self.version}"
        if self.replaced_corrupt is not None:
            return (
                f"Dataset '{name}' version {self.replaced_corrupt} has this content, but its stored "
                f"data is corrupt ({'; '.join(self.problems)}); registered the freshly published "
                f"content as version {self.version} instead of reusing it. Run 'aml-assets verify' "
                "to check the rest of the datastore."
            )
        if self.same_content_as is not None:
            return (
                f"Registered dataset '{name}' version {self.version}: same content as version "
                f"{self.same_content_as}, registered again so that the latest version is what the "
                "pipeline produced last"
            )
        return f"Registered dataset '{name}' version {self.version}"


@dataclass(frozen=True)
class MalformedRecord:
    """A registry record that cannot be read, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} is malformed ({self.reason})"


@dataclass
class _Listing:
    """The record numbers of one dataset: version files and tombstones."""

    versions: list[int] = field(default_factory=list)
    tombstones: list[int] = field(default_factory=list)

    @property
    def live(self) -> list[int]:
        """Version records that were not deleted, ascending (readable or not)."""
        dead = set(self.tombstones)
        return [v for v in self.versions if v not in dead]

    @property
    def highest(self) -> int:
        """The highest number ever given out (a version or a tombstone)."""
        return max([0, *self.versions, *self.tombstones])


class DatasetRegistry:
    """The registered datasets of one datastore."""

    def __init__(self, datastore: Datastore | None = None):
        # Default: the workspace datastore the environment selects, as the pipeline and the CLI
        # see it, so `DatasetRegistry().get(...)` works the same in a notebook and a step script.
        self.datastore = datastore or workspace_datastore()
        #: Malformed records met so far (each once), for callers that report them (the CLI).
        self.malformed: list[MalformedRecord] = []

    # --- reading --------------------------------------------------------------------------
    def _listing(self, name: str) -> _Listing:
        def numbers(rel: str) -> list[int]:
            return sorted(
                n for n in (layout.version_of_record(f) for f in self.datastore.list_dir(rel)) if n is not None
            )

        return _Listing(numbers(layout.versions_dir(name)), numbers(layout.tombstones_dir(name)))

    def _note_malformed(self, rel: str, reason: str) -> None:
        record = MalformedRecord(rel, reason)
        if record not in self.malformed:
            self.malformed.append(record)
            _log.warning(
                "Skipping registry record %s on datastore '%s': %s. Delete the version with "
                "'aml-assets datasets delete <name> <version> --force' if it cannot be repaired.",
                rel, self.datastore.name, reason,
            )

    def _parse(self, name: str, version: int, raw: bytes) -> RegisteredDataset:
        """A version record; ValueError (with the reason) if it is malformed."""
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise ValueError(f"a JSON object was expected, found {type(record).__name__}")
        if not isinstance(record.get("ref"), dict):
            raise ValueError("it has no 'ref' (the content it registers)")
        try:
            DatasetRef.model_validate(record["ref"])
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ValueError(f"its 'ref' is invalid ({where}: {first.get('msg', exc)})") from None
        return RegisteredDataset(name, version, record, self.datastore)

    def _read(self, name: str, version: int) -> RegisteredDataset | None:
        """A version, or None (with a warning naming the file) if its record is malformed."""
        rel = layout.version_record(name, version)
        try:
            return self._parse(name, version, self.datastore.read_bytes(rel))
        except ValueError as exc:
            self._note_malformed(rel, str(exc))
            return None

    def _newest_readable(self, name: str, numbers: Iterable[int]) -> RegisteredDataset | None:
        for version in sorted(numbers, reverse=True):
            found = self._read(name, version)
            if found is not None:
                return found
        return None

    def list_datasets(self) -> list[str]:
        """Names of every registered dataset with at least one readable version."""
        return [
            n
            for n in self.datastore.list_dir(layout.DATASETS)
            if self._newest_readable(n, self._listing(n).live) is not None
        ]

    def registered(self, name: str) -> list[RegisteredDataset]:
        """Every readable, not deleted version of a dataset, oldest first (malformed: skipped)."""
        return [found for v in self._listing(name).live if (found := self._read(name, v)) is not None]

    def versions(self, name: str) -> list[int]:
        """Readable, not deleted version numbers of a dataset, ascending."""
        return [found.version for found in self.registered(name)]

    def tombstone(self, name: str, version: int) -> dict[str, Any] | None:
        """The record of a deleted version, or None if it was not deleted."""
        rel = layout.tombstone_record(name, version)
        if not self.datastore.exists(rel):
            return None
        try:
            record = json.loads(self.datastore.read_bytes(rel))
        except ValueError:
            record = None
        return record if isinstance(record, dict) else {"version": version}

    def get(self, name: str, version: int | None = None) -> RegisteredDataset:
        """A version of a dataset (by default the latest readable one)."""
        listing = self._listing(name)
        live = listing.live
        if version is None:
            found = self._newest_readable(name, live)
            if found is not None:
                if found.version != live[-1]:
                    _log.warning(
                        "Dataset '%s': the newest version record (%d) is unreadable; using version %d",
                        name, live[-1], found.version,
                    )
                return found
            if live:
                raise DatasetError(
                    f"Every version record of dataset '{name}' on datastore '{self.datastore.name}' "
                    f"is malformed: {'; '.join(str(m) for m in self.malformed if f'/{name}/' in m.path)}."
                    " Register it again by rerunning its pipeline."
                )
            deleted = (
                f" Its versions {', '.join(map(str, listing.tombstones))} were deleted."
                if listing.tombstones
                else ""
            )
            known = ", ".join(self.list_datasets()) or "none yet"
            raise DatasetError(
                f"No registered dataset '{name}' on datastore '{self.datastore.name}' "
                f"(registered: {known}).{deleted} Run the pipeline that registers it first."
            )
        if version in listing.tombstones:
            stone = self.tombstone(name, version) or {}
            remaining = ", ".join(map(str, live)) or "none"
            raise DatasetError(
                f"Dataset '{name}' version {version} was deleted on {_when(stone.get('deleted'))}. "
                f"Version numbers are never reused, so {version} stays retired; remaining "
                f"versions: {remaining}."
            )
        if version not in live:
            raise DatasetError(
                f"Dataset '{name}' has no version {version}; it has versions "
                f"{', '.join(map(str, live)) or 'none'}."
            )
        found = self._read(name, version)
        if found is None:
            rel = layout.version_record(name, version)
            reason = next((m.reason for m in self.malformed if m.path == rel), "unreadable")
            raise DatasetError(
                f"Dataset '{name}' version {version}: its record {self.datastore.uri(rel)} is "
                f"malformed ({reason}). Use another version, or delete this one with "
                f"'aml-assets datasets delete {name} {version} --force'."
            )
        return found

    # --- registering ----------------------------------------------------------------------
    def register(
        self,
        ref: DatasetRef,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> tuple[int, bool]:
        """Register a ref's content; returns (version, created). See ``register_ref``."""
        done = self.register_ref(ref, description, tags)
        return done.version, done.created

    def register_ref(
        self,
        ref: DatasetRef,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Registration:
        """Register a ref's content as the next version unless it equals the latest version's.

        The latest version is reused only when its stored data still matches its record; when
        it does not, the corruption is logged and the fresh content gets a new version. Content
        equal to an older version gets a new version recording ``same_content_as``.
        """
        cache: StatCache | None = None
        try:
            for _ in range(_RETRIES):
                listing = self._listing(ref.name)
                latest = self._newest_readable(ref.name, listing.live)
                replaced, problems = None, ()
                if latest is not None and latest.ref.content_hash == ref.content_hash:
                    if cache is None and self.datastore.local_path(latest.ref.path) is not None:
                        cache = open_stat_cache()
                    present, found = check_content(
                        self.datastore, latest.ref.path, latest.ref.files, cache
                    )
                    if present and not found:
                        return Registration(latest.version, False)
                    problems = tuple(found) or (
                        f"its data at {self.datastore.uri(latest.ref.path)} is missing",
                    )
                    if latest.ref.path == ref.path:
                        raise DatasetError(
                            f"Dataset '{ref.name}': the data to register "
                            f"({self.datastore.uri(ref.path)}) is corrupt: {'; '.join(problems)}. "
                            "Nothing was registered. Run 'aml-assets verify', then rerun the "
                            "producing step with regenerate_outputs=True."
                        )
                    replaced = latest.version
                    _log.error(
                        "Dataset '%s' version %d is corrupt: %s. It is not reused; the freshly "
                        "published content becomes a new version.",
                        ref.name, latest.version, "; ".join(problems),
                    )
                same = None
                if replaced is None and latest is not None:
                    same = self._same_content(ref.name, listing.live, latest.version, ref.content_hash)
                version = listing.highest + 1
                record = self._record(ref, version, description, tags, same, replaced)
                rel = layout.version_record(ref.name, version)
                if self.datastore._create_record(rel, json.dumps(record, indent=1).encode()):
                    done = Registration(version, True, same, replaced, problems)
                    _log.info(done.describe(ref.name))
                    return done
        finally:
            if cache is not None:
                cache.close()
        raise DatasetError(f"Could not register dataset '{ref.name}': too many concurrent writers.")

    def _same_content(self, name: str, live: list[int], below: int, content_hash: str) -> int | None:
        """The newest version older than ``below`` with this content, if any."""
        for version in sorted((v for v in live if v < below), reverse=True):
            found = self._read(name, version)
            if found is not None and found.ref.content_hash == content_hash:
                return version
        return None

    @staticmethod
    def _record(
        ref: DatasetRef,
        version: int,
        description: str | None,
        tags: dict[str, str] | None,
        same: int | None,
        replaced: int | None,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "name": ref.name,
            "version": version,
            "description": description,
            "tags": tags or {},
            "created": time.time(),
            "ref": ref.model_dump(mode="json") | {"version": version},
            "lineage": {**(ref.producer or {}), "inputs": ref.input_versions},
        }
        record["lineage"].pop("stats", None)
        if same is not None:
            record["same_content_as"] = same
        if replaced is not None:
            record["replaces_corrupt_version"] = replaced
        return record

    def columns_before(self, name: str, content_hash: str) -> list[list[str]] | None:
        """Column (name, type) pairs of the newest version with other content than ``content_hash``."""
        for version in reversed(self._listing(name).live):
            found = self._read(name, version)
            if found is None:
                continue
            ref = found.record["ref"]
            if ref["content_hash"] != content_hash:
                return ((ref.get("producer") or {}).get("stats") or {}).get("columns")
        return None

    # --- deleting -------------------------------------------------------------------------
    def delete_version(self, name: str, version: int, *, force: bool = False) -> None:
        """Delete a version, leaving a tombstone so its number is never given out again.

        Refused unless ``force=True``: versions are meant to be kept. A malformed record can be
        deleted this way too. The published data itself is left alone (a step's committed output
        may still be reused); ``aml-assets gc`` never removes committed outputs.
        """
        if not force:
            raise DatasetError(
                f"Refusing to delete dataset '{name}' version {version}: registered versions are "
                "immutable. Pass force=True (CLI: --force) if you really mean it."
            )
        listing = self._listing(name)
        if version in listing.tombstones:
            self.get(name, version)  # raises: says when it was deleted
        if version not in listing.versions:
            self.get(name, version)  # raises: no such version
        rel = layout.version_record(name, version)
        found = self._read(name, version)
        stone: dict[str, Any] = {"name": name, "version": version, "deleted": time.time()}
        if found is not None:
            stone |= {
                "content_hash": found.ref.content_hash,
                "path": found.ref.path,
                "created": found.record.get("created"),
            }
        else:
            stone["malformed"] = True
        # Tombstone first: a crash in between leaves a deleted version, never a reusable number.
        self.datastore._create_record(
            layout.tombstone_record(name, version), json.dumps(stone, indent=1).encode()
        )
        self.datastore._delete_record(rel)
        _log.info("Deleted dataset '%s' version %d (its number stays retired)", name, version)
