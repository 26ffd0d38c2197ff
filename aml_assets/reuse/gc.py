"""Garbage collection: what a killed or crashed step left behind, never what anything references.

Removed, once older than a grace period (so a step still running is never touched):

- scratch folders under ``_tmp/`` (a step killed with SIGKILL cannot clean up after itself);
- published attempts under ``steps/<step>/<fingerprint>/`` that no commit names (a crash between
  publishing and committing);
- half-written record files (``.<name>.<uuid>.tmp``) a killed writer left beside the ledger,
  the registry and the references;
- per-run dataset references under ``_refs/`` (each asset's ``latest.json`` is kept; re-executing
  a run older than the grace period then fails clearly instead of reading newer data);
- on this machine, the private input copies of killed steps (``aml-<step>-inputs-*`` under the
  cache folder's ``work/``, and legacy ones in the system temp folder).

With ``keep_runs=N`` each step's run records are pruned to the newest N (reported separately).
Committed outputs, registered dataset versions (and tombstones) are never removed. Paths come
from ``aml_assets.data.layout``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml_assets.data import layout
from aml_assets.data.datastore import Datastore, default_work_dir, make_writable
from aml_assets.errors import DatastoreError
from aml_assets.reuse.ledger import StepLedger

_log = logging.getLogger(__name__)

#: Private folders of steps under the work folder: input copies, and scratch for remote stores.
_INPUT_COPY = re.compile(r"^aml-.+-(inputs|scratch)-")
_TMP_RECORD = re.compile(r"^\..+\.[0-9a-f]{32}\.(tmp|staging)$")

#: Kinds of removed items, in the order the summary names them.
SCRATCH = "scratch folder"
ATTEMPT = "uncommitted attempt"
PARTIAL = "half-written record"
REF = "old per-run reference"
INPUT_COPY = "step input copy"
KINDS = (SCRATCH, ATTEMPT, PARTIAL, REF, INPUT_COPY)
_PLURAL = {INPUT_COPY: "step input copies"}


@dataclass
class GarbageReport:
    """What a collection removed (or would remove, in a dry run)."""

    #: Datastore-relative paths removed.
    removed: list[str] = field(default_factory=list)
    #: Local folders (this machine) removed.
    removed_local: list[str] = field(default_factory=list)
    #: What each removed item was (path -> one of ``KINDS``).
    kinds: dict[str, str] = field(default_factory=dict)
    #: Datastore items left alone because they are younger than the grace period.
    kept_young: int = 0
    #: Local input copies left alone because they are younger than the grace period.
    kept_young_local: int = 0
    #: Run records removed by ``keep_runs``.
    pruned_runs: list[str] = field(default_factory=list)
    #: Things gc stayed away from, and why (e.g. a fingerprint with an unreadable commit).
    skipped: list[str] = field(default_factory=list)

    def count(self) -> int:
        """Items removed (run records not included)."""
        return len(self.removed) + len(self.removed_local)

    def summary(self) -> str:
        """E.g. '3 unused item(s) (2 scratch folders, 1 uncommitted attempt)'."""
        counts = {k: 0 for k in KINDS}
        for path in [*self.removed, *self.removed_local]:
            counts[self.kinds.get(path, SCRATCH)] += 1
        parts = [f"{n} {k if n == 1 else _PLURAL.get(k, k + 's')}" for k, n in counts.items() if n]
        return f"{self.count()} unused item(s) ({', '.join(parts)})"


def _stamp(item: dict[str, Any]) -> float:
    stamp = item.get("mtime") or item.get("last_modified") or item.get("created")
    if hasattr(stamp, "timestamp"):
        stamp = stamp.timestamp()
    try:
        return float(stamp) if stamp else 0.0
    except (TypeError, ValueError):
        return 0.0


def _local_age(path: Path, now: float) -> float:
    """Seconds since the newest modification at or below a local path (FileNotFoundError if it
    vanished)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [*dirnames, *filenames]:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except OSError:
                    continue
    return now - newest


def _age_seconds(store: Datastore, rel: str, now: float) -> float:
    """Seconds since the newest modification of anything at or below ``rel``."""
    local = store.local_path(rel)
    if local is not None:
        return _local_age(local, now)
    fs = store.filesystem()
    full = store.path(rel)
    items: list[dict[str, Any]] = []
    try:
        items.append(fs.info(full))
    except (FileNotFoundError, OSError):
        pass
    if not items or items[0].get("type") == "directory":
        # adlfs returns a dict for a prefix but a list of names for a blob (and may for others).
        found = fs.find(full, detail=True, withdirs=True)
        entries = found.values() if isinstance(found, dict) else found
        for entry in entries:
            if isinstance(entry, dict):
                items.append(entry)
            else:
                try:
                    items.append(fs.info(entry))
                except (FileNotFoundError, OSError):
                    continue
    if not items:
        raise FileNotFoundError(full)
    newest = max(_stamp(i) for i in items)
    return now - newest if newest else float("inf")


def _committed_attempts(store: Datastore, step: str, fingerprint: str) -> set[str] | None:
    """Attempts named by a fingerprint's commits; None if a commit record is unreadable (then
    nothing of this fingerprint may be removed: the unreadable commit may name any attempt).

    Read leniently: any record that names an output's path protects that attempt, even one the
    ledger would no longer reuse."""
    base = layout.commits_dir(step, fingerprint)
    attempts = set()
    for name in store.list_dir(base):
        if not name.endswith(".json"):
            continue
        try:
            commit = json.loads(store.read_bytes(f"{base}/{name}"))
            attempts.update(layout.attempt_of(out["path"]) for out in commit["outputs"].values())
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, DatastoreError):
            return None
    return attempts


def _partial_records(store: Datastore, rel_dir: str) -> list[str]:
    return [f"{rel_dir}/{n}" for n in store.list_dir(rel_dir) if _TMP_RECORD.match(n)]


def _store_candidates(store: Datastore, report: GarbageReport) -> list[tuple[str, str]]:
    """(datastore path, kind) of everything that may be garbage, young or old."""
    out = [(f"{layout.TMP}/{name}", SCRATCH) for name in store.list_dir(layout.TMP)]
    for step in store.list_dir(layout.STEPS):
        out += [(p, PARTIAL) for p in _partial_records(store, layout.runs_dir(step))]
        out += [(p, PARTIAL) for p in _partial_records(store, layout.step_dir(step))]
        for fingerprint in StepLedger(store, step).fingerprints():
            base = layout.fingerprint_dir(step, fingerprint)
            if not store.is_dir(base):
                continue
            out += [(p, PARTIAL) for p in _partial_records(store, layout.commits_dir(step, fingerprint))]
            committed = _committed_attempts(store, step, fingerprint)
            if committed is None:
                report.skipped.append(
                    f"{base}: a commit record is unreadable, so no attempt of it is removed "
                    "(run 'aml-assets verify')"
                )
                continue
            out += [
                (f"{base}/{attempt}", ATTEMPT)
                for attempt in store.list_dir(base)
                if attempt != "commits" and attempt not in committed
            ]
    for dataset in store.list_dir(layout.DATASETS):
        out += [(p, PARTIAL) for p in _partial_records(store, layout.versions_dir(dataset))]
        out += [(p, PARTIAL) for p in _partial_records(store, layout.tombstones_dir(dataset))]
    for asset in store.list_dir(layout.REFS):
        base = layout.refs_dir(asset)
        latest = layout.latest_ref(asset).rsplit("/", 1)[-1]
        out += [
            (f"{base}/{name}", PARTIAL if _TMP_RECORD.match(name) else REF)
            for name in store.list_dir(base)
            if name != latest
        ]
    return out


def default_work_dirs() -> list[Path]:
    """Where steps' private input copies live: the cache's ``work/``, and (legacy) the temp folder."""
    return [default_work_dir(), Path(tempfile.gettempdir())]


def _local_candidates(work_dirs: Iterable[Path]) -> list[Path]:
    found = []
    for folder in work_dirs:
        try:
            entries = list(Path(folder).iterdir())
        except OSError:
            continue
        found += [p for p in entries if _INPUT_COPY.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(set(found))


def _remove_local(path: Path) -> None:
    try:
        make_writable(path)
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def collect_garbage(
    store: Datastore,
    older_than_seconds: float = 24 * 3600,
    dry_run: bool = False,
    *,
    keep_runs: int | None = None,
    work_dirs: Iterable[Path] | None = None,
) -> GarbageReport:
    """Remove leftovers older than ``older_than_seconds`` from a datastore and from this machine.

    ``keep_runs``: also prune each step's run records to the newest ``keep_runs`` (default: keep
    all). ``work_dirs``: where to look for leftover input copies (default: ``default_work_dirs()``).
    """
    report = GarbageReport()
    now = time.time()
    for rel, kind in _store_candidates(store, report):
        try:
            age = _age_seconds(store, rel, now)
        except (OSError, DatastoreError):
            continue  # vanished meanwhile (another gc, a step finishing)
        if age < older_than_seconds:
            report.kept_young += 1
            continue
        if not dry_run:
            store._delete_record(rel)
        report.removed.append(rel)
        report.kinds[rel] = kind
    for path in _local_candidates(default_work_dirs() if work_dirs is None else work_dirs):
        try:
            age = _local_age(path, now)
        except OSError:
            continue
        if age < older_than_seconds:
            report.kept_young_local += 1
            continue
        if not dry_run:
            _remove_local(path)
        report.removed_local.append(str(path))
        report.kinds[str(path)] = INPUT_COPY
    if keep_runs is not None:
        for step in store.list_dir(layout.STEPS):
            report.pruned_runs += StepLedger(store, step).prune_runs(keep_runs, dry_run=dry_run)
    for note in report.skipped:
        _log.warning("gc: %s", note)
    return report
