"""The reuse decision as a pure function: no Spark, no Dagster, no datastore."""

from __future__ import annotations

import pytest

from aml_assets.reuse.decision import decide
from aml_assets.reuse.fingerprint import FINGERPRINT_VERSION, StepFingerprint
from aml_assets.reuse.records import Commit, CommitCandidate, PublishedOutput, RunRecord


def _fp(**changes) -> StepFingerprint:
    base = dict(
        step="train",
        code={"train.py": "a"},
        arguments=["--n", "{parameter:n}"],
        parameters={"n": 200},
        inputs={"titanic": "h1"},
        environment={"python": "3.11.7"},
        settings={"kind": "python", "inputs": {"titanic": {"separator": ","}}},
    )
    base.update(changes)
    return StepFingerprint(**base)


def _commit(fp: StepFingerprint, run: str = "run-a") -> Commit:
    out = PublishedOutput(path=f"steps/train/{fp.digest}/x/model", content_hash="c", file_count=1, byte_count=3)
    return Commit(fingerprint=fp.digest, run_id=run, outputs={"model": out}, components=fp.components(), created=1.0)


def _record(fp: StepFingerprint, run: str = "run-a", status: str = "ran") -> RunRecord:
    return RunRecord(run_id=run, step="train", fingerprint=fp.digest, components=fp.components(), status=status)


def _decide(fp, candidates=(), previous=None, allow_reuse=True, regenerate=False):
    return decide(
        fingerprint=fp.digest,
        components=fp.components(),
        allow_reuse=allow_reuse,
        regenerate=regenerate,
        candidates=list(candidates),
        previous=previous,
        code_label=lambda p: f"code/{p}",
    )


def test_a_sound_commit_is_reused():
    fp = _fp()
    d = _decide(fp, [CommitCandidate("c1.json", _commit(fp))], _record(fp))
    assert d.reuse and d.commit.run_id == "run-a" and d.reasons == [] and d.warnings == []


@pytest.mark.parametrize(
    "allow_reuse, regenerate, reason",
    [(False, False, "allow_reuse=False"), (True, True, "regenerate_outputs was requested")],
)
def test_forced_runs_say_why(allow_reuse, regenerate, reason):
    fp = _fp()
    d = _decide(fp, [CommitCandidate("c1.json", _commit(fp))], _record(fp), allow_reuse, regenerate)
    assert not d.reuse and d.reasons == [reason]


def test_corrupt_outputs_are_never_reused_and_are_forgotten():
    fp = _fp()
    bad = CommitCandidate("c2.json", _commit(fp, "run-b"), problems=["steps/x/model/m.pkl changed since it was published"])
    d = _decide(fp, [bad], _record(fp, "run-b"))
    assert not d.reuse
    assert "corrupt" in d.reasons[0] and "m.pkl" in d.reasons[0]
    assert d.forget == ["c2.json"] and "never be reused" in d.warnings[0]


def test_an_older_sound_commit_serves_when_the_newest_is_corrupt():
    fp = _fp()
    bad = CommitCandidate("c2.json", _commit(fp, "run-b"), problems=["changed"])
    good = CommitCandidate("c1.json", _commit(fp, "run-a"))
    d = _decide(fp, [bad, good], _record(fp, "run-b"))
    assert d.reuse and d.commit.run_id == "run-a" and d.forget == ["c2.json"]


def test_deleted_outputs_rerun_with_their_reason():
    fp = _fp()
    d = _decide(fp, [CommitCandidate("c1.json", _commit(fp), missing=True)], _record(fp))
    assert not d.reuse and d.reasons == ["its published outputs (run run-a) were deleted; recomputing"]


@pytest.mark.parametrize(
    "status, words", [("failed", "failed; trying again"), ("started", "never finished")]
)
def test_a_failed_or_killed_previous_attempt_is_named(status, words):
    fp = _fp()
    d = _decide(fp, [], _record(fp, "run-x", status))
    assert not d.reuse and words in d.reasons[0] and "run-x" in d.reasons[0]


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"code": {"train.py": "b"}}, "script code/train.py changed"),
        ({"parameters": {"n": 50}}, "parameter n changed (200 -> 50)"),
        ({"inputs": {"titanic": "h2"}}, "input titanic changed"),
        (
            {"settings": {"kind": "python", "inputs": {"titanic": {"separator": ";"}}}},
            "input titanic: separator changed (',' -> ';')",
        ),
    ],
)
def test_what_changed_is_named(change, reason):
    old, new = _fp(), _fp(**change)
    d = _decide(new, [], _record(old))
    assert not d.reuse and d.reasons[0].startswith(reason)


def test_first_run_and_format_change():
    fp = _fp()
    assert _decide(fp).reasons == ["no previous run"]
    old = _record(fp)
    old.components = {**old.components, "format": FINGERPRINT_VERSION - 1}
    old.fingerprint = "other"
    assert "fingerprint format changed" in _decide(fp, [], old).reasons[0]
