"""The seed article "Create, run, & track ML pipelines" (Azure ML SDK v1), ported with its
imports changed (``examples/v1_port/create_run_track``): a DataReference read by two steps,
PipelineData passed to a third, a PipelineParameter, submitted through an Experiment.

Runs a private copy of the example from its folder, as the article's notebook runs."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.runs import materializations, reused, run_job, step_failure_messages
from tests.support.v1_port import v1_script_main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "v1_port" / "create_run_track"


@pytest.fixture
def port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the ported example, as the working folder, importable."""
    folder = tmp_path / "create_run_track"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in ("pipeline", "definitions"):  # the example's modules, not the reference project's
        module = sys.modules.get(name)
        if module is not None and str(getattr(module, "__file__", "")).startswith(str(folder)):
            del sys.modules[name]


def _definitions(folder: Path):
    """The example's definitions.py, loaded afresh (re-running the v1 code, uploads included)."""
    sys.modules.pop("pipeline", None)
    return runpy.run_path(str(folder / "definitions.py"))["defs"]


def _comparison(result) -> dict:
    return json.loads((Path(materializations(result)["out_data3"]["uri"]) / "comparison.json").read_text())


def test_the_port_changes_only_imports_data_and_what_the_article_leaves_undefined():
    text = (EXAMPLE / "pipeline.py").read_text()
    code = [line.split("#")[0] for line in text.split('"""', 2)[2].splitlines()]
    assert not [line for line in code if "azureml" in line]
    for line in text.splitlines():
        if line.startswith(("import ", "from ")):
            assert line.split()[1].startswith("aml_assets.compat"), line
    for script in ("train.py", "extract.py", "compare.py"):
        assert "from aml_assets.compat.core import Run  # was: from azureml.core import Run" in (
            EXAMPLE / "scripts" / script
        ).read_text()


def test_seed_create_run_track_pipeline_runs_end_to_end(port, instance, isolated_env):
    first = run_job(_definitions(port), instance, job="pipeline")
    assert first.success, step_failure_messages(first)
    # upload_files put the stand-in data where the DataReference points.
    assert (isolated_env / "posts" / "posts.json").read_bytes() == (port / "data" / "posts.json").read_bytes()
    report = _comparison(first)
    assert set(report["accuracy"]) == {"naive_bayes", "keywords"} and min(report["accuracy"].values()) >= 0.8
    assert report["best"] in report["accuracy"] and sorted(report["keywords"]) == ["cooking", "cycling", "space"]
    found = materializations(first)
    assert found["output_data1"]["accuracy"] >= 0.8 and found["out_data3"]["tag.best"] == report["best"]
    assert reused(first) == {"output_data1": False, "output_data2": False, "out_data3": False}

    # The pipeline parameter (the article's "pipeline_arg") reruns only the step that reads it.
    second = run_job(
        _definitions(port), instance, job="pipeline",
        run_config={"resources": {"pipeline": {"config": {"pipeline_arg": 3}}}},
    )
    assert reused(second) == {"output_data1": True, "output_data2": True, "out_data3": False}
    assert {len(words) for words in _comparison(second)["keywords"].values()} == {3}

    # New data uploaded (overwrite=True) reruns both readers of the DataReference, and compare.
    data = json.loads((port / "data" / "posts.json").read_text())
    data["posts"] = data["posts"][:-6]
    (port / "data" / "posts.json").write_text(json.dumps(data))
    third = run_job(_definitions(port), instance, job="pipeline")
    assert reused(third) == {"output_data1": False, "output_data2": False, "out_data3": False}
    assert "input test_data changed" in materializations(third)["output_data1"]["runs_because"]

    # Nothing changed: everything is reused.
    fourth = run_job(_definitions(port), instance, job="pipeline")
    assert set(reused(fourth).values()) == {True}


def test_seed_pipeline_submitted_as_the_article_does(port, tmp_path, monkeypatch):
    """``Experiment(ws, 'Compare_Models_Exp').submit(pipeline1)`` and
    ``wait_for_completion()``: the script's own __main__, on the instance in DAGSTER_HOME."""
    with v1_script_main(port / "pipeline.py", tmp_path / "dagster_home", monkeypatch) as done:
        pass
    run = done["pipeline_run1"]
    assert run.get_status() == "Finished" and run.experiment_name == "Compare_Models_Exp"
    assert {s.name for s in run.get_steps()} == {"extract", "train", "compare"}
    compare = run.find_step_run("compare")[0]
    assert compare.get_metrics()["best_accuracy"] >= 0.8
