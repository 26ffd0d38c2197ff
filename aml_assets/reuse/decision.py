"""Where reuse is decided: a pure function from what is known to "reuse this commit" or "run, because".

No I/O, no Dagster, no Spark: the ledger gathers the facts (this fingerprint's commits, checked
newest first; the previous run's record), ``decide`` weighs them, so every rule here has a fast
unit test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aml_assets.reuse.fingerprint import explain_difference
from aml_assets.reuse.records import Commit, CommitCandidate, RunRecord


@dataclass(frozen=True)
class Decision:
    """Reuse ``commit``, or (``commit`` None) run for ``reasons``.

    ``warnings`` report saved outputs found deleted or corrupt; ``forget`` names their commit
    records, which are dropped so they are never considered again.
    """

    commit: Commit | None
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)

    @property
    def reuse(self) -> bool:
        """Whether the step is skipped and ``commit`` reused."""
        return self.commit is not None


def _bad_commit_reason(candidate: CommitCandidate) -> str:
    run = candidate.commit.run_id
    if candidate.missing:
        return f"its published outputs (run {run}) were deleted; recomputing"
    return (
        f"its published outputs (run {run}) are corrupt ({'; '.join(candidate.problems)}); "
        "recomputing, never reusing them"
    )


def decide(
    *,
    fingerprint: str,
    components: dict[str, Any],
    allow_reuse: bool,
    regenerate: bool,
    candidates: Sequence[CommitCandidate],
    previous: RunRecord | None,
    code_label: Callable[[str], str] = str,
) -> Decision:
    """Decide whether a step with this fingerprint reuses a committed result, and say why not."""
    sound = next((c for c in candidates if not c.missing and not c.problems), None)
    bad = [c for c in candidates if c.missing or c.problems]
    warnings = [
        f"the published outputs of run {c.commit.run_id} were deleted; they will not be reused"
        if c.missing
        else f"the published outputs of run {c.commit.run_id} are corrupt: {'; '.join(c.problems)}. "
        "They will never be reused; the step recomputes (run 'aml-assets verify' to check the rest)"
        for c in bad
    ]
    forget = [c.name for c in bad]
    if sound is not None and allow_reuse and not regenerate:
        return Decision(sound.commit, [], warnings, forget)
    if not allow_reuse:
        reasons = ["allow_reuse=False"]
    elif regenerate:
        reasons = ["regenerate_outputs was requested"]
    elif bad:
        reasons = [_bad_commit_reason(bad[0])]
    elif previous is not None and previous.fingerprint == fingerprint:
        if previous.status == "failed":
            reasons = [f"the previous attempt (run {previous.run_id}) failed; trying again"]
        elif previous.status == "started":
            reasons = [
                f"the previous attempt (run {previous.run_id}) never finished (its process was "
                "killed?); trying again"
            ]
        else:
            reasons = [f"no published outputs exist for fingerprint {fingerprint[:12]}"]
    else:
        reasons = explain_difference(
            previous.components if previous else None, components, code_label
        ) or [f"no published outputs exist for fingerprint {fingerprint[:12]}"]
    return Decision(None, reasons, warnings, forget)
