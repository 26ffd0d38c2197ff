"""The reuse ledger of a step, kept beside its published outputs on the datastore.

- A **commit** makes a published attempt reusable. It is created once the attempt's outputs are
  all published, never overwritten; a failed or killed attempt has none and is never reused. Of a
  fingerprint's commits the newest whose outputs still verify wins, so a forced rerun becomes
  what later runs reuse, and two runs racing to one fingerprint each publish a separate attempt.
- A **run record** says what one run of the step decided and how it ended: ``started`` (written
  before the script runs, so a run killed mid-step leaves a trace), then ``ran``, ``reused`` or
  ``failed``. A pointer to the newest record and each record's link to the one it was compared
  with keep deciding and explaining O(1) in the length of the history.

Keeping the ledger on the datastore, not in Dagster's event log, means reuse works across Dagster
instances (a laptop and CI, a wiped ``DAGSTER_HOME``) as long as the data is there. Paths come
from ``aml_assets.data.layout``.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable

from aml_assets.data import layout
from aml_assets.data.datastore import Datastore
from aml_assets.errors import AmlAssetsError, DatastoreError, LedgerRecordError
from aml_assets.reuse.fingerprint import explain_difference
from aml_assets.reuse.records import Commit, CommitCandidate, RunRecord

_log = logging.getLogger(__name__)


class StepLedger:
    """The reuse ledger of one step on one datastore."""

    def __init__(self, datastore: Datastore, step: str):
        self.datastore = datastore
        self.step = step

    # --- commits ------------------------------------------------------------------------------
    def fingerprints(self) -> list[str]:
        """The fingerprints the step has attempts or commits for (not its run records,
        pointer or half-written temporary files)."""
        return [
            name
            for name in self.datastore.list_dir(layout.step_dir(self.step))
            if name != "runs" and not name.startswith(".") and not name.endswith(".json")
        ]

    def commits(self, fingerprint: str) -> list[tuple[str, Commit]]:
        """A fingerprint's commits, newest first; a malformed record is logged and skipped."""
        base = layout.commits_dir(self.step, fingerprint)
        found = []
        for name in reversed(self.datastore.list_dir(base)):
            if not name.endswith(".json"):
                continue
            try:
                found.append((name, Commit.from_json(self.datastore.read_bytes(f"{base}/{name}"), f"{base}/{name}")))
            except (LedgerRecordError, DatastoreError) as exc:
                _log.warning("Step '%s': skipping %s", self.step, exc)
        return found

    def candidates(
        self, fingerprint: str, check: Callable[[Commit], tuple[bool, list[str]]]
    ) -> list[CommitCandidate]:
        """Commits of a fingerprint, newest first, checked until one is sound.

        ``check(commit)`` returns (all outputs present, integrity problems). Checking stops at the
        first sound commit: older ones are never needed.
        """
        out = []
        for name, commit in self.commits(fingerprint):
            present, problems = check(commit)
            out.append(CommitCandidate(name, commit, problems, missing=not present))
            if present and not problems:
                break
        return out

    def commit(self, commit: Commit, attempt: str) -> None:
        """Record a published result. Commits are never overwritten: a rerun adds a newer one."""
        rel = layout.commit_record(self.step, commit.fingerprint, time.time_ns(), attempt)
        if not self.datastore._create_record(rel, commit.to_json()):  # pragma: no cover
            raise AmlAssetsError(f"Step '{self.step}': commit {rel} already exists; run again.")

    def forget(self, fingerprint: str, names: list[str]) -> None:
        """Drop commit records whose outputs were deleted or corrupted: they are never reused."""
        base = layout.commits_dir(self.step, fingerprint)
        for name in names:
            self.datastore._delete_record(f"{base}/{name}")

    # --- run records ----------------------------------------------------------------------------
    def start_record(self, record: RunRecord, previous: RunRecord | None) -> RunRecord:
        """Write a run's first record (its decision), linked to ``previous``: the newest record
        before it, which the decision compared with (``latest_record(exclude_run=...)``)."""
        record.previous = previous.name if previous else None
        record.created = record.created or time.time()
        record.name = layout.run_record(self.step, time.time_ns(), record.run_id).rsplit("/", 1)[-1]
        self._write(record)
        return record

    def finish_record(self, record: RunRecord, status: str, error: str | None = None) -> None:
        """Rewrite a run's record with how it ended."""
        record.status = status
        record.error = error
        record.finished = time.time()
        self._write(record)

    def _write(self, record: RunRecord) -> None:
        payload = record.to_json()
        self.datastore._write_record(f"{layout.runs_dir(self.step)}/{record.name}", payload)
        # The pointer is a cache: if it is lost or corrupt, the newest record is found by listing.
        self.datastore._write_record(layout.latest_run_pointer(self.step), payload)

    def _read_record(self, name: str) -> RunRecord | None:
        rel = f"{layout.runs_dir(self.step)}/{name}"
        try:
            return RunRecord.from_json(self.datastore.read_bytes(rel), rel)
        except (LedgerRecordError, DatastoreError) as exc:
            _log.warning("Step '%s': skipping %s", self.step, exc)
            return None

    def record_names(self) -> list[str]:
        """File names of every run record, oldest first."""
        return [n for n in self.datastore.list_dir(layout.runs_dir(self.step)) if n.endswith(".json")]

    def run_records(self) -> list[RunRecord]:
        """Every readable run record of the step, oldest first (malformed ones are skipped)."""
        return [r for n in self.record_names() if (r := self._read_record(n)) is not None]

    def latest_record(self, exclude_run: str | None = None) -> RunRecord | None:
        """The most recent run record, other than ``exclude_run``'s. O(1) through the pointer."""
        pointer = layout.latest_run_pointer(self.step)
        latest: RunRecord | None = None
        try:
            if self.datastore.exists(pointer):
                latest = RunRecord.from_json(self.datastore.read_bytes(pointer), pointer)
        except LedgerRecordError as exc:
            _log.warning("Step '%s': %s; finding the newest run record by listing", self.step, exc)
        if latest is not None:
            if latest.run_id != exclude_run:
                return latest
            return self._read_record(latest.previous) if latest.previous else None
        for name in reversed(self.record_names()):
            if layout.run_id_of_record(name) != exclude_run and (r := self._read_record(name)):
                return r
        return None

    def record_for_run(self, run_id: str) -> RunRecord:
        """The newest record of one run (a run id or a unique prefix of one)."""
        names = self.record_names()
        matches = [n for n in names if layout.run_id_of_record(n).startswith(run_id)]
        if not matches:
            raise AmlAssetsError(
                f"Step '{self.step}' has no recorded run '{run_id}' on datastore "
                f"'{self.datastore.name}' ({self.datastore.uri()}). List runs with "
                f"'aml-assets explain {self.step} --list'."
            )
        if len({layout.run_id_of_record(n) for n in matches}) > 1:
            raise AmlAssetsError(
                f"Run id prefix '{run_id}' matches several runs of step '{self.step}'; give more of it."
            )
        record = self._read_record(matches[-1])
        if record is None:
            raise AmlAssetsError(f"The record of run '{run_id}' of step '{self.step}' is unreadable.")
        return record

    def explain(
        self, run: str | None = None, against: str | None = None
    ) -> tuple[RunRecord, RunRecord | None, list[str]]:
        """Why ``run`` (default: the latest) did or did not reuse, compared with ``against``.

        ``against`` defaults to the run recorded just before ``run``. Returns (record of run,
        record compared with or None, reasons); no reasons means the fingerprints are equal.
        """
        current = self.record_for_run(run) if run else self.latest_record()
        if current is None:
            raise AmlAssetsError(self._no_runs_message())
        if against:
            other = self.record_for_run(against)
        elif current.previous:
            other = self._read_record(current.previous)
        else:
            other = None
        prefix = current.code_prefix

        def label(path: str) -> str:
            return path if path.startswith("/") or not prefix else f"{prefix}/{path}"

        if other is not None and other.fingerprint == current.fingerprint:
            return current, other, []
        return current, other, explain_difference(
            other.components if other else None, current.components, label
        )

    def _no_runs_message(self) -> str:
        steps = [s for s in self.datastore.list_dir(layout.STEPS) if s != self.step]
        hint = difflib.get_close_matches(self.step, steps, n=3)
        known = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else (
            f" Steps recorded there: {', '.join(steps[:10])}." if steps else ""
        )
        return (
            f"Step '{self.step}' has no recorded runs on datastore '{self.datastore.name}' "
            f"({self.datastore.uri()}).{known} Run its pipeline first, or point at the datastore "
            "it ran on (--root, or AML_DATASTORE / AML_DATASTORE_ROOT)."
        )

    def prune_runs(self, keep: int, dry_run: bool = False) -> list[str]:
        """Delete all but the newest ``keep`` run records; returns the removed paths."""
        if keep < 1:
            raise AmlAssetsError("keep must be at least 1: the newest run record is always kept.")
        names = self.record_names()
        removed = [f"{layout.runs_dir(self.step)}/{n}" for n in names[: max(0, len(names) - keep)]]
        if not dry_run:
            for rel in removed:
                self.datastore._delete_record(rel)
        return removed
