"""Where reuse is decided: the ledger of published step outputs, kept beside them on the datastore.

Layout on the datastore (every path below ``steps/<step>/``):

- ``<fingerprint>/<attempt>/<output>/``: a published output, never modified;
- ``<fingerprint>/COMMIT.json``: created exclusively once the outputs are published; a step is
  reusable only through it, so a failed or killed attempt (no commit) is never reused, and of two
  runs racing to the same fingerprint exactly one commit wins;
- ``runs/<time>-<run_id>.json``: what each run of the step decided and why (for ``explain``).

Keeping the ledger on the datastore, not in Dagster's event log, means reuse works across Dagster
instances (a laptop and CI, a wiped ``DAGSTER_HOME``) as long as the data is there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aml_assets.datastore import Datastore
from aml_assets.errors import AmlAssetsError


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

    def find(self, fingerprint: str) -> tuple[Commit | None, list[str]]:
        """The commit for a fingerprint and the names of its outputs that have gone missing."""
        rel = f"{self._base()}/{fingerprint}/COMMIT.json"
        if not self.datastore.exists(rel):
            return None, []
        commit = Commit(**json.loads(self.datastore.read_bytes(rel)))
        missing = [
            name for name, out in commit.outputs.items() if not self.datastore.exists(out["path"])
        ]
        return commit, missing

    def commit(self, commit: Commit) -> Commit:
        """Publish the commit marker; returns the winning commit if another run got there first."""
        rel = f"{self._base()}/{commit.fingerprint}/COMMIT.json"
        if self.datastore.create_exclusive(rel, commit.to_json()):
            return commit
        winner, missing = self.find(commit.fingerprint)
        if winner is None:  # pragma: no cover - the marker cannot vanish between two calls
            raise AmlAssetsError(f"Step '{self.step}': commit marker {rel} vanished; run again.")
        if missing:
            # The winner's outputs were deleted by hand: replace the stale marker with ours.
            self.datastore.delete(rel)
            return self.commit(commit)
        return winner

    def forget(self, fingerprint: str) -> None:
        """Drop the commit marker of a fingerprint whose outputs were deleted."""
        self.datastore.delete(f"{self._base()}/{fingerprint}/COMMIT.json")

    def record_run(self, run_id: str, record: dict[str, Any]) -> None:
        """Remember what a run of the step decided (fingerprint, components, reuse, reasons)."""
        rel = f"{self._base()}/runs/{time.time_ns():020d}-{run_id}.json"
        self.datastore.write_bytes(rel, json.dumps({"run_id": run_id, **record}, indent=1).encode())

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
