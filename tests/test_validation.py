"""Pipeline validation: every problem reported at once, before anything runs, each message clear."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from aml_assets import (
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineValidationError,
    PythonScriptStep,
    SparkPool,
    SynapseSparkStep,
    TabularDataset,
)

RESOURCES = {
    "workspace": LocalDatastore(),
    "cpucluster": LocalProcessCluster(),
    "spark01": SparkPool(),
}


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    for name in ("a.py", "b.py", "prep.py", "train.py"):
        (d / name).write_text("print('hi')\n")
    return d


def problems(pipeline: Pipeline, resources=RESOURCES) -> list[str]:
    with pytest.raises(PipelineValidationError) as info:
        pipeline.validate(resources)
    assert str(info.value).startswith(f"Pipeline '{pipeline.name}' is invalid")
    return info.value.problems


def test_valid_pipeline_passes(code):
    out = OutputDataset("out")
    Pipeline("ok", [PythonScriptStep("a", "a.py", code, arguments=["--o", out])]).validate(RESOURCES)


def test_cycle(code):
    x, y = OutputDataset("x"), OutputDataset("y")
    p = Pipeline("p", [
        PythonScriptStep("a", "a.py", code, arguments=[y.as_input(), x]),
        PythonScriptStep("b", "b.py", code, arguments=[x.as_input(), y]),
    ])
    assert problems(p) == ["steps form a cycle: a -> b -> a; a step cannot depend on its own output"]


def test_input_nothing_produces_suggests_the_close_name(code):
    prep = OutputDataset("titanic_prep")
    typo = OutputDataset("titanic_prepared")
    p = Pipeline("p", [
        PythonScriptStep("prep", "prep.py", code, arguments=[prep]),
        PythonScriptStep("train", "train.py", code, arguments=[typo.as_input(), OutputDataset("model")]),
    ])
    assert problems(p) == [
        "step 'train' reads dataset 'titanic_prepared', which no step produces and no datastore "
        "holds. Did you mean 'titanic_prep'?"
    ]


def test_two_steps_writing_one_output(code):
    shared = OutputDataset("shared")
    p = Pipeline("p", [
        PythonScriptStep("a", "a.py", code, arguments=[shared]),
        PythonScriptStep("b", "b.py", code, arguments=[shared]),
    ])
    assert problems(p) == [
        "output 'shared' is written by steps 'a', 'b'; give each step its own OutputDataset"
    ]


def test_missing_script(code):
    p = Pipeline("p", [PythonScriptStep("a", "missing.py", code, arguments=[OutputDataset("o")])])
    assert problems(p) == [
        f"step 'a': script 'missing.py' not found in source directory '{code}'; check script= "
        "and source_directory="
    ]


def test_unknown_and_wrong_compute_target(code):
    p = Pipeline("p", [
        PythonScriptStep("a", "a.py", code, arguments=[OutputDataset("o1")], compute_target="gpucluster"),
        SynapseSparkStep("b", "b.py", code, arguments=[OutputDataset("o2")], compute_target="cpucluster"),
    ])
    assert problems(p) == [
        "step 'a' runs on compute target 'gpucluster', which is not configured (configured: "
        "cpucluster, spark01); add it to the resources or fix the name",
        "step 'b' is a spark step but compute target 'cpucluster' is a LocalProcessCluster; use a SparkPool",
    ]


def test_bad_memory_strings(code):
    p = Pipeline("p", [
        SynapseSparkStep("a", "a.py", code, arguments=[OutputDataset("o")], driver_memory="7x", executor_memory="2g"),
    ])
    assert problems(p) == [
        "step 'a': driver_memory '7x' is not a memory size; use a number with a unit such as "
        "'512m', '2g' or '1t'"
    ]
    with pytest.raises(ValidationError, match="'7x' is not a memory size"):
        SparkPool(executor_memory="7x")


def test_every_problem_is_reported_at_once(code):
    shared = OutputDataset("shared")
    p = Pipeline("p", [
        PythonScriptStep("a", "nope.py", code, arguments=[shared], compute_target="nowhere"),
        SynapseSparkStep("b", "b.py", code, arguments=[shared, OutputDataset("ghost").as_input()], driver_memory="lots"),
    ])
    found = problems(p)
    assert len(found) == 5
    joined = "\n".join(found)
    for fragment in ("written by steps 'a', 'b'", "script 'nope.py' not found", "'nowhere', which is not configured",
                     "reads dataset 'ghost'", "driver_memory 'lots' is not a memory size"):
        assert fragment in joined


def test_missing_datastore_and_seed(code, tmp_path):
    src = TabularDataset.from_delimited_files("src", "s/s.csv", datastore="lake", seed=tmp_path / "none.csv")
    p = Pipeline("p", [PythonScriptStep("a", "a.py", code, arguments=[src.as_download(), OutputDataset("o")])])
    assert problems(p) == [
        f"dataset 'src': seed file '{tmp_path / 'none.csv'}' does not exist",
        "dataset 'src' is on datastore 'lake', which is not configured; add a Datastore resource named 'lake'",
    ]


def test_definitions_refuse_an_invalid_pipeline_before_running(code):
    p = Pipeline("p", [PythonScriptStep("a", "missing.py", code, arguments=[OutputDataset("o")])])
    with pytest.raises(PipelineValidationError, match="script 'missing.py' not found"):
        p.to_definitions(RESOURCES)


def test_dagster_cli_reports_validation_error(code, tmp_path):
    """`dagster job execute` on an invalid pipeline fails at load time with our message."""
    import subprocess
    import sys

    defs_file = tmp_path / "bad_defs.py"
    defs_file.write_text(
        "from aml_assets import *\n"
        f"p = Pipeline('p', [PythonScriptStep('a', 'a.py', {str(code)!r}, arguments=['--o', OutputDataset('o')], compute_target='gpu')])\n"
        "defs = p.to_definitions({'workspace': LocalDatastore(), 'cpucluster': LocalProcessCluster()})\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-f", str(defs_file), "-j", "p"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0
    assert "step 'a' runs on compute target 'gpu', which is not configured" in out.stdout + out.stderr
