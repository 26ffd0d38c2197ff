"""Garbage collection: what a killed or crashed step left behind, never what anything references.

Removed, once older than a grace period (so a step still running is never touched):
- scratch folders under ``_tmp/`` (a step killed with SIGKILL cannot clean up after itself);
- published attempts under ``steps/<step>/<fingerprint>/`` that no commit names (a crash between
  publishing and committing);
- per-run dataset references under ``_refs/`` (each asset's ``latest.json`` is kept).

Committed outputs, registered dataset versions and run records are never removed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from aml_assets.data.datastore import Datastore


@dataclass
class GarbageReport:
    """What a collection removed (or would remove, in a dry run)."""

    removed: list[str] = field(default_factory=list)
    kept_young: int = 0


def _age_seconds(store: Datastore, rel: str, now: float) -> float:
    """Seconds since the newest modification of anything at or below ``rel``."""
    fs = store.filesystem()
    full = store.path(rel)
    items: list[dict[str, Any]] = list(fs.find(full, detail=True, withdirs=True).values())
    items.append(fs.info(full))
    newest = 0.0
    for item in items:
        stamp = item.get("mtime") or item.get("last_modified") or item.get("created")
        if hasattr(stamp, "timestamp"):
            stamp = stamp.timestamp()
        if stamp:
            newest = max(newest, float(stamp))
    return now - newest if newest else float("inf")


def _committed_attempts(store: Datastore, step: str, fingerprint: str) -> set[str]:
    base = f"steps/{step}/{fingerprint}/commits"
    attempts = set()
    for name in store.list_dir(base):
        if name.endswith(".json"):
            commit = json.loads(store.read_bytes(f"{base}/{name}"))
            for out in commit["outputs"].values():
                # steps/<step>/<fingerprint>/<attempt>/<output>
                attempts.add(PurePosixPath(out["path"]).parts[3])
    return attempts


def collect_garbage(store: Datastore, older_than_seconds: float = 24 * 3600, dry_run: bool = False) -> GarbageReport:
    """Remove leftovers older than ``older_than_seconds`` from a datastore."""
    report = GarbageReport()
    now = time.time()
    candidates = [f"_tmp/{name}" for name in store.list_dir("_tmp")]
    for step in store.list_dir("steps"):
        for fingerprint in store.list_dir(f"steps/{step}"):
            if fingerprint == "runs" or not store.is_dir(f"steps/{step}/{fingerprint}"):
                continue
            committed = _committed_attempts(store, step, fingerprint)
            candidates += [
                f"steps/{step}/{fingerprint}/{attempt}"
                for attempt in store.list_dir(f"steps/{step}/{fingerprint}")
                if attempt != "commits" and attempt not in committed
            ]
    for asset in store.list_dir("_refs"):
        candidates += [
            f"_refs/{asset}/{name}" for name in store.list_dir(f"_refs/{asset}") if name != "latest.json"
        ]
    for rel in candidates:
        if _age_seconds(store, rel, now) < older_than_seconds:
            report.kept_young += 1
            continue
        if not dry_run:
            store.delete(rel)
        report.removed.append(rel)
    return report
