"""Typed parameter bounds and choices: defaults checked at validation, run values before any step.

How Dagster 1.13 surfaces each kind of bad value (what these tests pin down):

- wrong type (``1e26`` or ``"1e26"`` for an int) and a str outside its ``choices`` (a Literal,
  i.e. a config Enum): refused at launch by Dagster's config validation; no run is created.
- out of bounds (``ge``/``le`` are dropped when Dagster converts the pydantic model to a config
  schema) and ``null``: refused when the run builds its settings resource, before any step
  starts; the run is recorded as failed, no script runs and nothing is published.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInvalidConfigError, DagsterRunStatus

from aml_assets import (
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineParameter,
    PipelineValidationError,
    PythonScriptStep,
)
from aml_assets.pipeline.parameters import ParameterValueError

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESOURCES = {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()}

# A project file: one script step taking three bounded/choice parameters. The script records that
# it ran, so a test can tell that it did not.
PROJECT = textwrap.dedent(
    '''
    import os
    from pathlib import Path

    from aml_assets import (LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline,
                            PipelineParameter, PythonScriptStep)

    HERE = Path(__file__).resolve().parent
    SCRIPT = """
    import argparse, pathlib
    p = argparse.ArgumentParser()
    for a in ("--out", "--n", "--rate", "--solver", "--ran"):
        p.add_argument(a)
    a = p.parse_args()
    pathlib.Path(a.ran).write_text("ran")
    (pathlib.Path(a.out) / "fit.txt").write_text(f"{a.n} {a.rate} {a.solver}")
    """
    (HERE / "code").mkdir(exist_ok=True)
    (HERE / "code" / "fit.py").write_text(SCRIPT)

    pipeline = Pipeline("params", [PythonScriptStep("fit", "fit.py", HERE / "code", arguments=[
        "--out", OutputDataset("fitted"),
        "--n", PipelineParameter("n_estimators", 200, "Trees.", min=1, max=5000),
        "--rate", PipelineParameter("rate", 0.1, min=0.0, max=1.0),
        "--solver", PipelineParameter("solver", "lbfgs", choices=("lbfgs", "saga")),
        "--ran", str(HERE / "ran.txt"),
    ])])
    defs = pipeline.to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()},
        parallel=os.environ.get("PARALLEL") == "1",
    )
    '''
)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    (d / "a.py").write_text("print('hi')\n")
    return d


def problems(*params: PipelineParameter, code: Path) -> list[str]:
    """Validation problems of a one-step pipeline taking ``params``."""
    step = PythonScriptStep("a", "a.py", code, arguments=[OutputDataset("out"), *params])
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("p", [step]).validate(RESOURCES)
    return info.value.problems


# --- declarations, checked when the pipeline is validated --------------------------------------
def test_valid_bounds_and_choices_pass(code):
    step = PythonScriptStep("a", "a.py", code, arguments=[
        OutputDataset("out"),
        PipelineParameter("n_estimators", 200, min=1, max=5000),
        PipelineParameter("rate", 0.1, min=0, max=1),  # int bounds on a float parameter
        PipelineParameter("floor", 5, min=0),  # one bound only
        PipelineParameter("solver", "lbfgs", choices=["lbfgs", "saga"]),  # a list is fine
        PipelineParameter("depth", 4, choices=(2, 4, 8)),
        PipelineParameter("alpha", 1.0, choices=(0.5, 1)),
    ])
    Pipeline("ok", [step]).validate(RESOURCES)


def test_each_bad_declaration_is_one_clear_problem(code):
    assert problems(
        PipelineParameter("n_estimators", 0, min=1, max=5000),
        PipelineParameter("depth", 5, min=10, max=1),
        PipelineParameter("solver", "lbfgs", choices=("lbfgs", 2)),
        PipelineParameter("name", "x", min=1),
        PipelineParameter("flag", True, max=1),
        PipelineParameter("opt", "adam", choices=("lbfgs", "saga")),
        PipelineParameter("k", 2.5, type=int),
        PipelineParameter("both", 3, min=1, choices=(3,)),
        PipelineParameter("empty", "a", choices=()),
        PipelineParameter("bad_bound", 1, min="0"),
        code=code,
    ) == [
        "parameter 'n_estimators' has default 0, which is not allowed: it must be an integer "
        "from 1 to 5000; change the default or the bounds",
        "parameter 'depth' has min 10 greater than max 1; min must be <= max (swap them?)",
        "parameter 'solver' is a str parameter but its choices 2 are not a string; give choices "
        "of type str",
        "parameter 'name' is a str parameter: min/max apply only to int and float parameters; "
        "use choices=(...) to restrict a str parameter",
        "parameter 'flag' is a bool parameter: min/max apply only to int and float parameters",
        "parameter 'opt' has default 'adam', which is not allowed: it must be one of 'lbfgs', "
        "'saga'; change the default or the choices",
        "parameter 'k' has default 2.5, which is a float, not an integer: write it without a "
        "decimal point or exponent",
        "parameter 'both' declares both choices and min/max; give one or the other",
        "parameter 'empty' has no choices; list at least one value, or drop choices=",
        "parameter 'bad_bound': min must be a number, not '0'",
    ]


def test_one_name_two_declarations(code):
    a = PipelineParameter("n", 5, min=1, max=10)
    b = PipelineParameter("n", 5, min=1, max=100)
    assert problems(a, b, code=code) == [
        "two different parameters are named 'n' (<parameter n=5 min=1 max=10> and "
        "<parameter n=5 min=1 max=100>); share one PipelineParameter"
    ]


def test_private_and_reserved_names_refused(code):
    assert problems(
        PipelineParameter("_hidden", 1), PipelineParameter("declared_parameters", 1), code=code
    ) == [
        "parameter name '_hidden' is not allowed; use another name",
        "parameter name 'declared_parameters' is not allowed; use another name",
    ]


# --- the settings resource ---------------------------------------------------------------------
def _settings_class(*params: PipelineParameter, code: Path) -> type:
    step = PythonScriptStep("a", "a.py", code, arguments=[OutputDataset("out"), *params])
    return type(Pipeline("p", [step]).settings_resource())


def test_settings_refuse_bad_values_with_the_fix(code):
    Settings = _settings_class(
        PipelineParameter("n_estimators", 200, min=1, max=5000),
        PipelineParameter("rate", 0.1, min=0.0, max=1.0),
        PipelineParameter("depth", 4, choices=(2, 4, 8)),
        code=code,
    )
    with pytest.raises(ParameterValueError) as info:
        Settings(n_estimators=10**26)
    assert str(info.value) == (
        "Pipeline parameter 'n_estimators' = 100000000000000000000000000 is out of range "
        "(allowed: an integer from 1 to 5000). Set resources.pipeline.config.n_estimators in the "
        "run config (the launchpad, or `dagster job execute -c run.yaml`) to an allowed value, or "
        "leave it out to use the default 200."
    )
    # 1e26 for an int is refused, never truncated to a (huge) int.
    with pytest.raises(ParameterValueError, match=r"'n_estimators' = 1e\+26 is a float, not an integer"):
        Settings(n_estimators=1e26)
    with pytest.raises(ParameterValueError, match="'n_estimators' = 5.0 is a float"):
        Settings(n_estimators=5.0)
    with pytest.raises(ParameterValueError, match="'n_estimators' = True is a bool"):
        Settings(n_estimators=True)
    with pytest.raises(ParameterValueError, match=r"'n_estimators' has no value \(null\)"):
        Settings(n_estimators=None)
    with pytest.raises(ParameterValueError, match=r"'rate' = nan is not a number \(allowed: a number from 0.0 to 1.0\)"):
        Settings(rate=float("nan"))
    with pytest.raises(ParameterValueError, match=r"'depth' = 3 is not one of the choices \(allowed: one of 2, 4, 8\)"):
        Settings(depth=3)
    # Every bad value at once.
    with pytest.raises(ParameterValueError) as info:
        Settings(n_estimators=0, rate=2.0)
    assert str(info.value).startswith("2 pipeline parameters are invalid:\n  - Pipeline parameter 'n_estimators' = 0")
    # Good values, including an int for a float parameter, and the bounds themselves.
    ok = Settings(n_estimators=5000, rate=1, depth=8)
    assert (ok.n_estimators, ok.rate, ok.depth) == (5000, 1.0, 8)
    assert Settings().n_estimators == 200


def test_schema_describes_what_is_allowed(code):
    Settings = _settings_class(
        PipelineParameter("n_estimators", 200, "Trees in the forest.", min=1, max=5000),
        PipelineParameter("solver", "lbfgs", choices=("lbfgs", "saga")),
        code=code,
    )
    fields = Settings.model_fields
    assert fields["n_estimators"].description == (
        "Trees in the forest. Allowed: an integer from 1 to 5000; default 200."
    )
    assert str(fields["solver"].annotation) == "typing.Literal['lbfgs', 'saga']"


# --- real runs ---------------------------------------------------------------------------------
def _load_project(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params_defs.py"
    path.write_text(PROJECT)
    spec = importlib.util.spec_from_file_location(f"params_defs_{abs(hash(root))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs.resolve_job_def("params")


def _config(**values) -> dict:
    return {"resources": {"pipeline": {"config": values}}}


def _published(datastore_root: Path) -> list[Path]:
    return [p for p in datastore_root.rglob("fit.txt")] if datastore_root.exists() else []


def test_out_of_bounds_run_fails_before_the_script(tmp_path, instance, isolated_env):
    job = _load_project(tmp_path / "project")
    result = job.execute_in_process(
        run_config=_config(n_estimators=10**26), instance=instance, raise_on_error=False
    )
    assert not result.success
    types = {e.event_type for e in result.all_events}
    assert DagsterEventType.STEP_START not in types
    assert DagsterEventType.ASSET_MATERIALIZATION not in types
    assert not (tmp_path / "project" / "ran.txt").exists()
    assert _published(isolated_env) == []
    # The run exists (Dagster checks bounds only when it builds the run's resources), failed.
    (run,) = instance.get_runs()
    assert run.status == DagsterRunStatus.FAILURE
    errors = [
        r.dagster_event.event_specific_data.error
        for r in instance.all_logs(run.run_id)
        if r.dagster_event and r.dagster_event.event_type == DagsterEventType.RUN_FAILURE
    ]
    messages = []
    for err in errors:
        while err is not None:
            messages.append(err.message)
            err = err.cause
    assert any(
        "Pipeline parameter 'n_estimators' = 100000000000000000000000000 is out of range "
        "(allowed: an integer from 1 to 5000)" in m for m in messages
    ), messages

    # Raising mode surfaces the same error as the cause.
    with pytest.raises(Exception) as info:
        job.execute_in_process(run_config=_config(rate=1.5), instance=instance)
    assert isinstance(info.value.__cause__, ParameterValueError)
    assert "'rate' = 1.5 is out of range (allowed: a number from 0.0 to 1.0)" in str(info.value.__cause__)
    assert not (tmp_path / "project" / "ran.txt").exists()


@pytest.mark.parametrize(
    "values, expected",
    [
        # An int given as a float (or as YAML's string "1e26") is refused by Dagster's config
        # type, so 1e26 trees never reach pydantic's lax float -> int conversion.
        ({"n_estimators": 1e26}, 'Value "1e+26" of type "<class \'float\'>" is not valid for expected type "Int"'),
        ({"n_estimators": "1e26"}, 'Value "1e26" of type "<class \'str\'>" is not valid for expected type "Int"'),
        ({"solver": "adam"}, "not in enum type Literal['lbfgs', 'saga'] got adam"),
    ],
)
def test_wrong_type_or_choice_is_refused_at_launch(tmp_path, instance, isolated_env, values, expected):
    job = _load_project(tmp_path / "project")
    with pytest.raises(DagsterInvalidConfigError) as info:
        job.execute_in_process(run_config=_config(**values), instance=instance)
    assert expected in str(info.value)
    assert f"root:resources:pipeline:config:{next(iter(values))}" in str(info.value)
    assert instance.get_runs() == []
    assert not (tmp_path / "project" / "ran.txt").exists()
    assert _published(isolated_env) == []


def test_allowed_values_reach_the_script(tmp_path, instance, isolated_env):
    job = _load_project(tmp_path / "project")
    result = job.execute_in_process(
        run_config=_config(n_estimators=5, rate=1, solver="saga"), instance=instance
    )
    assert result.success
    (out,) = _published(isolated_env)
    assert out.read_text() == "5 1.0 saga"


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["0", "1"])
def test_dagster_cli_refuses_out_of_bounds(tmp_path, parallel):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params_defs.py").write_text(PROJECT)
    env = {**os.environ, "PARALLEL": parallel}
    if parallel == "1":  # the multiprocess executor needs a persistent instance
        env["DAGSTER_HOME"] = str(tmp_path / "home")
        (tmp_path / "home").mkdir()

    def execute(yaml_text: str) -> subprocess.CompletedProcess:
        (project / "run.yaml").write_text(yaml_text)
        return subprocess.run(
            [BIN / "dagster", "job", "execute", "-f", "params_defs.py", "-j", "params", "-c", "run.yaml"],
            cwd=project, env=env, capture_output=True, text=True, timeout=300,
        )

    out = execute("resources:\n  pipeline:\n    config:\n      n_estimators: 100000000000000000000000000\n")
    assert out.returncode != 0
    assert (
        "ParameterValueError: Pipeline parameter 'n_estimators' = 100000000000000000000000000 is "
        "out of range (allowed: an integer from 1 to 5000). Set resources.pipeline.config.n_estimators"
    ) in out.stdout + out.stderr
    assert not (project / "ran.txt").exists()

    if parallel == "0":
        out = execute("resources:\n  pipeline:\n    config:\n      n_estimators: 1.0e+26\n")
        assert out.returncode != 0
        assert 'Value "1e+26" of type "<class \'float\'>" is not valid for expected type "Int"' in (
            out.stdout + out.stderr
        )
        assert not (project / "ran.txt").exists()
