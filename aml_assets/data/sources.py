"""Source datasets: data already on a datastore, checked, hashed and described before any step.

Reading a source here (not inside the first step) means a missing or malformed file fails the
run before any step starts, with an error that names the dataset and the path.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from dagster import MetadataValue, TableColumn, TableSchema

from aml_assets.data import layout
from aml_assets.data.content import canonical_digest, manifest_digest
from aml_assets.data.datasets import DatasetRef, SourceDataset
from aml_assets.data.datastore import Datastore, open_stat_cache
from aml_assets.data.stats import tabular_stats
from aml_assets.errors import DatasetError, DatastoreError


def _ensure_present(ds: SourceDataset, store: Datastore, log: Any, missing_hint: str | None = None) -> None:
    try:
        present = store.exists(ds.path)
    except DatastoreError:
        raise
    except Exception as exc:  # the store's own client error: wrap it with what we were doing
        raise DatastoreError(
            f"Dataset '{ds.name}': datastore '{store.name}' ({store.uri()}) is unreachable: {exc}. "
            "Check the datastore's account, endpoint and credentials."
        ) from exc
    if present:
        return
    if ds.seed is None:
        raise DatasetError(
            f"Dataset '{ds.name}': no data at '{ds.path}' on datastore '{store.name}' "
            f"({store.uri(ds.path)}). "
            + (missing_hint or "Upload it (Datastore.upload_files) or declare the dataset with seed= a local copy.")
        )
    target_dir = ds.path.rsplit("/", 1)[0] if "/" in ds.path else ""
    if Path(ds.path).name != ds.seed.name:
        store.write_bytes(ds.path, ds.seed.read_bytes())
    elif target_dir:
        store.upload_files([ds.seed], target_dir)
    else:
        store.write_bytes(ds.path, ds.seed.read_bytes())
    log.info(f"Seeded dataset '{ds.name}' from {ds.seed} to {store.uri(ds.path)}")


def _stats(ds: SourceDataset, store: Datastore, content_hash: str, log: Any) -> dict[str, Any] | None:
    """Tabular stats, cached by content hash: unchanged data is parsed once, ever."""
    if ds.format not in ("csv", "parquet"):
        return None
    # Keyed by the content and by how it is read: another separator or header gives other stats.
    cache_rel = layout.stats_record(canonical_digest([content_hash, ds.separator, ds.reader()]))
    if store.exists(cache_rel):
        try:
            cached = json.loads(store.read_bytes(cache_rel))
            if isinstance(cached, dict) and "row_count" in cached and "columns" in cached:
                return cached
        except ValueError:
            pass
        # A cache entry is disposable: a corrupt one (a full disk, a crash) is rebuilt, never fatal.
        log.warning(f"Discarding the unreadable statistics cache {store.uri(cache_rel)}; recomputing it")
    local = store.local_path(ds.path)
    if local is not None:
        stats = tabular_stats(local, ds.format, ds.separator, ds.name, ds.reader())
    else:
        with tempfile.TemporaryDirectory(prefix=f"aml-{ds.name}-") as tmp:
            copy = store.download(ds.path, Path(tmp))
            stats = tabular_stats(copy, ds.format, ds.separator, ds.name, ds.reader())
    if stats["row_count"] == 0:
        raise DatasetError(
            f"Dataset '{ds.name}': '{ds.path}' has a header but no rows. Check the upload."
        )
    try:
        store.write_bytes(cache_rel, json.dumps(stats).encode())
    except (DatastoreError, OSError) as exc:
        # The cache is disposable: failing to keep it (a full disk) must not fail the run.
        log.warning(f"Could not cache the statistics of dataset '{ds.name}' ({exc}); continuing")
    return stats


def materialize_source(
    ds: SourceDataset, datastore_key: str, store: Datastore, log: Any, missing_hint: str | None = None
) -> tuple[DatasetRef, dict[str, Any]]:
    """Check a source dataset, hash its content and describe it; returns (ref, metadata).

    ``missing_hint`` replaces the advice given when nothing is at the path.
    """
    _ensure_present(ds, store, log, missing_hint)
    cache = open_stat_cache()
    try:
        entries = store.manifest(ds.path, cache)
    finally:
        cache.close()
    if not entries:
        raise DatasetError(
            f"Dataset '{ds.name}': '{ds.path}' on datastore '{store.name}' is an empty folder."
        )
    if ds.format == "csv" and all(e.size == 0 for e in entries):
        raise DatasetError(
            f"Dataset '{ds.name}': '{ds.path}' is empty. A delimited file needs at least a header "
            "row; check the upload."
        )
    content_hash = manifest_digest(entries)
    stats = _stats(ds, store, content_hash, log)
    ref = DatasetRef(
        name=ds.name,
        datastore=datastore_key,
        path=ds.path,
        uri=store.uri(ds.path),
        format=ds.format,
        separator=ds.separator,
        content_hash=content_hash,
        reader=ds.reader(),
        file_count=len(entries),
        byte_count=sum(e.size for e in entries),
    )
    metadata: dict[str, Any] = {
        "content_hash": MetadataValue.text(content_hash),
        "uri": MetadataValue.text(ref.uri),
        "file_count": MetadataValue.int(ref.file_count),
        "byte_count": MetadataValue.int(ref.byte_count),
    }
    if stats:
        metadata["dagster/row_count"] = MetadataValue.int(stats["row_count"])
        metadata["dagster/column_schema"] = MetadataValue.table_schema(
            TableSchema(columns=[TableColumn(name=n, type=t) for n, t in stats["columns"]])
        )
        metadata["preview"] = MetadataValue.md(stats["preview"])
    return ref, metadata
