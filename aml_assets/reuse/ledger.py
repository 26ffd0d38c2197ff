"""Where reuse is decided: the ledger of published step outputs, kept beside them on the datastore.

Layout on the datastore (every path below ``steps/<step>/``):

- ``<fingerprint>/<attempt>/<output>/``: a published output, never modified;
- ``<fingerprint>/commits/<time>-<attempt>.json``: created once the attempt's outputs are
  published, never overwritten; a step is reusable only through a commit, so a failed or killed
  attempt (no commit) is never reused. The newest commit whose outputs still exist wins, so a
  forced rerun (``allow_reuse=False``, regenerate) becomes what later runs reuse, and two runs
  racing to one fingerprint each publish a complete, separate attempt;
- ``runs/<time>-<run_id>.json``: what each run of the step decided and why (for ``explain``).

Keeping the ledger on the datastore, not in Dagster's event log, means reuse works across Dagster
instances (a laptop and CI, a wiped ``DAGSTER_HOME``) as long as the data is there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aml_assets.data.datastore import Datastore
from aml_assets.errors import AmlAssetsError
from aml_assets.reuse.fingerprint import explain_difference


@dataclass
class Commit:
    """A published, reusable result of one fingerprint of a step."""

    fingerprint: str
    run_id: str
    outputs: dict[str, dict[str, Any]]
    components: dict[str, Any]
    created: float
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Serialize for the commit marker."""
        return json.dumps(self.__dict__, sort_keys=True, indent=1).encode()


class StepLedger:
    """The reuse ledger of one step on one datastore."""

    def __init__(self, datastore: Datastore, step: str):
        self.datastore = datastore
        self.step = step

    def _base(self) -> str:
        return f"steps/{self.step}"

    def output_path(self, fingerprint: str, attempt: str, output: str) -> str:
        """Where an attempt publishes one output."""
        return f"{self._base()}/{fingerprint}/{attempt}/{output}"

    def _commits_dir(self, fingerprint: str) -> str:
        return f"{self._base()}/{fingerprint}/commits"

    def find(self, fingerprint: str) -> tuple[Commit | None, list[Commit]]:
        """The newest commit of a fingerprint whose outputs all still exist, and the stale ones.

        A stale commit (outputs deleted by hand) is skipped, never trusted: its step recomputes.
        """
        base = self._commits_dir(fingerprint)
        stale = []
        for name in reversed(self.datastore.list_dir(base)):
            if not name.endswith(".json"):
                continue
            commit = Commit(**json.loads(self.datastore.read_bytes(f"{base}/{name}")))
            if all(self.datastore.exists(out["path"]) for out in commit.outputs.values()):
                return commit, stale
            stale.append(commit)
        return None, stale

    def commit(self, commit: Commit, attempt: str) -> None:
        """Record a published result. Commits are never overwritten: a rerun adds a newer one."""
        rel = f"{self._commits_dir(commit.fingerprint)}/{time.time_ns():020d}-{attempt}.json"
        if not self.datastore.create_exclusive(rel, commit.to_json()):  # pragma: no cover
            raise AmlAssetsError(f"Step '{self.step}': commit {rel} already exists; run again.")

    def forget(self, fingerprint: str, stale: list[Commit]) -> None:
        """Drop commit records whose outputs were deleted, so they are not checked again."""
        base = self._commits_dir(fingerprint)
        run_ids = {c.run_id for c in stale}
        for name in self.datastore.list_dir(base):
            if name.endswith(".json"):
                commit = json.loads(self.datastore.read_bytes(f"{base}/{name}"))
                if commit["run_id"] in run_ids:
                    self.datastore.delete(f"{base}/{name}")

    def record_run(self, run_id: str, record: dict[str, Any]) -> None:
        """Remember what a run of the step decided (fingerprint, components, reuse, reasons)."""
        rel = f"{self._base()}/runs/{time.time_ns():020d}-{run_id}.json"
        payload = json.dumps({"run_id": run_id, **record}, indent=1).encode()
        self.datastore.write_bytes(rel, payload)
        # A pointer to the newest record, so deciding a step never lists its whole history.
        self.datastore.write_bytes(f"{self._base()}/latest-run.json", payload)

    def run_records(self) -> list[dict[str, Any]]:
        """Every recorded run of the step, oldest first."""
        base = f"{self._base()}/runs"
        return [
            json.loads(self.datastore.read_bytes(f"{base}/{name}"))
            for name in self.datastore.list_dir(base)
            if name.endswith(".json")
        ]

    def latest_record(self, exclude_run: str | None = None) -> dict[str, Any] | None:
        """The most recent run record, other than ``exclude_run``'s."""
        pointer = f"{self._base()}/latest-run.json"
        if self.datastore.exists(pointer):
            latest = json.loads(self.datastore.read_bytes(pointer))
            if latest.get("run_id") != exclude_run:
                return latest
        base = f"{self._base()}/runs"
        for name in reversed(self.datastore.list_dir(base)):
            if name.endswith(".json") and not name.endswith(f"-{exclude_run}.json"):
                return json.loads(self.datastore.read_bytes(f"{base}/{name}"))
        return None

    def record_for_run(self, run_id: str) -> dict[str, Any]:
        """The record of one run (a run id or a unique prefix of one)."""
        base = f"{self._base()}/runs"
        matches = [n for n in self.datastore.list_dir(base) if n.split("-", 1)[-1].startswith(run_id)]
        if not matches:
            raise AmlAssetsError(
                f"Step '{self.step}' has no recorded run '{run_id}'. List runs with "
                f"'aml-assets explain {self.step} --list'."
            )
        if len({n.split("-", 1)[-1] for n in matches}) > 1:
            raise AmlAssetsError(
                f"Run id prefix '{run_id}' matches several runs of step '{self.step}'; give more of it."
            )
        return json.loads(self.datastore.read_bytes(f"{base}/{matches[-1]}"))

    def explain(self, run: str | None = None, against: str | None = None) -> tuple[dict, dict | None, list[str]]:
        """Why ``run`` (default: the latest) did or did not reuse, compared with ``against``.

        ``against`` defaults to the run recorded just before ``run``. Returns (record of run,
        record compared with or None, reasons); no reasons means the fingerprints are equal.
        """
        records = self.run_records()
        if not records:
            raise AmlAssetsError(
                f"Step '{self.step}' has no recorded runs on datastore '{self.datastore.name}'. "
                "Run its pipeline first (or point at the datastore it ran on)."
            )
        current = self.record_for_run(run) if run else records[-1]
        if against:
            other = self.record_for_run(against)
        else:
            index = next(i for i, r in enumerate(records) if r["run_id"] == current["run_id"])
            other = records[index - 1] if index > 0 else None
        prefix = current.get("code_prefix", "")

        def label(path: str) -> str:
            return path if path.startswith("/") or not prefix else f"{prefix}/{path}"

        if other is not None and other["fingerprint"] == current["fingerprint"]:
            return current, other, []
        return current, other, explain_difference(
            other["components"] if other else None, current["components"], label
        )
