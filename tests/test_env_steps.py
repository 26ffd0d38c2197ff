"""Per-step Python environments, end to end: steps with conflicting pins run side by side, a pin
change reruns only its step (and says why), a reused step builds nothing, a failed build fails
its step before the script starts, env_vars reach the script."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from aml_assets import (
    DatasetRegistry,
    Environment,
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineValidationError,
    PythonScriptStep,
    SynapseSparkStep,
)
from aml_assets.reuse.fingerprint import explain_difference
from aml_assets.reuse.ledger import StepLedger
from tests.support.runs import materializations, run_job, step_failure_messages

# Writes what the script sees: the six it imported, its interpreter's prefix, GREETING.
WHICH_SIX = """
import argparse, json, os, sys
from pathlib import Path
p = argparse.ArgumentParser(); p.add_argument("--out"); p.add_argument("--started", default="")
a = p.parse_args()
if a.started:
    Path(a.started).write_text("started")
import six
seen = {"six": six.__version__, "prefix": sys.prefix, "greeting": os.environ.get("GREETING")}
print(f"six {six.__version__} from {six.__file__}")
(Path(a.out) / "seen.json").write_text(json.dumps(seen))
"""


def _write_code(root: Path) -> Path:
    code = root / "env_code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "which_six.py").write_text(WHICH_SIX)
    return code


def _step(root: Path, name: str, env: Environment | None, started: str = "") -> PythonScriptStep:
    return PythonScriptStep(
        name=name,
        script="which_six.py",
        source_directory=_write_code(root),
        arguments=["--out", OutputDataset(f"{name}_seen", format="files"), "--started", started],
        environment=env,
    )


def _defs(pipeline: Pipeline):
    return pipeline.to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=2)}
    )


def _two_sixes(root: Path, new_pin: str = "six==1.17.0"):
    return _defs(
        Pipeline(
            "sixes",
            steps=[
                _step(root, "old", Environment(pip=("six==1.16.0",))),
                _step(root, "new", Environment(pip=(new_pin,), env_vars={"GREETING": "hello"})),
            ],
        )
    )


def _seen(datastore, result, step: str) -> dict:
    out = datastore.local_path(result.output_for_node(step, f"{step}_seen").path)
    return json.loads((out / "seen.json").read_text())


def test_conflicting_pins_run_side_by_side_each_with_its_own_version(tmp_path, instance, datastore):
    result = run_job(_two_sixes(tmp_path), instance, job="sixes")
    assert result.success, step_failure_messages(result)
    old, new = _seen(datastore, result, "old"), _seen(datastore, result, "new")
    assert old["six"] == "1.16.0" and new["six"] == "1.17.0"
    # Each ran in an environment of its own, not the pipeline's interpreter.
    assert old["prefix"] != new["prefix"] and sys.prefix not in (old["prefix"], new["prefix"])
    # env_vars reach the script of the environment that declares them, only that one.
    assert new["greeting"] == "hello" and old["greeting"] is None
    # The resolved environment is in the fingerprint's components, package by package.
    [record] = [r for r in [StepLedger(datastore, "new").latest_record()] if r]
    assert record.components["environment"]["packages"]["six"] == "1.17.0"
    assert record.components["environment"]["env_vars"] == {"GREETING": "hello"}


def test_changing_a_pin_reruns_only_its_step_and_says_why(tmp_path, instance, datastore):
    assert run_job(_two_sixes(tmp_path), instance, job="sixes").success
    second = run_job(_two_sixes(tmp_path, new_pin="six==1.16.0"), instance, job="sixes")
    assert second.success, step_failure_messages(second)
    mats = materializations(second)
    assert mats["old_seen"]["reused"] is True
    assert mats["new_seen"]["reused"] is False
    assert mats["new_seen"]["runs_because"] == "environment changed: six 1.17.0 -> 1.16.0"
    assert _seen(datastore, second, "new")["six"] == "1.16.0"
    # What `aml-assets explain new` prints: only the environment changed.
    _, _, reasons = StepLedger(datastore, "new").explain()
    assert reasons == ["environment changed: six 1.17.0 -> 1.16.0"]


def test_a_reused_step_does_not_build_its_environment(tmp_path, instance, datastore, monkeypatch):
    # Environments of this test's own (deleting shared ones could disturb another run's).
    monkeypatch.setenv("AML_ENV_DIR", str(tmp_path / "envs"))
    first = run_job(_two_sixes(tmp_path), instance, job="sixes")
    assert first.success
    prefixes = [Path(_seen(datastore, first, s)["prefix"]) for s in ("old", "new")]
    for prefix in prefixes:
        assert prefix.is_dir()
        shutil.rmtree(prefix)
    second = run_job(_two_sixes(tmp_path), instance, job="sixes")
    assert second.success
    assert all(v["reused"] for v in materializations(second).values() if "reused" in v)
    assert not any(p.exists() for p in prefixes), "a reused step built its environment"


def test_a_failed_build_fails_the_step_before_its_script_and_publishes_nothing(tmp_path, instance, datastore):
    started = tmp_path / "started"
    pipeline = Pipeline(
        "broken", steps=[_step(tmp_path, "bad", Environment(pip=("six==999.0.0",)), str(started))]
    )
    result = run_job(_defs(pipeline), instance, job="broken")
    assert not result.success
    [message] = step_failure_messages(result)
    assert "'bad'" in message and "six" in message
    assert not started.exists(), "the script started although its environment failed"
    steps = datastore.local_path("steps")
    assert not steps.exists() or list(steps.rglob("commits/*.json")) == []
    assert not datastore.local_path("_tmp").exists() or list(datastore.local_path("_tmp").iterdir()) == []


def test_a_failed_install_fails_the_step_before_its_script_and_records_it(tmp_path, instance, datastore, monkeypatch):
    # Resolved fine, but the install fails (a broken wheel, a full disk): the step's build,
    # which happens only once the step is to run, fails it before the script starts.
    from aml_assets.compute import environments

    def broken(resolved, *, step=None, log=None, root=None):
        raise environments.EnvironmentBuildError(
            f"Step '{step}': cannot install its environment: uv could not install package "
            "'six==1.16.0'.", step=step, package="six==1.16.0", resolver_message="disk full",
        )

    monkeypatch.setattr(environments, "ensure_built", broken)
    started = tmp_path / "started"
    pipeline = Pipeline(
        "broken", steps=[_step(tmp_path, "bad", Environment(pip=("six==1.16.0",)), str(started))]
    )
    result = run_job(_defs(pipeline), instance, job="broken")
    assert not result.success
    [message] = step_failure_messages(result)
    assert "Step 'bad': cannot install its environment" in message and "six==1.16.0" in message
    assert not started.exists()
    record = StepLedger(datastore, "bad").latest_record()
    assert record.status == "failed" and "EnvironmentBuildError" in record.error
    assert list(datastore.local_path("steps").rglob("commits/*.json")) == []


def test_the_pipeline_environment_applies_to_steps_that_declare_none(tmp_path, instance, datastore):
    own = _step(tmp_path, "own", Environment(pip=("six==1.16.0",)))
    default = _step(tmp_path, "default", None)
    pipeline = Pipeline("defaulted", steps=[own, default], environment=Environment(pip=("six==1.17.0",)))
    assert default.environment is None  # the user's step is left as it was
    result = run_job(_defs(pipeline), instance, job="defaulted")
    assert result.success, step_failure_messages(result)
    assert _seen(datastore, result, "own")["six"] == "1.16.0"
    assert _seen(datastore, result, "default")["six"] == "1.17.0"


def test_environment_problems_are_reported_before_anything_runs(tmp_path):
    steps = [
        _step(tmp_path, "a", Environment(pip=("six",), requirements_file=tmp_path / "missing.txt")),
        _step(tmp_path, "b", Environment(pip=("six",), python="3.x1")),
        _step(tmp_path, "c", Environment(pip=("six",), env_vars={"PYTHONPATH": "/x", "AML_RUN_CONTEXT": "y"})),
    ]
    with pytest.raises(PipelineValidationError) as err:
        _defs(Pipeline("invalid", steps=steps))
    text = str(err.value)
    assert "step 'a': requirements file" in text and "missing.txt" in text and "does not exist" in text
    assert "step 'b': environment python '3.x1' is not a Python version" in text
    assert "environment variable 'PYTHONPATH' is one aml-assets sets" in text
    assert "environment variable 'AML_RUN_CONTEXT' is one aml-assets sets" in text


def test_environment_changes_are_explained_by_package():
    def components(packages, python="3.11.9", lock="k1", env_vars=None):
        env = {"python": python, "lock": lock, "packages": packages, "env_vars": env_vars or {}}
        return {"format": 3, "step": "train", "environment": env}

    old = components({"scikit-learn": "1.5.2", "six": "1.16.0"})
    assert explain_difference(old, components({"scikit-learn": "1.6.0", "six": "1.16.0"}, lock="k2")) == [
        "environment changed: scikit-learn 1.5.2 -> 1.6.0"
    ]
    assert explain_difference(
        old, components({"scikit-learn": "1.5.2", "joblib": "1.4.2"}, lock="k2")
    ) == ["environment changed: added joblib 1.4.2", "environment changed: removed six 1.16.0"]
    assert explain_difference(old, components(old["environment"]["packages"], python="3.12.4", lock="k2")) == [
        "environment changed: python 3.11.9 -> 3.12.4"
    ]
    assert explain_difference(old, components(old["environment"]["packages"], env_vars={"A": "1"})) == [
        "environment changed: added env var A '1'"
    ]
    # Into an isolated environment from the pipeline's interpreter: said once, not per package.
    legacy = {"format": 3, "step": "train", "environment": {"python": "3.11.9", "package six": "1.17.0"}}
    assert explain_difference(legacy, old) == ["environment changed: now runs in its own environment (lock k1)"]
    # The legacy declaration (installed versions) reads the same way.
    newer = {"format": 3, "step": "train", "environment": {"python": "3.11.9", "package six": "1.18.0"}}
    assert explain_difference(legacy, newer) == ["environment changed: six 1.17.0 -> 1.18.0"]


# --- Spark steps: the script runs in the Dagster process, its executors in the environment ----

SPARK_SCRIPT = """
import argparse, json, sys
from pathlib import Path
from pyspark.sql import SparkSession
p = argparse.ArgumentParser(); p.add_argument("--out"); a = p.parse_args()
spark = SparkSession.builder.getOrCreate()
def where(_):
    import sys, six
    return sys.executable + " " + six.__version__
[worker] = spark.sparkContext.parallelize([0], 1).map(where).collect()
(Path(a.out) / "seen.json").write_text(json.dumps({"driver": sys.executable, "worker": worker}))
"""


def _spark_defs(root: Path, spark_pool, pin: str):
    code = root / "spark_code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "where.py").write_text(SPARK_SCRIPT)
    step = SynapseSparkStep(
        name="where",
        script="where.py",
        source_directory=code,
        arguments=["--out", OutputDataset("where_seen", format="files")],
        environment=Environment(pip=(pin,)),
    )
    return Pipeline("spark_env", steps=[step]).to_definitions(
        {"workspace": LocalDatastore(), "spark01": spark_pool}
    )


@pytest.mark.spark
def test_spark_step_executors_run_the_environment_interpreter(tmp_path, spark_pool, instance, datastore):
    from importlib.metadata import version

    result = run_job(_spark_defs(tmp_path, spark_pool, f"six=={version('six')}"), instance, job="spark_env")
    assert result.success, step_failure_messages(result)
    out = datastore.local_path(result.output_for_node("where", "where_seen").path)
    seen = json.loads((out / "seen.json").read_text())
    assert seen["driver"] == sys.executable
    worker_python, six_version = seen["worker"].split()
    assert Path(worker_python).parent.parent != Path(sys.prefix) and six_version == version("six")


def test_spark_step_refuses_an_environment_its_driver_cannot_match(tmp_path, spark_pool, instance, datastore):
    result = run_job(_spark_defs(tmp_path, spark_pool, "six==1.16.0"), instance, job="spark_env")
    assert not result.success
    [message] = step_failure_messages(result)
    assert "Spark step 'where' runs its script in the Dagster process" in message
    assert "six 1.16.0 in the environment" in message
    assert DatasetRegistry(datastore).versions("where_seen") == []
