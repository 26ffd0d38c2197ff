"""The seed "Synapse sample" (the v1 article "How to use Apache Spark (powered by Azure Synapse
Analytics) in your machine learning pipeline" and its sample notebook's ``dataprep.py`` /
``train.py``), ported with only its imports changed (``examples/v1_port/synapse``): a tabular
and a file dataset over one file (``as_hdfs``), an ``HDFSOutputDatasetConfig`` copied to
``test`` and registered on completion, a v1 ``Environment`` asking for ``azureml-core``, the
pool named ``link1-spark01``, and a training step reading the output ``as_download()`` from
``os.environ["step2_input"]``.

Runs a private copy of the example from its folder, as the sample's notebook runs."""

from __future__ import annotations

import io
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from aml_assets import DatasetRegistry, LocalDatastore, SparkPool
from aml_assets.cli import main as cli
from tests.support.runs import materializations, reused, run_job, step_failure_messages
from tests.support.v1_port import v1_script_main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "v1_port" / "synapse"
_WAS = re.compile(r"#\s*was:\s*(.+)$")


@pytest.fixture
def port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the ported sample, as the working folder, importable."""
    folder = tmp_path / "synapse"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in ("pipeline", "definitions"):  # the sample's modules, not another project's
        module = sys.modules.get(name)
        if module is not None and str(getattr(module, "__file__", "")).startswith(str(folder)):
            del sys.modules[name]


def _definitions(folder: Path, spark_pool: SparkPool):
    """The sample's Definitions (its v1 code run afresh), on the test session's Spark pool."""
    sys.modules.pop("pipeline", None)
    namespace = runpy.run_path(str(folder / "definitions.py"))
    return namespace["pipeline"].to_definitions({**namespace["RESOURCES"], "link1_spark01": spark_pool})


def _unported(text: str) -> str:
    """A ported file with each import put back as its ``# was:`` comment says."""
    lines = []
    for line in text.splitlines():
        was = _WAS.search(line)
        lines.append(was.group(1).split(" (")[0].strip() if was else line)
    return "\n".join(lines)


def test_the_port_changes_only_imports():
    for path in [EXAMPLE / "pipeline.py", EXAMPLE / "code" / "dataprep.py", EXAMPLE / "code" / "train.py"]:
        text = path.read_text()
        code_only = text.split('"""', 2)[2] if text.startswith('"""') else text
        for line in code_only.splitlines():
            code = line.split("#")[0].strip()
            if code.startswith(("import ", "from ")):
                assert not re.match(r"(from|import) azureml", code), f"{path.name}: {line}"
                if "aml_assets" in code:
                    assert _WAS.search(line), f"{path.name}: import without its original: {line}"
        assert "azureml" in _unported(text) or path.name == "train.py"
    pipeline = _unported((EXAMPLE / "pipeline.py").read_text())
    # The article's statements, verbatim (spot checks of each block).
    for statement in [
        "from azureml.core import Dataset",
        "titanic_tabular_dataset = Dataset.Tabular.from_delimited_files(path=[(datastore, file_name)])",
        'step1_input2 = titanic_file_dataset.as_named_input("file_input").as_hdfs()',
        'step1_output = HDFSOutputDatasetConfig(destination=(datastore,"test")).register_on_complete(name="registered_dataset")',
        'env.python.conda_dependencies.add_pip_package("azureml-core>=1.20.0")',
        "compute_target = 'link1-spark01',",
        "environment = env)",
        'step2_input = step1_output.as_input("step2_input").as_download()',
        "arguments=[step2_input],",
        "pipeline_run = pipeline.submit('synapse-pipeline', regenerate_outputs=True)",
    ]:
        assert statement in pipeline, statement
    dataprep = _unported((EXAMPLE / "code" / "dataprep.py").read_text())
    assert "import azureml.core\n" in dataprep and "from azureml.core import Run, Dataset" in dataprep
    assert "dataset = Dataset.get_by_id(run_context.experiment.workspace,id=args.tabular_input)" in dataprep
    assert 'mypath = os.environ["step2_input"]' in (EXAMPLE / "code" / "train.py").read_text()


def test_seed_synapse_sample_runs_end_to_end(port, instance, isolated_env, spark_pool):
    # The article's prerequisite: Titanic.csv on the datastore (the notebook uploads it).
    assert cli(["datasets", "upload", "Titanic.csv"], out=io.StringIO()) == 0
    defs = _definitions(port, spark_pool)
    step_1, step_2 = sys.modules["pipeline"].step_1, sys.modules["pipeline"].step_2
    # 'link1-spark01' names the link1_spark01 pool; train.py runs on cpucluster, reading the
    # Spark step's output as a download; the v1 environment asks for nothing to install.
    assert (step_1.compute_target, step_2.compute_target) == ("link1_spark01", "cpucluster")
    assert [(i.name, i.dataset.name, i.mode.value) for i in step_2.all_inputs()] == [
        ("step2_input", "registered_dataset", "download")
    ]
    assert step_1.environment.python.conda_dependencies.pip_packages == ["azureml-core>=1.20.0"]
    assert step_1.environment.pip == () and not step_1.environment.isolated

    first = run_job(defs, instance, job="pipeline")
    assert first.success, step_failure_messages(first)
    found = materializations(first)
    # Both v1 datasets read the one file: one asset, its 891 passengers.
    assert found["Titanic"]["dagster/row_count"] == 891
    # The Spark step appended the file input, with its header, as one CSV file under "test".
    written = sorted(p.name for p in (isolated_env / "test").iterdir() if not p.name.startswith(("_", ".")))
    assert len(written) == 1 and written[0].endswith(".csv"), written
    rows = next((isolated_env / "test").glob("*.csv")).read_text().splitlines()
    assert rows[0].startswith("PassengerId,Survived,Pclass,Name") and len(rows) == 892
    # register_on_complete: the output is dataset 'registered_dataset', version 1.
    assert DatasetRegistry(LocalDatastore()).get("registered_dataset").version == 1
    # train.py printed each downloaded file it found in os.environ["step2_input"]: the CSV
    # (no Spark checksum files), kept as the step's std_log.txt in its 'train_logs' output.
    # (A binary checksum file would have failed its text read.)
    log = (Path(found["train_logs"]["uri"]) / "std_log.txt").read_text()
    assert "PassengerId,Survived,Pclass,Name" in log and "Braund, Mr. Owen Harris" in log
    assert reused(first) == {"registered_dataset": False, "train_logs": False}

    # Again: the Spark step is reused; the training step (allow_reuse=False) runs again.
    second = run_job(_definitions(port, spark_pool), instance, job="pipeline")
    assert second.success, step_failure_messages(second)
    assert reused(second) == {"registered_dataset": True, "train_logs": False}
    assert DatasetRegistry(LocalDatastore()).get("registered_dataset").version == 1


def test_the_v1_surface_the_sample_uses(tmp_path):
    """What the port needed from compat, each with its edge cases."""
    import aml_assets.compat as azureml
    from aml_assets import Environment as Ours
    from aml_assets.compat import NoCounterpartError
    from aml_assets.compat.core import Dataset
    from aml_assets.compat.core.compute import ComputeTarget
    from aml_assets.compat.core.conda_dependencies import CondaDependencies
    from aml_assets.compat.core.environment import Environment
    from aml_assets.compat.pipeline.core import Pipeline
    from aml_assets.compat.pipeline.steps import PythonScriptStep
    from amlrun import Run

    assert azureml.core.VERSION and azureml.core.Run is Run  # `import azureml.core`, ported
    # v1's environment sections: azureml-* packages are amlrun's, others make it isolated.
    env = Environment(name="myenv")
    assert isinstance(env, Ours) and env.python == "" and not env.isolated
    env.python.conda_dependencies.add_pip_package("azureml-core>=1.20.0")
    env.python.conda_dependencies.add_pip_package("azureml_defaults")
    assert env.pip == () and not env.isolated
    env.python.conda_dependencies.add_pip_package("pandas>=2")
    assert env.pip == ("pandas>=2",) and env.isolated
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=["azureml-sdk"])
    assert env.pip == () and env.python.conda_dependencies.pip_packages == ["azureml-sdk"]
    env.environment_variables["MODE"] = "fast"
    assert env.env_vars == (("MODE", "fast"),)
    assert Environment(name="py", python="3.11").python == "3.11"
    with pytest.raises(NoCounterpartError, match="add_pip_package with the package's PyPI name"):
        env.python.conda_dependencies.add_conda_package("scikit-learn=0.24")
    # A dashed v1 compute name is its resource key with underscores; attaching has no counterpart.
    (tmp_path / "t.py").write_text("print('hi')\n")
    step = PythonScriptStep("t.py", compute_target=ComputeTarget(None, "gpu-cluster-1"), source_directory=tmp_path)
    assert step.compute_target == "gpu_cluster_1"
    with pytest.raises(NoCounterpartError, match="configure it as a resource"):
        ComputeTarget.attach(None, "link1-spark01", None)
    with pytest.raises(ImportError, match="nothing to link"):
        from aml_assets.compat.core import LinkedService  # noqa: F401
    # A step declaring no output gets '<step>_logs' (its printed output); one with outputs not.
    Pipeline(steps=[step])
    assert [o.name for o in step.all_outputs()] == ["t_logs"]
    # Dataset.get_by_id: the input whose argument is the id; offline, the file at that path.
    csv = tmp_path / "a.csv"
    csv.write_text("x\n1\n")
    assert Dataset.get_by_id(None, id=str(csv)).to_pandas_dataframe()["x"].tolist() == [1]
    with pytest.raises(KeyError, match="No input dataset has id 'nope'; this step's inputs: none"):
        Dataset.get_by_id(None, id="nope")


def test_seed_synapse_sample_submitted_as_the_article_does(port, isolated_env, tmp_path, monkeypatch):
    """``pipeline.submit('synapse-pipeline', regenerate_outputs=True)``: the script's own
    __main__, on the instance in DAGSTER_HOME (through ``workspace.yaml`` -> ``definitions.py``)."""
    assert cli(["datasets", "upload", "Titanic.csv"], out=io.StringIO()) == 0
    with v1_script_main(port / "pipeline.py", tmp_path / "dagster_home", monkeypatch) as done:
        run = done["pipeline_run"]
        run.wait_for_completion(show_output=False)
    assert run.get_status() == "Finished" and run.experiment_name == "synapse-pipeline"
    assert {s.name for s in run.get_steps()} == {"synapse_spark", "train"}
    assert DatasetRegistry(LocalDatastore()).get("registered_dataset").version == 1
