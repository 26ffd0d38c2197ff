"""Is published content still what was published? One check, for step outputs and registered
versions alike.

Nothing is reused or registered on the strength of a file merely existing: every file is checked
against the record made when it was published (like Bazel serving cache entries by verified
digest). On a local store the stat cache makes this a ``stat`` per file when nothing changed; on
blob storage the listing's size and stored MD5 (or ETag) are compared, without downloading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aml_assets.data.content import StatCache, hash_file, normalize_data_path, walk_files
from aml_assets.data.datastore import Datastore
from aml_assets.errors import DatastoreError


def check_content(
    store: Datastore,
    path: str,
    files: Sequence[Mapping[str, Any]],
    cache: StatCache | None = None,
) -> tuple[bool, list[str]]:
    """(present, problems) of published content against its integrity records.

    ``files`` are the ``DatasetRef.files`` records ({file, size, raw, stored}). Without them (a
    record written before integrity records existed) only presence is checked. Locally every file
    is re-hashed unless the stat cache vouches for it; on blob storage the listing's size and
    stored MD5/ETag are compared, without downloading anything.
    """
    records = [dict(f) for f in files]
    if not records:
        return store.exists(path), []
    expected = {str(f["file"]) for f in records}
    problems = []
    local = store.local_path(path)
    if local is not None:
        if not local.exists():
            return False, []
        for f in records:
            target = local / f["file"] if local.is_dir() else local
            where = f"{path}/{f['file']}"
            if not target.is_file():
                problems.append(f"{where} is missing")
                continue
            size = target.stat().st_size
            if size != int(f["size"]):
                problems.append(f"{where} has {size} bytes, {f['size']} were published")
            elif f.get("raw") and hash_file(target, cache) != f["raw"]:
                problems.append(f"{where} changed since it was published (its BLAKE3 differs)")
        if local.is_dir():
            problems += [
                f"{path}/{rel} was added after publishing"
                for rel, _ in walk_files(local)
                if rel not in expected and normalize_data_path(rel) is not None
            ]
        return True, problems
    try:
        listed = {e.path: e for e in store.manifest(path)}
    except DatastoreError:
        return False, []
    for f in records:
        where = f"{store.uri(path)}/{f['file']}"
        entry = listed.get(f["file"])
        if entry is None:
            problems.append(f"{where} is missing")
        elif entry.size != int(f["size"]):
            problems.append(f"{where} has {entry.size} bytes, {f['size']} were published")
        elif f.get("stored") and entry.digest != f["stored"]:
            problems.append(f"{where} changed since it was published ({entry.digest} != {f['stored']})")
    problems += [
        f"{store.uri(path)}/{name} was added after publishing"
        for name in listed
        if name not in expected and normalize_data_path(name) is not None
    ]
    return True, problems
