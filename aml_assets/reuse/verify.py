"""Is saved data still what was saved? Integrity records of step outputs, the check before reuse
(``aml_assets.data.integrity``), and ``verify_store`` behind ``aml-assets verify``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aml_assets.data import layout
from aml_assets.data.content import ManifestEntry, StatCache
from aml_assets.data.datastore import Datastore, open_stat_cache
from aml_assets.data.integrity import check_content
from aml_assets.data.registry import DatasetRegistry
from aml_assets.reuse.ledger import StepLedger
from aml_assets.reuse.records import FileRecord, PublishedOutput


def file_records(entries: Sequence[ManifestEntry]) -> tuple[FileRecord, ...]:
    """Integrity records of an output's files, from the manifest made before it is published."""
    return tuple(FileRecord(file=e.file or e.path, size=e.size, raw=e.raw or e.digest) for e in entries)


def with_stored_digests(store: Datastore, rel: str, files: Sequence[FileRecord]) -> tuple[FileRecord, ...]:
    """Add what a remote store records for each published object (MD5 or ETag)."""
    if store.local_path(rel) is not None:
        return tuple(files)
    stored = {e.path: e.digest for e in store.manifest(rel)}
    return tuple(
        FileRecord(f.file, f.size, f.raw, stored.get(f.file, "")) for f in files
    )


def check_output(
    store: Datastore, output: PublishedOutput, cache: StatCache | None = None
) -> tuple[bool, list[str]]:
    """(present, problems) of one published output: present is False when it was deleted."""
    return check_content(store, output.path, [asdict(f) for f in output.files], cache)


# --- verifying a whole datastore (aml-assets verify) ------------------------------------------
@dataclass
class VerifyProblem:
    """Stored data that no longer matches its record, and which records point at it."""

    path: str
    why: list[str]
    used_by: list[str] = field(default_factory=list)
    missing: bool = False


@dataclass
class VerifyReport:
    """What ``verify_store`` checked and found (like ``nix-store --verify --check-contents``)."""

    commits: int = 0
    outputs: int = 0
    versions: int = 0
    problems: list[VerifyProblem] = field(default_factory=list)
    #: Records that cannot be read at all (a commit or a version record), with the reason.
    unreadable: list[str] = field(default_factory=list)

    @property
    def corrupt(self) -> list[VerifyProblem]:
        """Outputs whose files changed, vanished, or were added to."""
        return [p for p in self.problems if not p.missing]

    @property
    def missing(self) -> list[VerifyProblem]:
        """Outputs whose data is gone entirely."""
        return [p for p in self.problems if p.missing]

    @property
    def ok(self) -> bool:
        """Whether everything checked still matches its record."""
        return not self.problems and not self.unreadable

    def summary(self) -> str:
        """One line with the counts."""
        return (
            f"Checked {self.outputs} step output(s) of {self.commits} commit(s) and "
            f"{self.versions} registered version(s): {len(self.corrupt)} corrupt, "
            f"{len(self.missing)} missing, {len(self.unreadable)} unreadable record(s)."
        )


def verify_store(
    store: Datastore, dataset: str | None = None, cache: StatCache | None = None
) -> VerifyReport:
    """Re-check every committed step output and every registered version against its record.

    With ``dataset``, only that dataset's registered versions are checked. On a local store the
    stat cache (``open_stat_cache()`` unless one is given) makes an unchanged file cost a stat;
    on blob storage the listing's sizes and stored MD5/ETags are compared. Each stored output is
    checked once, however many records point at it.
    """
    own_cache = cache is None and store.local_path(layout.STEPS) is not None
    if own_cache:
        cache = open_stat_cache()
    report = VerifyReport()
    seen: dict[tuple[str, str], VerifyProblem | None] = {}

    def check(path: str, files: list[dict[str, Any]], user: str) -> None:
        key = (path, json.dumps(files, sort_keys=True))
        if key not in seen:
            present, problems = check_content(store, path, files, cache)
            seen[key] = (
                None
                if present and not problems
                else VerifyProblem(
                    path,
                    problems or [f"{store.uri(path)} is missing (its data was deleted)"],
                    missing=not present,
                )
            )
            if seen[key] is not None:
                report.problems.append(seen[key])
        if seen[key] is not None:
            seen[key].used_by.append(user)

    try:
        if dataset is None:
            for step in store.list_dir(layout.STEPS):
                ledger = StepLedger(store, step)
                for fingerprint in ledger.fingerprints():
                    base = layout.commits_dir(step, fingerprint)
                    names = [n for n in store.list_dir(base) if n.endswith(".json")]
                    commits = ledger.commits(fingerprint)
                    report.unreadable += [
                        f"{base}/{n}: commit record is malformed"
                        for n in sorted(set(names) - {name for name, _ in commits})
                    ]
                    for name, commit in commits:
                        report.commits += 1
                        if (commit.components.get("settings") or {}).get("kind") == "transfer":
                            # A DataTransferStep's copy is on its destination datastore (checked
                            # there before every reuse), not on this one.
                            continue
                        for out in commit.outputs.values():
                            report.outputs += 1
                            check(
                                out.path,
                                [asdict(f) for f in out.files],
                                f"commit {base}/{name} (run {commit.run_id})",
                            )
        registry = DatasetRegistry(store)
        names = [dataset] if dataset is not None else store.list_dir(layout.DATASETS)
        for name in names:
            for found in registry.registered(name):
                report.versions += 1
                ref = found.ref
                check(ref.path, ref.files, f"dataset '{name}' version {found.version}")
        report.unreadable += [str(m) for m in registry.malformed]
    finally:
        if own_cache and cache is not None:
            cache.close()
    return report
