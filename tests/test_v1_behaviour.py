"""Azure ML SDK v1 pipeline behaviour (issue 11): run_after, pipeline defaults,
continue_on_step_failure, validate() as a list, step version=, params= as AML_PARAMETER_*,
the step name from its script, and the Run context's logging, tags and parent.

Real small pipelines on temporary instances; each feature is tried with several members and
edge cases, and each end-to-end run checks something a user would notice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aml_assets import (
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineParameter,
    PipelineValidationError,
    PythonScriptStep,
)
from aml_assets.reuse.fingerprint import StepFingerprint, explain_difference
from aml_assets.reuse.ledger import StepLedger
from tests.support.runs import materializations, reused, run_job, step_failure_messages

RESOURCES = {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=2)}

#: Appends its name to a shared trace file, fails when asked, and writes its output.
STEP = """
import os, sys, time
from pathlib import Path
name, trace, out = sys.argv[1:4]
with open(trace, "a") as fh:
    fh.write(name + "\\n")
if "fail" in sys.argv[4:]:
    sys.exit(f"{name} broke on purpose")
Path(out, "done.txt").write_text(name)
"""

#: Writes the AML_PARAMETER_* variables it sees (as JSON) to its output.
PARAMS = """
import json, os, sys
from pathlib import Path
seen = {k: v for k, v in os.environ.items() if k.startswith("AML_PARAMETER_")}
Path(sys.argv[1], "params.json").write_text(json.dumps(seen, sort_keys=True))
"""

#: Uses the Run context as Azure scripts do.
CONTEXT = """
import sys
from pathlib import Path
from amlrun import Run
run = Run.get_context()
run.log("accuracy", 0.5)
run.log_list("losses", [0.9, 0.5, 0.25])
run.log_row("by_epoch", epoch=1, loss=0.9)
run.log_row("by_epoch", epoch=2, loss=0.5, note="late")
run.log_table("confusion", {"label": ["a", "b"], "count": [3, 4]})
run.tag("quality", "good")
run.parent.log("from_parent", 7)
Path(sys.argv[1], "seen.txt").write_text(
    f"{sorted(run.tags.items())}|{run.parent.id}|{run.id}|{sorted(run.input_datasets)}"
)
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    (d / "step.py").write_text(STEP)
    (d / "params.py").write_text(PARAMS)
    (d / "score.py").write_text(CONTEXT)
    return d


def _step(name: str, code: Path, trace: Path, *extra: str, **kw) -> PythonScriptStep:
    return PythonScriptStep(
        name, "step.py", code, arguments=[name, str(trace), OutputDataset(f"{name}_out"), *extra], **kw
    )


def _trace(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _statuses(result) -> dict[str, str]:
    from dagster import DagsterEventType

    kinds = {
        DagsterEventType.STEP_SUCCESS: "success",
        DagsterEventType.STEP_FAILURE: "failure",
        DagsterEventType.STEP_SKIPPED: "skipped",
    }
    return {ev.step_key: kinds[ev.event_type] for ev in result.all_events if ev.event_type in kinds}


# --- run_after ---------------------------------------------------------------------------------
def test_run_after_orders_steps_without_data_and_keeps_reuse_exact(tmp_path, code, instance):
    trace = tmp_path / "trace.txt"
    # Alone, Dagster would run 'a_second' first (same level, sorted by name).
    alone = Pipeline("ordered", [_step("z_first", code, trace), _step("a_second", code, trace)])
    first = run_job(alone.to_definitions(RESOURCES), instance, job="ordered")
    assert first.success and _trace(trace) == ["a_second", "z_first"]

    trace.unlink()
    z_first, a_second = _step("z_first", code, trace, allow_reuse=False), _step("a_second", code, trace)
    a_second.run_after(z_first).run_after(z_first)  # chained; the second call changes nothing
    assert a_second.ordered_after == [z_first]
    ordered = Pipeline("ordered", [a_second, z_first])
    assert ordered.upstream_steps(a_second) == {"z_first"}
    second = run_job(ordered.to_definitions(RESOURCES), instance, job="ordered")
    assert second.success and _trace(trace) == ["z_first"]
    # The order carries no data: a_second's fingerprint did not change, so it is reused.
    assert reused(second) == {"z_first_out": False, "a_second_out": True}


def test_run_after_a_failed_step_skips_the_step(tmp_path, code, instance):
    trace = tmp_path / "trace.txt"
    bad = _step("bad", code, trace, "fail")
    after = _step("after", code, trace).run_after(bad)
    result = run_job(Pipeline("p", [bad, after]).to_definitions(RESOURCES), instance, job="p")
    assert not result.success
    assert _statuses(result) == {"bad": "failure"}  # 'after' never started
    assert _trace(trace) == ["bad"]


def test_run_after_and_reading_the_same_step_is_one_edge(tmp_path, code, instance):
    trace = tmp_path / "trace.txt"
    first = _step("first", code, trace)
    reader = PythonScriptStep(
        "reader", "step.py", code,
        arguments=["reader", str(trace), OutputDataset("reader_out"), first.all_outputs()[0].as_input("x")],
    ).run_after(first)
    result = run_job(Pipeline("p", [first, reader]).to_definitions(RESOURCES), instance, job="p")
    assert result.success and _trace(trace) == ["first", "reader"]


def test_run_after_problems(tmp_path, code):
    trace = tmp_path / "t"
    a, b, stray = _step("a", code, trace), _step("b", code, trace), _step("stray", code, trace)
    with pytest.raises(ValueError, match="cannot run after itself"):
        a.run_after(a)
    with pytest.raises(TypeError, match="takes a step, not str"):
        a.run_after("b")
    a.run_after(b)
    b.run_after(a)
    problems = Pipeline("p", [a, b]).validate(RESOURCES, raise_errors=False)
    assert any(p.startswith("steps form a cycle: a -> b -> a") for p in problems), problems
    c = _step("c", code, trace).run_after(stray)
    assert Pipeline("q", [c]).validate(RESOURCES, raise_errors=False) == [
        "step 'c' runs after step 'stray', which is not in pipeline 'q'; add it to steps= or "
        "drop the run_after"
    ]


# --- default_source_directory / default_datastore ------------------------------------------------
def test_default_source_directory_and_datastore(tmp_path, code, instance):
    other_code = tmp_path / "other_code"
    other_code.mkdir()
    (other_code / "step.py").write_text(STEP.replace('fh.write(name + "\\n")', 'fh.write("other-" + name + "\\n")'))
    trace = tmp_path / "trace.txt"
    without = PythonScriptStep(script="step.py", arguments=["plain", str(trace), OutputDataset("plain_out")])
    own = PythonScriptStep(
        "own", "step.py", other_code, arguments=["own", str(trace), OutputDataset("own_out")]
    )
    assert without.source_directory is None and without.name == "step"
    store = LocalDatastore(name="results", root=str(tmp_path / "results"))
    pipeline = Pipeline(
        "defaults", [without, own], default_source_directory=code, default_datastore="results"
    )
    assert pipeline.steps[0].source_directory == code.resolve()
    assert without.source_directory is None, "the declared step is left as it was"
    assert pipeline.datastore == pipeline.default_datastore == "results"
    result = run_job(pipeline.to_definitions({**RESOURCES, "results": store}), instance, job="defaults")
    assert result.success
    assert sorted(_trace(trace)) == ["other-own", "plain"]
    # The outputs and the reuse ledger are on the default datastore, not on the workspace.
    assert StepLedger(store, "step").latest_record().status == "ran"
    assert StepLedger(RESOURCES["workspace"], "step").latest_record() is None
    assert materializations(result)["plain_out"]["uri"].startswith(str(tmp_path / "results"))


def test_default_problems(tmp_path, code):
    lost = PythonScriptStep("lost", "step.py", arguments=[OutputDataset("lost_out")])
    elsewhere = PythonScriptStep(
        "elsewhere", "step.py", code, arguments=[OutputDataset("far", datastore="archive")]
    )
    assert Pipeline("p", [lost, elsewhere]).validate(raise_errors=False) == [
        "step 'lost' has no source_directory and pipeline 'p' no default_source_directory; give "
        "one of them (the folder holding 'step.py')",
        "step 'elsewhere': output 'far' names datastore 'archive', but every output of a "
        "pipeline is published on its datastore ('workspace'), where its reuse ledger is; drop "
        "datastore= or set Pipeline(default_datastore=...)",
    ]
    # Naming the pipeline's own datastore is fine.
    assert Pipeline("p", [elsewhere], default_datastore="archive").validate(raise_errors=False) == []
    with pytest.raises(ValueError, match="name the same setting; give one of them"):
        Pipeline("p", [elsewhere], datastore="a", default_datastore="b")


# --- continue_on_step_failure -----------------------------------------------------------------------
def _branches(code: Path, trace: Path, **kw) -> Pipeline:
    bad = _step("a_bad", code, trace, "fail")
    down = PythonScriptStep(
        "c_down", "step.py", code,
        arguments=["c_down", str(trace), OutputDataset("c_down_out"), bad.all_outputs()[0].as_input("x")],
    )
    return Pipeline("branches", [bad, _step("b_ok", code, trace), down], **kw)


def test_continue_on_step_failure_runs_independent_branches(tmp_path, code, instance):
    trace = tmp_path / "trace.txt"
    pipeline = _branches(code, trace, continue_on_step_failure=True)
    result = run_job(pipeline.to_definitions(RESOURCES), instance, job="branches")
    assert not result.success, "the run still ends failed"
    assert _statuses(result) == {"a_bad": "failure", "b_ok": "success"}  # c_down never started
    assert _trace(trace) == ["a_bad", "b_ok"]


@pytest.mark.parametrize("parallel", [False, True])
def test_stop_at_first_failure(tmp_path, code, instance, parallel):
    trace = tmp_path / "trace.txt"
    pipeline = _branches(code, trace, continue_on_step_failure=False)
    defs = pipeline.to_definitions(
        {**RESOURCES, "cpucluster": LocalProcessCluster(max_concurrent_steps=1)}, parallel=parallel
    )
    result = run_job(defs, instance, job="branches")
    assert not result.success
    assert _statuses(result) == {"a_bad": "failure", "b_ok": "failure"}
    assert _trace(trace) == ["a_bad"], "no step starts after the first failure"
    (_, not_started) = step_failure_messages(result)
    assert "Step 'b_ok' was not started: step 'a_bad' failed earlier in this run" in not_started
    assert "continue_on_step_failure=True" in not_started
    assert StepLedger(RESOURCES["workspace"], "b_ok").latest_record() is None


# --- validate() --------------------------------------------------------------------------------
def test_validate_returns_the_problems_or_raises(tmp_path, code):
    good = Pipeline("good", [_step("a", code, tmp_path / "t")])
    assert good.validate(RESOURCES) == []
    assert good.validate(RESOURCES, raise_errors=False) == []
    bad = Pipeline("bad", [
        PythonScriptStep("x", "missing.py", code, arguments=[OutputDataset("o")]),
        PythonScriptStep("x", "step.py", code, compute_target="gpu", arguments=[OutputDataset("p")]),
    ])
    problems = bad.validate(RESOURCES, raise_errors=False)
    assert len(problems) == 3, problems
    assert problems[0] == "two steps are named 'x'; step names must be unique"
    assert any("script 'missing.py' not found" in p for p in problems)
    assert any("compute target 'gpu', which is not configured" in p for p in problems)
    with pytest.raises(PipelineValidationError) as info:
        bad.validate(RESOURCES)
    assert info.value.problems == problems
    with pytest.raises(PipelineValidationError):
        bad.to_definitions(RESOURCES)  # the raising path Definitions rely on


# --- version= ------------------------------------------------------------------------------------
def test_version_is_in_the_fingerprint_only_when_given():
    base = StepFingerprint(step="s", settings={"kind": "python", "script": "s.py"})
    v1 = StepFingerprint(step="s", settings={"kind": "python", "script": "s.py", "version": "1"})
    v2 = StepFingerprint(step="s", settings={"kind": "python", "script": "s.py", "version": "2"})
    assert len({base.digest, v1.digest, v2.digest}) == 3
    assert explain_difference(v1.components(), v2.components()) == ["version changed: 1 -> 2"]
    assert explain_difference(base.components(), v1.components()) == ["version changed: none -> 1"]
    assert explain_difference(v2.components(), base.components()) == ["version changed: 2 -> none"]
    assert explain_difference(v1.components(), v1.components()) == []


def test_version_reruns_only_that_step(tmp_path, code, instance):
    trace = tmp_path / "trace.txt"

    def run(version):
        steps = [_step("a", code, trace, version=version), _step("b", code, trace)]
        return run_job(Pipeline("v", steps).to_definitions(RESOURCES), instance, job="v")

    assert reused(run(None)) == {"a_out": False, "b_out": False}
    assert reused(run(None)) == {"a_out": True, "b_out": True}, "no version: nothing changed"
    first = run(1)  # an int is kept as its string
    assert reused(first) == {"a_out": False, "b_out": True}
    assert materializations(first)["a_out"]["runs_because"] == "version changed: none -> 1"
    assert reused(run("1")) == {"a_out": True, "b_out": True}
    bumped = run("2")
    assert reused(bumped) == {"a_out": False, "b_out": True}
    assert materializations(bumped)["a_out"]["runs_because"] == "version changed: 1 -> 2"
    # `aml-assets explain` says it too.
    import io

    from aml_assets.cli import main

    out = io.StringIO()
    assert main(["--root", str(RESOURCES["workspace"].root_dir()), "explain", "a"], out=out) == 0
    assert "version changed: 1 -> 2" in out.getvalue()


# --- params= -------------------------------------------------------------------------------------
def test_params_arrive_as_aml_parameter_variables(tmp_path, code, instance, monkeypatch):
    monkeypatch.setenv("AML_PARAMETER_stale", "from the parent process")
    alpha = PipelineParameter("alpha", 0.5)

    def pipeline(mode="fast", n=3):
        step = PythonScriptStep(
            script="params.py", source_directory=code, arguments=[OutputDataset("seen")],
            params={"alpha": alpha, "mode": mode, "n": n, "flag": True},
        )
        return Pipeline("params", [step])

    def seen(result):
        path = materializations(result)["seen"]["uri"]
        return json.loads(Path(path, "params.json").read_text())

    first = run_job(pipeline().to_definitions(RESOURCES), instance, job="params")
    assert first.success
    assert seen(first) == {
        "AML_PARAMETER_alpha": "0.5", "AML_PARAMETER_flag": "True",
        "AML_PARAMETER_mode": "fast", "AML_PARAMETER_n": "3",
    }, "only the step's own params, never an inherited one"
    assert reused(run_job(pipeline().to_definitions(RESOURCES), instance, job="params")) == {"seen": True}
    # A pipeline parameter is resolved per run, and is in the fingerprint.
    config = {"resources": {"pipeline": {"config": {"alpha": 0.25}}}}
    other = run_job(pipeline().to_definitions(RESOURCES), instance, job="params", run_config=config)
    assert reused(other) == {"seen": False}
    assert seen(other)["AML_PARAMETER_alpha"] == "0.25"
    assert materializations(other)["seen"]["runs_because"] == "parameter alpha changed (0.5 -> 0.25)"
    # A literal value is in the fingerprint too.
    changed = run_job(pipeline("slow").to_definitions(RESOURCES), instance, job="params")
    assert seen(changed)["AML_PARAMETER_mode"] == "slow"
    assert materializations(changed)["seen"]["runs_because"] == (
        "parameter alpha changed (0.25 -> 0.5); "  # the previous run had alpha=0.25
        "params mode (AML_PARAMETER_mode) changed ('fast' -> 'slow')"
    )
    # What the script receives decides: 3 and "3" are the same variable, so nothing reruns.
    same = run_job(pipeline("slow", n="3").to_definitions(RESOURCES), instance, job="params")
    assert reused(same) == {"seen": True}


def test_params_changes_are_named():
    def fp(params):
        return StepFingerprint(step="s", settings={"kind": "python", "params": params}).components()

    literal, other = fp({"a": {"value": "0.5"}}), fp({"a": {"value": "0.7"}})
    bound = fp({"a": {"parameter": "alpha"}})
    assert explain_difference(literal, other) == ["params a (AML_PARAMETER_a) changed ('0.5' -> '0.7')"]
    assert explain_difference(literal, bound) == [
        "params a (AML_PARAMETER_a) pipeline parameter changed (<unset> -> 'alpha')",
        "params a (AML_PARAMETER_a) changed ('0.5' -> <unset>)",
    ]
    assert explain_difference(fp({}), literal) == ["params a (AML_PARAMETER_a) changed (<unset> -> '0.5')"]


def test_params_problems(code):
    step = PythonScriptStep(
        script="params.py", source_directory=code, arguments=[OutputDataset("o")],
        params={"bad-name": 1, "ok": [1, 2], "p": PipelineParameter("_p", 1)},
    )
    assert Pipeline("p", [step]).validate(raise_errors=False) == [
        "step 'params': params name 'bad-name' cannot be part of an environment variable name "
        "(AML_PARAMETER_bad-name); use letters, digits and underscores",
        "step 'params': params 'ok' is a list; give a str, int, float, bool or PipelineParameter "
        "(it is delivered as an environment variable)",
        "parameter name '_p' is not allowed; use another name",
    ]


# --- the step name from its script -----------------------------------------------------------------
def test_step_name_defaults_to_the_script_name(code):
    assert PythonScriptStep(script="prep.py", source_directory=code).name == "prep"
    assert PythonScriptStep(script="sub/train.py", source_directory=code).name == "train"
    assert PythonScriptStep(script="prep-data.v2.py", source_directory=code).name == "prep_data_v2"
    assert PythonScriptStep(script="2pass.py", source_directory=code).name == "step_2pass"
    assert PythonScriptStep("given", "prep.py", code).name == "given"
    # A name Dagster reserves is refused before anything runs, saying where it came from.
    reserved = PythonScriptStep(script="context.py", source_directory=code, arguments=[OutputDataset("o")])
    assert "step name 'context' (from its script 'context.py') is a word Dagster reserves; give " \
        "the step another name=" in Pipeline("p", [reserved]).validate(raise_errors=False)
    with pytest.raises(ValueError, match="no script; give script="):
        PythonScriptStep(name="x", source_directory=code)


def test_two_steps_named_after_the_same_script_are_refused(code):
    one = PythonScriptStep(script="step.py", source_directory=code, arguments=[OutputDataset("o1")])
    two = PythonScriptStep(script="step.py", source_directory=code, arguments=[OutputDataset("o2")])
    named = PythonScriptStep("step", "params.py", code, arguments=[OutputDataset("o3")])
    assert Pipeline("p", [one, two]).validate(raise_errors=False) == [
        "two steps are named 'step' ('step.py' (name from its script), 'step.py' (name from its "
        "script)): a step without name= is named after its script; give each step its own name="
    ]
    assert Pipeline("p", [one, named]).validate(raise_errors=False)[0].startswith(
        "two steps are named 'step' ('step.py' (name from its script), 'params.py')"
    )


# --- Run.get_context() -----------------------------------------------------------------------------
def test_run_context_logs_tags_and_parent(tmp_path, code, instance):
    step = PythonScriptStep(script="score.py", source_directory=code, arguments=[OutputDataset("ctx")])
    result = run_job(
        Pipeline("ctx", [step]).to_definitions(RESOURCES), instance, job="ctx", tags={"team": "fraud"}
    )
    assert result.success
    meta = materializations(result)["ctx"]
    assert meta["accuracy"] == 0.5 and meta["from_parent"] == 7
    assert meta["losses"] == "[0.9, 0.5, 0.25]"
    assert meta["by_epoch"] == str({"epoch": [1, 2], "loss": [0.9, 0.5], "note": [None, "late"]})
    assert meta["confusion"] == str({"label": ["a", "b"], "count": [3, 4]})
    assert meta["tag.quality"] == "good"
    tags, parent, own, inputs = Path(meta["uri"], "seen.txt").read_text().split("|")
    assert tags == "[('quality', 'good'), ('team', 'fraud')]"
    assert parent == own == result.run_id
    assert inputs == "[]"


def test_offline_run_context(capsys):
    from amlrun import Run

    run = Run.get_context()
    assert run.offline and run.parent is None and run.tags == {}
    run.log_row("t", a=1)
    run.log_row("t", b=2)
    assert "metric t = {'a': [1, None], 'b': [None, 2]}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="columns have different lengths \\(a 2, b 1\\)"):
        run.log_table("bad", {"a": [1, 2], "b": [3]})
    with pytest.raises(ValueError, match="log a finite number"):
        run.log_list("l", [1.0, float("nan")])
    with pytest.raises(ValueError, match="needs at least one column=value"):
        run.log_row("empty")
    run.set_tags({"x": 1, "y": None})
    assert run.get_tags() == {"x": "1", "y": ""}
