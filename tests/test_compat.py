"""The Azure ML SDK v1 shim (issue 11): v1 code that changes only its imports builds and runs
our pipelines; v1 names without a counterpart say what to use instead."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset
from aml_assets import PythonScriptStep as OurScriptStep
from aml_assets.compat import NoCounterpartError, NoCounterpartImportError
from aml_assets.pipeline.publish import PublishError
from tests.support.runs import materializations, run_job

RESOURCES = {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=2)}

PREP = """
import os, sys
from pathlib import Path
from azure_run import Run
run = Run.get_context()
df = run.input_datasets["raw_data"].to_pandas_dataframe()
df = df[df["value"] >= int(os.environ["AML_PARAMETER_min_value"])]
df.to_csv(Path(sys.argv[3]) / "prepped.csv", index=False)
run.log("kept", len(df))
"""

TRAIN = """
import sys
from pathlib import Path
import pandas as pd
from azure_run import Run
df = pd.read_csv(Path(sys.argv[2]) / "prepped.csv")
Path(sys.argv[4], "model.txt").write_text(str(df["value"].mean()))
Run.get_context().log("mean", float(df["value"].mean()))
"""

REPORT = """
import sys
from pathlib import Path
Path(sys.argv[1], "report.txt").write_text("done")
"""


def _v1_project(root: Path) -> Path:
    code = root / "src"
    code.mkdir()
    # v1 scripts do `from azureml.core import Run`; ported, only that import changes.
    for name, text in {"prep.py": PREP, "train.py": TRAIN, "report.py": REPORT}.items():
        (code / name).write_text(text.replace("from azure_run import Run", "from aml_assets.compat.core import Run"))
    (root / "raw.csv").write_text("id,value\n" + "".join(f"{i},{i * 3}\n" for i in range(10)))
    return code


def _v1_pipeline(root: Path):
    """A v1 pipeline as v1 code writes it, with aml_assets.compat imports."""
    from aml_assets.compat.core import ComputeTarget, Dataset, Datastore, Workspace
    from aml_assets.compat.core.runconfig import RunConfiguration
    from aml_assets.compat.pipeline.core import Pipeline, PipelineParameter, StepSequence
    from aml_assets.compat.pipeline.steps import PythonScriptStep

    code = _v1_project(root)
    ws = Workspace.from_config(root)
    datastore = Datastore.get(ws, "workspace")
    compute = ComputeTarget(workspace=ws, name="cpucluster")
    raw = Dataset.Tabular.from_delimited_files(path=[(datastore, "raw/raw.csv")], seed=root / "raw.csv")
    prepped = OutputDataset("prepped", format="csv")  # v1: PipelineData("prepped", datastore)
    model = OutputDataset("model")
    runconfig = RunConfiguration()
    prep = PythonScriptStep(
        script_name="prep.py",
        arguments=["--input", raw.as_named_input("raw_data"), prepped],
        params={"min_value": PipelineParameter(name="min_value", default_value=6)},
        compute_target=compute,
        runconfig=runconfig,
        source_directory=code,
        allow_reuse=True,
    )
    train = PythonScriptStep(
        name="train_step",
        script_name="train.py",
        arguments=["--prepped", prepped.as_input("prepped_in"), "--model", model],
        compute_target=compute,
        version="1",
    )
    report = PythonScriptStep(script_name="report.py", arguments=[OutputDataset("report_out")], compute_target="cpucluster")
    sequence = StepSequence(steps=[prep, train, report])
    return Pipeline(workspace=ws, steps=sequence, default_source_directory=code, name="v1_port"), (prep, train, report)


def test_a_v1_pipeline_runs_with_only_its_imports_changed(tmp_path, instance):
    pipeline, (prep, train, report) = _v1_pipeline(tmp_path)
    assert isinstance(prep, OurScriptStep) and prep.name == "prep" and report.name == "report"
    assert pipeline.continue_on_step_failure is False, "v1's default"
    assert report.ordered_after == [train] and train.ordered_after == [prep]
    assert pipeline.validate(RESOURCES) == []  # v1 returns the list of problems
    result = run_job(pipeline.to_definitions(RESOURCES), instance, job="v1_port")
    assert result.success
    meta = materializations(result)
    assert meta["prepped"]["kept"] == 8 and meta["prepped"]["dagster/row_count"] == 8
    assert Path(meta["model"]["uri"], "model.txt").read_text() == str(sum(range(6, 30, 3)) / 8)
    assert meta["raw"]["dagster/row_count"] == 10  # the dataset is named after its path


def test_resolve_closure_adds_the_steps_a_listed_step_runs_after(tmp_path):
    from aml_assets.compat.pipeline.core import Pipeline

    _, (prep, train, report) = _v1_pipeline(tmp_path)
    assert [s.name for s in Pipeline(None, [report], name="p").steps] == ["prep", "train_step", "report"]
    assert [s.name for s in Pipeline(None, [report], resolve_closure=False, name="p").steps] == ["report"]


def test_v1_validate_returns_problems_and_publish_refuses_them(tmp_path):
    from aml_assets.compat.pipeline.core import Pipeline
    from aml_assets.compat.pipeline.steps import PythonScriptStep

    code = _v1_project(tmp_path)
    lost = PythonScriptStep(script_name="missing.py", arguments=[OutputDataset("o")], source_directory=code)
    homeless = PythonScriptStep(script_name="prep.py", arguments=[OutputDataset("p")])
    pipeline = Pipeline(None, [lost, homeless], name="broken")
    problems = pipeline.validate(RESOURCES)
    assert len(problems) == 2 and "script 'missing.py' not found" in problems[0]
    assert "no source_directory and pipeline 'broken' no default_source_directory" in problems[1]
    with pytest.raises(PublishError, match="Cannot publish pipeline 'broken' as 'b'") as info:
        pipeline.publish("b", resources=RESOURCES)
    assert info.value.problems == problems
    from aml_assets import PipelineValidationError

    with pytest.raises(PipelineValidationError):
        pipeline.to_definitions(RESOURCES)


def test_v1_arguments_map_to_ours(tmp_path):
    from aml_assets.compat.core import ComputeTarget, Environment, RunConfiguration
    from aml_assets.compat.pipeline.core import Pipeline
    from aml_assets.compat.pipeline.steps import PythonScriptStep, SynapseSparkStep

    code = _v1_project(tmp_path)
    (tmp_path / "requirements.txt").write_text("pandas\n")
    runconfig = RunConfiguration()
    runconfig.environment = Environment.from_pip_requirements("env", tmp_path / "requirements.txt")
    for target, key in [(None, "cpucluster"), ("big", "big"), (ComputeTarget(None, "gpu"), "gpu"), (("t", "AmlCompute"), "t")]:
        step = PythonScriptStep("prep.py", compute_target=target, source_directory=code, runconfig=runconfig)
        assert step.compute_target == key
        assert step.environment.requirements_file == (tmp_path / "requirements.txt").resolve()
    with pytest.raises(TypeError, match="compute_target 3 names no resource"):
        PythonScriptStep("prep.py", compute_target=3)
    with pytest.raises(NoCounterpartError, match="pass the PipelineParameter in arguments= or params="):
        PythonScriptStep("prep.py", runconfig_pipeline_params={"x": 1})
    bad_env = RunConfiguration()
    bad_env.environment = object()
    with pytest.raises(TypeError, match="build it with aml_assets.compat.core.Environment"):
        PythonScriptStep("prep.py", runconfig=bad_env)
    spark = SynapseSparkStep(
        file="prep.py", source_directory=code, compute_target=ComputeTarget(None, "spark01"),
        driver_memory="1g", driver_cores=1, executor_memory="1g", executor_cores=1, num_executors=1,
        app_name="ignored", conf={"spark.sql.ansi.enabled": "true"}, version="3",
    )
    assert isinstance(spark, SynapseSparkStep) and not isinstance(spark, PythonScriptStep)
    assert spark.name == "prep" and spark.version == "3" and spark.spark_conf() == {"spark.sql.ansi.enabled": "true"}
    with pytest.raises(NoCounterpartError, match="set spark.jars / spark.files in the SparkPool's conf"):
        SynapseSparkStep("prep.py", code, "spark01", "1g", 1, "1g", 1, 1, jars=["x.jar"])
    # What the shim built is ours: the pipeline's defaults copy it like any step.
    homeless = PythonScriptStep("prep.py", arguments=[OutputDataset("o")])
    copied = Pipeline(None, [homeless], default_source_directory=code, name="p").steps[0]
    assert copied.source_directory == code.resolve() and dataclasses.is_dataclass(copied)


def test_v1_datasets_datastores_and_workspace(tmp_path, instance):
    from aml_assets.compat.core import Dataset, Datastore, Experiment, Workspace
    from aml_assets.compat.data.datapath import DataPath

    ws = Workspace.from_config(tmp_path)
    assert ws.workspace_file == (tmp_path / "workspace.yaml").resolve()
    assert Workspace.from_config(tmp_path / "other.yaml").workspace_file.name == "other.yaml"
    store = Datastore.get(ws, "blobs")
    assert str(store) == "blobs" and ws.get_default_datastore().name == "workspace"
    tab = Dataset.Tabular.from_delimited_files((store, "/in/2024-sales.v2.csv"), separator=";", encoding="utf8")
    assert (tab.name, tab.datastore, tab.path, tab.separator, tab.encoding) == (
        "ds_2024_sales", "blobs", "in/2024-sales.v2.csv", ";", "utf-8"
    )
    assert Dataset.Tabular.from_delimited_files([(store, "a.csv")], name="given").name == "given"
    assert Dataset.Tabular.from_parquet_files((store, "9lives/")).name == "ds_9lives"
    assert Dataset.File.from_files(DataPath("workspace", "docs")).format == "files"
    with pytest.raises(NoCounterpartError, match="one dataset per path"):
        Dataset.Tabular.from_delimited_files([(store, "a.csv"), (store, "b.csv")])
    with pytest.raises(TypeError, match="is not \\(datastore, 'path/on/datastore'\\)"):
        Dataset.File.from_files("local/file.txt")
    experiment = Experiment(ws, "exp", instance=instance)
    assert experiment.name == "exp" and experiment.workspace == ws.workspace_file


@pytest.mark.parametrize(
    ("module", "name", "instead"),
    [
        ("aml_assets.compat.pipeline.steps", "AdlaStep", "rewrite the U-SQL as Spark SQL in a SynapseSparkStep"),
        ("aml_assets.compat.pipeline.steps", "DatabricksStep", "a SparkPool with remote="),
        ("aml_assets.compat.pipeline.steps", "HyperDriveStep", "one PythonScriptStep per configuration"),
        ("aml_assets.compat.pipeline.core", "PortDataReference", "StepRun.get_output_data(name)"),
        ("aml_assets.compat.data", "OutputTabularDatasetConfig", "read_delimited_files()"),
        ("aml_assets.compat.core.authentication", "InteractiveLoginAuthentication", "nothing to sign in to"),
        ("aml_assets.compat.core", "ScriptRunConfig", "a one-step Pipeline"),
        ("aml_assets.compat.core.compute", "DatabricksCompute", "remote='sc://"),
    ],
)
def test_v1_names_without_counterpart_fail_at_import_saying_what_to_use(module, name, instead):
    v1 = module.replace("aml_assets.compat", "azureml")
    with pytest.raises(NoCounterpartImportError, match=f"^{v1}.{name} has no counterpart") as info:
        exec(f"from {module} import {name}", {})
    assert instead in str(info.value)
    assert isinstance(info.value, ImportError)  # `except ImportError:` fallbacks still work
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        _ = importlib.import_module(module).NoSuchThing


def test_v1_calls_without_counterpart_fail_at_use_saying_what_to_use(tmp_path):
    from aml_assets.compat.core import ComputeTarget, Datastore, Environment, Workspace
    from aml_assets.compat.core.compute import AmlCompute

    ws = Workspace.from_config(tmp_path)
    cases = [
        (lambda: ComputeTarget.create(ws, "cpu", None), "LocalProcessCluster(max_concurrent_steps"),
        (lambda: AmlCompute.provisioning_configuration(vm_size="STANDARD_D2"), "SparkPool(master="),
        (lambda: Workspace(auth=object()), "nothing to sign in to"),
        (lambda: Workspace.from_config(tmp_path, auth=object()), "nothing to sign in to"),
        (lambda: Workspace.get("ws"), "Workspace.from_config(path)"),
        (lambda: Environment.from_conda_specification("e", "conda.yml"), "from_pip_requirements"),
        (lambda: Datastore.register_azure_blob_container(ws, "blobs", "container"), "AzureBlobDatastore(container="),
    ]
    for call, instead in cases:
        with pytest.raises(NoCounterpartError, match="has no counterpart in aml-assets. Instead: ") as info:
            call()
        assert instead in str(info.value)
    assert ComputeTarget(ws, "cpucluster").wait_for_completion(show_output=True) is None


def test_a_script_importing_run_from_compat_loads_nothing_else():
    """v1 scripts import Run from azureml.core; ported, they must still run in an isolated
    environment, where only amlrun and aml-assets' own files are importable."""
    import subprocess
    import sys

    code = (
        "import sys; from aml_assets.compat.core import Run; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('dagster', 'pydantic', 'pandas', 'pyarrow') or m.startswith('aml_assets.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['aml_assets.compat', 'aml_assets.compat._support', 'aml_assets.compat.core', 'aml_assets.errors']"
