"""The reference pipeline end to end, in-process on a temporary instance and datastore."""

from __future__ import annotations

import pickle

import pytest

from aml_assets import DatasetRegistry
from tests.support.runs import log_messages, materializations, run_job

pytestmark = [pytest.mark.spark, pytest.mark.slow]

FEATURES = ["Pclass", "Sex", "Age", "SibSp", "Parch", "Fare", "Embarked"]


@pytest.fixture
def instance(reference_instance):
    """The reference pipeline after one complete run (the session's shared cold run, copied)."""
    return reference_instance


def test_first_run_registers_clean_data_and_trains_a_good_model(reference_baseline, instance, datastore):
    _, result = reference_baseline
    assert result.success

    mats = materializations(result)
    assert set(mats) == {"titanic", "titanic_prepared", "titanic_model"}
    prepared = mats["titanic_prepared"]
    assert prepared["dagster/row_count"] == 891
    assert prepared["dataset_version"] == 1
    assert prepared["reused"] is False
    assert len(prepared["fingerprint"]) == 64
    columns = {c.name: c.type for c in prepared["dagster/column_schema"].columns}
    assert columns["Age"] == "double" and columns["Sex"] == "int32"
    assert "Name" not in columns and "Cabin" not in columns
    assert mats["titanic"]["dagster/row_count"] == 891

    model = mats["titanic_model"]
    assert model["accuracy"] >= 0.75
    assert model["reused"] is False

    # The registered dataset is really there, complete and clean.
    df = DatasetRegistry(datastore).get("titanic_prepared").to_pandas_dataframe()
    assert len(df) == 891
    assert df[FEATURES].isna().sum().sum() == 0
    assert set(df["Embarked"]) <= {0, 1, 2} and set(df["Sex"]) == {0, 1}

    # The same version, as a notebook or a step script would load it: registry on the workspace
    # datastore the environment selects, as a Spark DataFrame and as files.
    latest = DatasetRegistry().get("titanic_prepared")
    assert latest.version == 1 and latest.lineage["step"] == "dataprep"
    assert latest.lineage["inputs"]["titanic"]["content_hash"] == mats["titanic"]["content_hash"]
    assert latest.to_spark_dataframe().count() == 891
    assert any(p.suffix == ".parquet" for p in latest.local_path().iterdir())

    # The model is a real, loadable classifier.
    model_dir = datastore.local_path(result.output_for_node("train", "titanic_model").path)
    clf = pickle.loads((model_dir / "model.pkl").read_bytes())
    assert clf.predict(df[FEATURES].head(5)).shape == (5,)

    # Asset checks ran and passed.
    checks = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks == {"expected_columns": True, "not_null": True, "row_count": True}

    # Script output is visible: the training script's own stdout reaches the step's captured logs
    # and its metric reached Dagster.
    messages = log_messages(instance, result.run_id)
    assert any("Step 'train' runs because no previous run" in m for m in messages)


def test_pipeline_parameter_set_from_run_config(reference_baseline, instance):
    defs, first = reference_baseline
    assert first.success
    second = run_job(defs, instance, run_config={"resources": {"pipeline": {"config": {"n_estimators": 10}}}})
    assert second.success
    mats = materializations(second)
    assert mats["titanic_prepared"]["reused"] is True
    assert mats["titanic_model"]["reused"] is False
    assert "parameter n_estimators changed (200 -> 10)" in mats["titanic_model"]["runs_because"]


def test_step_script_runs_offline_for_local_debugging(reference_baseline, project, datastore, tmp_path):
    """The same script runs with plain `python`, outside any pipeline, for debugging."""
    import subprocess
    import sys

    assert reference_baseline[1].success
    prepared = DatasetRegistry(datastore).get("titanic_prepared").local_path()
    out = subprocess.run(
        [sys.executable, str(project / "code" / "train.py"), "--prepared", str(prepared),
         "--model_dir", str(tmp_path / "model"), "--n_estimators", "20"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "[amlrun offline] metric accuracy = " in out.stdout
    assert (tmp_path / "model" / "model.pkl").is_file()
