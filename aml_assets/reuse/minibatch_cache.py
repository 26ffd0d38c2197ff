"""Per-mini-batch reuse for ParallelRunStep: the key of one mini-batch's result, and the
content-addressed store of results on the datastore.

**How a mini-batch's key is made** (``minibatch_key``): the BLAKE3 digest of, canonically
encoded,

- ``basis`` (``key_basis``), taken from the step's own fingerprint components: the entry
  script's code (its import closure and ``hash_paths``, each file's digest), the environment
  (interpreter, locked packages, env vars), the symbolic arguments and the pipeline parameters'
  values of this run, the content hashes of the side inputs (everything else ``init()`` and
  ``run()`` may read), the declarations of every input (how it is read), the step's
  ``version`` and the entry script's ``environment_variables``;
- the mini-batch's input declaration (format, separator, header, encoding, column types) and
  its kind;
- the mini-batch's content identity (``data.minibatches``): the header plus the exact bytes of
  its records, the Parquet file's bytes plus the row range, or each file's relative path plus
  its bytes.

**Why it is exact**: ``run(mini_batch)`` receives a value built only from the mini-batch's
content and its input's declaration, in a process whose code, environment, arguments, variables
and side data are all in ``basis``; so two equal keys mean ``run()`` was given the same thing by
the same program. Left out, deliberately, and why they cannot change a successful result: the
step name and the mini-batch's position (run() never sees them), the folder the data is
delivered in (temporary; the step fingerprint never hashes it either), the number of processes
(speed only), and the retry/timeout/threshold settings (they decide whether a result exists,
not what it is: only successful results are stored; they are in the step fingerprint).

Results are stored under ``_minibatches/<key[:2]>/`` (``layout.minibatch_dir``): a folder
``<key>-<attempt>/`` with the rows ``run()`` returned (as text) and the files it wrote to its
output folder, published whole (``publish_dir``), then the record ``<key>.json`` naming that
folder with the counts and every file's digest, created only once the folder is complete (the
commit: a reader trusts a result only through its record, and checks the digests on reading).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml_assets.data import layout
from aml_assets.data.content import canonical_digest, hash_bytes
from aml_assets.data.datastore import Datastore, default_work_dir, make_writable
from aml_assets.data.minibatches import MiniBatch
from aml_assets.errors import DatastoreError

KEY_VERSION = 1
ROWS_FILE = "rows.txt"
FILES_DIR = "files"


def key_basis(
    components: Mapping[str, Any], side_inputs: list[str], kind_settings: Mapping[str, Any]
) -> dict[str, Any]:
    """What every mini-batch key of one step execution shares, from its fingerprint components
    (``StepFingerprint.components()``); ``side_inputs``: the datasets not cut into mini-batches."""
    settings = components.get("settings", {})
    inputs = components.get("inputs", {})
    return {
        "code": components.get("code", {}),
        "environment": components.get("environment", {}),
        "arguments": components.get("arguments", []),
        "parameters": components.get("parameters", {}),
        "side_inputs": {name: inputs.get(name) for name in sorted(side_inputs)},
        "declarations": settings.get("inputs", {}),
        "version": settings.get("version"),
        "environment_variables": dict(kind_settings.get("environment_variables", {})),
    }


def minibatch_key(basis: Mapping[str, Any], declaration: Mapping[str, Any], batch: MiniBatch) -> str:
    """The key of one mini-batch's result (see the module docstring for why it is exact)."""
    return canonical_digest(
        {"basis": basis, "input": declaration, "kind": batch.kind, "content": batch.content},
        f"aml-minibatch/v{KEY_VERSION}",
    )


@dataclass
class CachedResult:
    """A stored mini-batch result: its rows (text, as appended) and the files run() wrote."""

    key: str
    items: int
    returned: int
    rows: bytes
    files: dict[str, str] = field(default_factory=dict)
    #: The datastore folder holding its rows and files.
    folder: str = ""


def result_record(items: int, returned: int, rows: bytes, files_dir: Path) -> dict[str, Any]:
    """The record stored beside a result: counts and the digests every read checks."""
    files = {}
    if files_dir.is_dir():
        for p in sorted(files_dir.rglob("*")):
            if p.is_file():
                files[p.relative_to(files_dir).as_posix()] = hash_bytes(p.read_bytes())
    return {"items": items, "returned": returned, "rows": hash_bytes(rows), "files": files}


class MiniBatchCache:
    """Mini-batch results on a datastore, addressed by their key."""

    def __init__(self, store: Datastore, log: Any = None):
        self.store, self.log = store, log

    def lookup(self, key: str) -> CachedResult | None:
        """The stored result of ``key``, or None (absent, or failing its check: recomputed)."""
        base = layout.minibatch_dir(key)
        record_path = f"{base}.json"
        if not self.store.exists(record_path):
            return None
        try:
            record = json.loads(self.store.read_bytes(record_path))
            folder = f"{base.rsplit('/', 1)[0]}/{record['folder']}"
            rows = self.store.read_bytes(f"{folder}/{ROWS_FILE}")
        except (DatastoreError, ValueError, KeyError) as exc:
            self._warn(f"mini-batch result {key[:12]} cannot be read ({exc}); it is recomputed")
            return None
        if hash_bytes(rows) != record.get("rows"):
            self._warn(f"mini-batch result {key[:12]} does not match its record; it is recomputed")
            return None
        return CachedResult(
            key, int(record["items"]), int(record["returned"]), rows, dict(record.get("files", {})), folder
        )

    def copy_files(self, result: CachedResult, target: Path) -> None:
        """Copy the files a stored result holds into ``target``, checking each one's digest."""
        if not result.files:
            return
        base = f"{result.folder}/{FILES_DIR}"
        local = self.store.local_path(base)
        tmp = None
        if local is None:
            tmp = Path(tempfile.mkdtemp(prefix="aml-minibatch-", dir=default_work_dir()))
            local = self.store.download(base, tmp)
        try:
            for rel, digest in result.files.items():
                data = (Path(local) / rel).read_bytes()
                if hash_bytes(data) != digest:
                    raise DatastoreError(
                        f"Mini-batch result {result.key[:12]}: file '{rel}' does not match its "
                        f"record (changed on the datastore). Delete {result.folder} and "
                        f"{layout.minibatch_dir(result.key)}.json, then run again."
                    )
                dest = target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def store_result(self, key: str, local_dir: Path, record: dict[str, Any]) -> bool:
        """Publish a finished result folder (rows, files) under a fresh name, then its record;
        False when another run stored the same key first (its result is the same, by
        construction)."""
        base = layout.minibatch_dir(key)
        if self.store.exists(f"{base}.json"):
            return False
        name = f"{key}-{uuid.uuid4().hex[:8]}"
        staging = Path(tempfile.mkdtemp(prefix="aml-minibatch-", dir=default_work_dir())) / name
        shutil.copytree(local_dir, staging)
        try:
            self.store.publish_dir(staging, f"{base.rsplit('/', 1)[0]}/{name}")
        finally:
            make_writable(staging.parent)
            shutil.rmtree(staging.parent, ignore_errors=True)
        # The commit: only now can a reader find the result (a folder without one is unused).
        return self.store.create_exclusive(
            f"{base}.json", json.dumps({**record, "folder": name}, sort_keys=True).encode()
        )

    def _warn(self, message: str) -> None:
        if self.log is not None:
            self.log.warning(message)
