"""DataPath parameters: a path on a datastore chosen per run, read by a step like a dataset.

Pinned down here: the step's fingerprint sees the content, not the location (same content
elsewhere is reused, changed content reruns and the script sees the new data); a bad datastore
or path in a run is refused before any step; requests are checked before anything starts
(``check_assignments``); declarations round-trip through records.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterRunStatus

from aml_assets import (
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineParameter,
    PipelineValidationError,
    PythonScriptStep,
    TabularDataset,
)
from aml_assets.pipeline.datapath import DataPath, DataPathComputeBinding, DataPathParameter
from aml_assets.pipeline.parameters import check_assignments, parameter_from_record
from tests.support.runs import materializations, run_job, step_failure_messages

# Reads its input (a file, or every file of a folder), copies the text and records the path.
READ = textwrap.dedent(
    """
    import argparse, json, pathlib
    p = argparse.ArgumentParser()
    p.add_argument("--raw")
    p.add_argument("--out")
    a = p.parse_args()
    src = pathlib.Path(a.raw)
    files = sorted(f for f in src.rglob("*") if f.is_file()) if src.is_dir() else [src]
    out = pathlib.Path(a.out)
    (out / "copy.txt").write_text("".join(f.read_text() for f in files))
    (out / "seen.json").write_text(json.dumps({"path": str(src), "files": [f.name for f in files]}))
    """
)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    (d / "read.py").write_text(READ)
    return d


@pytest.fixture
def other(tmp_path: Path) -> LocalDatastore:
    """A second datastore a run may point the parameter at."""
    return LocalDatastore(name="other", root=str(tmp_path / "other"))


def _resources(other: LocalDatastore) -> dict:
    return {"workspace": LocalDatastore(), "other": other, "cpucluster": LocalProcessCluster()}


def _pipeline(code: Path, raw: DataPathParameter, bind=None) -> Pipeline:
    arg = bind if bind is not None else raw
    step = PythonScriptStep(
        "read", "read.py", code, arguments=["--raw", arg, "--out", OutputDataset("copied")],
        inputs=[arg] if bind is not None else [],
    )
    return Pipeline("datapaths", [step])


def _config(**values) -> dict:
    return {"resources": {"pipeline": {"config": values}}}


def _where(datastore: str, path: str) -> dict:
    return {"datastore": datastore, "path_on_datastore": path}


def _copied(result, datastore: LocalDatastore) -> tuple[str, dict]:
    out = datastore.local_path(result.output_for_node("read", "copied").path)
    return (out / "copy.txt").read_text(), json.loads((out / "seen.json").read_text())


# --- real runs -----------------------------------------------------------------------------------
def test_content_decides_reuse_not_the_path(code, other, instance, datastore):
    datastore.write_bytes("incoming/a.csv", b"x\n1\n")
    datastore.write_bytes("incoming/b.csv", b"x\n2\n")
    other.write_bytes("copy/a.csv", b"x\n1\n")
    raw = DataPathParameter("raw", DataPath("workspace", "incoming/a.csv"), "Raw rows.", format="csv")
    defs = _pipeline(code, raw).to_definitions(_resources(other))

    first = run_job(defs, instance, job="datapaths")
    assert first.success, step_failure_messages(first)
    mats = materializations(first)
    assert mats["copied"]["reused"] is False
    assert mats["raw"]["datapath"] == "workspace:incoming/a.csv"
    assert mats["raw"]["dagster/row_count"] == 1
    text, seen = _copied(first, datastore)
    assert text == "x\n1\n"
    assert seen["path"] == str(datastore.local_path("incoming/a.csv"))  # mounted: read in place

    # Another path with other content: the step reruns and its script reads the new data.
    second = run_job(defs, instance, job="datapaths", run_config=_config(raw=_where("workspace", "incoming/b.csv")))
    assert second.success, step_failure_messages(second)
    mats = materializations(second)
    assert mats["copied"]["reused"] is False
    assert "raw" in mats["copied"]["runs_because"]
    assert _copied(second, datastore)[0] == "x\n2\n"

    # The first content again, on another datastore: reused from the first run.
    third = run_job(defs, instance, job="datapaths", run_config=_config(raw=_where("other", "copy/a.csv")))
    assert third.success, step_failure_messages(third)
    mats = materializations(third)
    assert mats["raw"]["datapath"] == "other:copy/a.csv"
    assert mats["copied"]["reused"] is True
    assert mats["copied"]["reused_from_run"] == first.run_id

    # Only the folder changed (a partial value keeps the default datastore): reused too.
    datastore.write_bytes("archive/2024/a.csv", b"x\n1\n")
    fourth = run_job(defs, instance, job="datapaths", run_config=_config(raw={"path_on_datastore": "archive/2024/a.csv"}))
    assert fourth.success, step_failure_messages(fourth)
    assert materializations(fourth)["copied"]["reused_from_run"] == first.run_id

    # A file's own name is part of its content (as for every source dataset: a script receives
    # it under that name), so the same bytes under another name run the step.
    datastore.write_bytes("incoming/c.csv", b"x\n1\n")
    fifth = run_job(defs, instance, job="datapaths", run_config=_config(raw=_where("workspace", "incoming/c.csv")))
    assert fifth.success, step_failure_messages(fifth)
    assert materializations(fifth)["copied"]["reused"] is False


def test_a_subset_run_rechecks_a_source_on_another_datastore_there(code, other, instance, datastore):
    """A run of only the step reads the parameter's last materialized reference: it is checked on
    the datastore the data is on (not the workspace one), reused when unchanged, refused when
    the file changed since."""
    from dagster import AssetKey

    other.write_bytes("copy/a.csv", b"x\n1\n")
    raw = DataPathParameter("raw", DataPath("other", "copy/a.csv"), format="csv")
    defs = _pipeline(code, raw).to_definitions(_resources(other))
    first = run_job(defs, instance, job="datapaths")
    assert first.success, step_failure_messages(first)
    job = defs.resolve_job_def("datapaths")

    subset = job.execute_in_process(instance=instance, asset_selection=[AssetKey("copied")], raise_on_error=False)
    assert subset.success, step_failure_messages(subset)
    assert materializations(subset)["copied"]["reused"] is True

    other.write_bytes("copy/a.csv", b"x\n2\n")
    stale = job.execute_in_process(instance=instance, asset_selection=[AssetKey("copied")], raise_on_error=False)
    assert not stale.success
    assert any("changed since it was last materialized" in m for m in step_failure_messages(stale)), (
        step_failure_messages(stale))


def test_folder_datapath_with_azure_binding(code, other, instance, datastore):
    datastore.write_bytes("batches/2024/a.txt", b"alpha\n")
    datastore.write_bytes("batches/2024/sub/b.txt", b"beta\n")
    raw = DataPathParameter("raw", DataPath("workspace", "batches/2024"))
    pipeline = _pipeline(code, raw, bind=(raw, DataPathComputeBinding(mode="download")))
    (binding,) = pipeline.steps[0].all_inputs()  # the same input in arguments and inputs=
    assert (binding.dataset, binding.mode.value) == (raw, "download")
    defs = pipeline.to_definitions(_resources(other))

    first = run_job(defs, instance, job="datapaths")
    assert first.success, step_failure_messages(first)
    text, seen = _copied(first, datastore)
    assert (text, seen["files"]) == ("alpha\nbeta\n", ["a.txt", "b.txt"])
    assert not seen["path"].startswith(str(datastore.root_dir()))  # a private downloaded copy
    assert materializations(first)["raw"]["file_count"] == 2

    # A new file in a subfolder is new content: the step reruns and sees it.
    datastore.write_bytes("batches/2024/sub/c.txt", b"gamma\n")
    second = run_job(defs, instance, job="datapaths")
    assert second.success, step_failure_messages(second)
    assert materializations(second)["copied"]["reused"] is False
    assert _copied(second, datastore)[0] == "alpha\nbeta\ngamma\n"


def _failure_messages(instance, run_id: str) -> list[str]:
    messages = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event and event.event_type in (DagsterEventType.RUN_FAILURE, DagsterEventType.STEP_FAILURE):
            err = event.event_specific_data.error
            while err is not None:
                messages.append(err.message)
                err = err.cause
    return messages


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            _where("nope", "incoming/a.csv"),
            "DataPath parameter 'raw' = nope:incoming/a.csv names datastore 'nope', which is not "
            "configured (configured: 'other', 'workspace'). Set resources.pipeline.config.raw to",
        ),
        (
            _where("workspace", "../../etc/passwd"),
            "DataPath parameter 'raw' = workspace:../../etc/passwd is not a valid path: give a path "
            "relative to the datastore root",
        ),
    ],
)
def test_bad_run_value_fails_before_any_step(code, other, instance, datastore, value, expected):
    datastore.write_bytes("incoming/a.csv", b"x\n1\n")
    raw = DataPathParameter("raw", DataPath("workspace", "incoming/a.csv"), format="csv")
    defs = _pipeline(code, raw).to_definitions(_resources(other))
    result = run_job(defs, instance, job="datapaths", run_config=_config(raw=value))
    assert not result.success
    types = {e.event_type for e in result.all_events}
    assert DagsterEventType.STEP_START not in types
    assert DagsterEventType.ASSET_MATERIALIZATION not in types
    (run,) = instance.get_runs()
    assert run.status == DagsterRunStatus.FAILURE
    assert any(expected in m for m in _failure_messages(instance, run.run_id)), _failure_messages(instance, run.run_id)
    assert not datastore.local_path("steps").exists() or not list(datastore.local_path("steps").rglob("copy.txt"))


def test_missing_data_fails_in_the_parameter_asset_with_the_fix(code, other, instance, datastore):
    raw = DataPathParameter("raw", DataPath("workspace", "incoming/a.csv"), format="csv")
    defs = _pipeline(code, raw).to_definitions(_resources(other))
    result = run_job(defs, instance, job="datapaths", run_config=_config(raw=_where("other", "gone.csv")))
    assert not result.success
    [message] = step_failure_messages(result)
    assert "Dataset 'raw': no data at 'gone.csv' on datastore 'other'" in message
    assert "set resources.pipeline.config.raw to a path that exists (default workspace:incoming/a.csv)" in message
    started = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START}
    assert started == {"raw"}  # the reading step never started


# --- declarations ----------------------------------------------------------------------------------
def test_declarations_are_validated(code, other):
    clash = PipelineParameter("n", 1)
    step = PythonScriptStep("read", "read.py", code, arguments=[
        "--a", DataPathParameter("a", DataPath("nope", "x.csv")),
        "--b", DataPathParameter("b", DataPath("workspace", "/abs/x.csv")),
        "--n", clash, DataPathParameter("n", DataPath("workspace", "n.csv")),
        "--t", TabularDataset.from_delimited_files("t", "t.csv").as_mount(),
        DataPathParameter("c", DataPath("workspace", "c.csv")),
        DataPathParameter("_x", DataPath("workspace", "x.csv"), format="json"),
        OutputDataset("out"),
    ])
    # One input name per step, so the clashes come from a second step.
    second = PythonScriptStep("read2", "read.py", code, arguments=[
        DataPathParameter("t", DataPath("workspace", "t.csv")),
        DataPathParameter("c", DataPath("workspace", "c2.csv")),
        OutputDataset("out2"),
    ])
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("p", [step, second]).validate(_resources(other))
    assert info.value.problems == [
        "DataPath parameter 'a': default nope:x.csv names datastore 'nope', which is not configured "
        "(configured: 'other', 'workspace'); change default_value=",
        "DataPath parameter 'b': default workspace:/abs/x.csv is not a valid path: give a path "
        "relative to the datastore root, without '..', a leading '/' or a scheme (e.g. "
        "'incoming/titanic.csv'); change default_value=",
        "a value parameter and a DataPath parameter are both named 'n'; rename one of them",
        "parameter name '_x' is not allowed; use another name",
        "DataPath parameter '_x' has format 'json'; use one of csv, parquet, files",
        "DataPath parameter 't' has the same name as a dataset; its asset is named after it, so "
        "rename one of them",
        "two different DataPath parameters are named 'c' (<DataPath parameter c=workspace:c.csv "
        "(files)> and <DataPath parameter c=workspace:c2.csv (files)>); share one DataPathParameter",
    ]
    # Without resources, the datastore is not checked (it is not known yet).
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("p", [step, second]).validate()
    assert not any("'nope'" in p for p in info.value.problems)


def test_parameters_and_settings_schema(code, other):
    raw = DataPathParameter("raw", DataPath("workspace", "incoming/a.csv"), "Raw rows.", format="csv")
    n = PipelineParameter("n", 3)
    step = PythonScriptStep("read", "read.py", code, arguments=["--raw", raw.as_direct(), "--n", n, OutputDataset("o")])
    pipeline = Pipeline("p", [step])
    assert pipeline.parameters() == [n, raw]
    settings = pipeline.settings_resource(_resources(other))
    assert settings.datapath("raw") == DataPath("workspace", "incoming/a.csv")
    field = type(settings).model_fields["raw"]
    assert field.description == "Raw rows. A path on a datastore (csv); default workspace:incoming/a.csv."
    assert type(settings)(raw={"datastore": "other", "path_on_datastore": "b/"}).datapath("raw") == DataPath("other", "b")


# --- requests ----------------------------------------------------------------------------------------
PARAMS = [
    PipelineParameter("n_estimators", 200, min=1, max=5000),
    PipelineParameter("rate", 0.1, min=0.0, max=1.0),
    PipelineParameter("solver", "lbfgs", choices=("lbfgs", "saga")),
    DataPathParameter("raw", DataPath("workspace", "incoming/a.csv"), format="csv"),
]
DATASTORES = ["other", "workspace"]


@pytest.mark.parametrize(
    "values, datapaths, config",
    [
        ({"n_estimators": 5, "rate": 1}, None, {"n_estimators": 5, "rate": 1.0}),
        ({}, {"raw": {"DataStoreName": "other", "RelativePath": "x/a.csv"}}, {"raw": _where("other", "x/a.csv")}),
        ({"raw": {"datastore": "other", "path_on_datastore": "a.csv"}}, None, {"raw": _where("other", "a.csv")}),
        ({"raw": DataPath("other", "a.csv")}, None, {"raw": _where("other", "a.csv")}),
        ({"raw": "other:in/a.csv"}, None, {"raw": _where("other", "in/a.csv")}),
        ({"raw": "other:in//./a.csv"}, None, {"raw": _where("other", "in/a.csv")}),  # normalized
        ({"raw": "in/b.csv"}, None, {"raw": _where("workspace", "in/b.csv")}),
        ({"raw": {"RelativePath": "c.csv"}}, None, {"raw": _where("workspace", "c.csv")}),
    ],
)
def test_check_assignments_accepts(values, datapaths, config):
    assert check_assignments(PARAMS, values, datapaths, DATASTORES) == (config, [])


@pytest.mark.parametrize(
    "values, datapaths, problem",
    [
        ({"n_estimator": 5}, None,
         "The pipeline has no parameter 'n_estimator'; its parameters are 'n_estimators', 'rate', "
         "'raw', 'solver'. Did you mean 'n_estimators'?"),
        ({"n_estimators": 2.0}, None,
         "Pipeline parameter 'n_estimators' = 2.0 is a float, not an integer: write it without a "
         "decimal point or exponent (allowed: an integer from 1 to 5000)."),
        ({"n_estimators": "5"}, None,
         "Pipeline parameter 'n_estimators' = '5' is a str, but the parameter is an integer "
         "(allowed: an integer from 1 to 5000)."),
        ({"rate": 2}, None, "Pipeline parameter 'rate' = 2 is out of range (allowed: a number from 0.0 to 1.0)."),
        ({"solver": "adam"}, None,
         "Pipeline parameter 'solver' = 'adam' is not one of the choices (allowed: one of 'lbfgs', 'saga')."),
        ({"n_estimators": None}, None,
         "Pipeline parameter 'n_estimators' has no value (null) (allowed: an integer from 1 to 5000)."),
        ({"raw": "nope:a.csv"}, None,
         "DataPath parameter 'raw' = nope:a.csv names datastore 'nope', which is not configured "
         "(configured: 'other', 'workspace'); give 'datastore:path/on/it', a relative path (on the "
         "parameter's default datastore), {\"DataStoreName\": ..., \"RelativePath\": ...} or "
         "{\"datastore\": ..., \"path_on_datastore\": ...}."),
        ({}, {"raw": {"DataStoreName": "workspace", "RelativePath": "../up.csv"}},
         "DataPath parameter 'raw' = workspace:../up.csv is not a valid path"),
        ({"raw": 5}, None, "DataPath parameter 'raw' = 5 is an int, not a path on a datastore; give"),
        ({}, {"raw": {"Store": "workspace", "Path": "a.csv"}},
         "DataPath parameter 'raw' = {'Store': 'workspace', 'Path': 'a.csv'} has unknown key(s) "
         "'Store', 'Path'; give"),
        ({"n_estimators": {"DataStoreName": "workspace", "RelativePath": "a.csv"}}, None,
         "Pipeline parameter 'n_estimators' is a value parameter, not a DataPath: give it an integer "
         "from 1 to 5000 in ParameterAssignments, not a datastore path."),
        ({}, {"rate": {"DataStoreName": "workspace", "RelativePath": "a.csv"}},
         "Pipeline parameter 'rate' is a value parameter, not a DataPath: give it in "
         "ParameterAssignments (a number from 0.0 to 1.0), not in DataPathAssignments."),
        ({"raw": "a.csv"}, {"raw": "b.csv"},
         "Parameter 'raw' is given in both ParameterAssignments and DataPathAssignments; give it once."),
        ([1, 2], None, "ParameterAssignments must be an object mapping parameter names to values, not list."),
    ],
)
def test_check_assignments_refuses(values, datapaths, problem):
    config, problems = check_assignments(PARAMS, values, datapaths, DATASTORES)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_check_assignments_lists_every_problem_and_knows_no_datastores():
    _, problems = check_assignments(PARAMS, {"n_estimators": 0, "zzz": 1, "raw": "nope:a.csv"})
    assert problems == [
        "Pipeline parameter 'n_estimators' = 0 is out of range (allowed: an integer from 1 to 5000).",
        "The pipeline has no parameter 'zzz'; its parameters are 'n_estimators', 'rate', 'raw', 'solver'.",
    ]  # without datastores=, any datastore name is accepted here (the run checks it)
    assert check_assignments([], {"x": 1})[1] == ["The pipeline has no parameter 'x'; it has no parameters."]


def test_records_round_trip():
    params = [
        *PARAMS,
        PipelineParameter("alpha", 1, "Alpha.", type=float),
        PipelineParameter("flag", True),
        DataPathParameter(
            "table", DataPath("other", "t/"), "A table.", "csv", separator=";", header=False,
            encoding="latin-1", column_types={"a": "int64"}, options={"quote": "'"},
        ),
    ]
    for p in params:
        record = p.to_record()
        again = parameter_from_record(json.loads(json.dumps(record)))
        assert type(again) is type(p)
        assert again.to_record() == record
        assert again.same_declaration(p)
    assert PARAMS[3].to_record()["kind"] == "datapath"
    assert PARAMS[0].to_record() == {
        "kind": "value", "name": "n_estimators", "default_value": 200, "description": None,
        "type": "int", "min": 1, "max": 5000, "choices": None,
    }
    from aml_assets.pipeline.parameters import ParameterRecordError

    with pytest.raises(ParameterRecordError, match="has kind 'table'"):
        parameter_from_record({"kind": "table", "name": "x"})


# --- the CLI: aml-assets run --param -----------------------------------------------------------------
PROJECT = textwrap.dedent(
    """
    from pathlib import Path
    from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep
    from aml_assets.pipeline.datapath import DataPath, DataPathParameter

    raw = DataPathParameter("raw", DataPath("workspace", "incoming/a.csv"), format="csv")
    step = PythonScriptStep("read", "read.py", Path(__file__).parent / "code",
                            arguments=["--raw", raw, "--out", OutputDataset("copied")])
    defs = Pipeline("datapaths", [step]).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()}
    )
    """
)


def test_cli_param_sets_a_datapath(tmp_path, code, datastore, monkeypatch):
    from aml_assets.service.runs import RunRequest, RunRequestError, execute

    (tmp_path / "defs.py").write_text(PROJECT)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    datastore.write_bytes("incoming/b.csv", b"x\n2\n")

    def run(*params: str) -> tuple[int, str]:
        out = io.StringIO()
        request = RunRequest(definitions="defs.py", parameters=RunRequest.parse_parameters(list(params)), cwd=str(tmp_path))
        return execute(request, out), out.getvalue()

    code_, summary = run("raw=workspace:incoming/b.csv")
    assert code_ == 0, summary
    (copy,) = datastore.local_path("steps").rglob("copy.txt")
    assert copy.read_text() == "x\n2\n"
    assert run("raw=incoming/b.csv")[0] == 0  # a bare path: on the default datastore
    assert "reused outputs" in run("raw=incoming/b.csv")[1]

    with pytest.raises(RunRequestError, match="names datastore 'nope', which is not configured .configured: 'workspace'."):
        run("raw=nope:b.csv")
    with pytest.raises(RunRequestError, match="no parameter 'rw'; its parameters are 'raw'. Did you mean 'raw'"):
        run("rw=incoming/b.csv")
