"""Step reuse on the real reference pipeline: what reruns, what is reused, and why."""

from __future__ import annotations

import pytest

from aml_assets import DatasetRegistry
from aml_assets.reuse.ledger import StepLedger
from tests.support.runs import (
    log_messages,
    materializations,
    reused,
    run_job,
    touch_later,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture
def instance(reference_instance):
    """This module's tests start from the reference pipeline after one complete run."""
    return reference_instance


@pytest.fixture
def baseline(reference_baseline):
    return reference_baseline


def _spark_used(instance, run_id) -> bool:
    return any("SparkSession" in m for m in log_messages(instance, run_id))


def test_second_run_reuses_everything_without_starting_spark(baseline, instance):
    defs, first = baseline
    second = run_job(defs, instance)
    assert second.success
    assert reused(second) == {"titanic_prepared": True, "titanic_model": True}
    assert not _spark_used(instance, second.run_id)
    assert _spark_used(instance, first.run_id)
    a, b = materializations(first), materializations(second)
    for name in ("titanic_prepared", "titanic_model"):
        assert a[name]["content_hash"] == b[name]["content_hash"]
        assert b[name]["reused_from_run"] == first.run_id
    assert b["titanic_model"]["accuracy"] == a["titanic_model"]["accuracy"]
    # Same content: the registered dataset keeps version 1.
    assert b["titanic_prepared"]["dataset_version"] == 1
    assert b["titanic_prepared"]["dataset_version_created"] is False
    messages = log_messages(instance, second.run_id)
    assert any(f"Step 'train' reused outputs of run {first.run_id}" in m for m in messages)


def test_editing_train_script_reruns_only_train(baseline, project, instance):
    defs, _ = baseline
    with open(project / "code" / "train.py", "a") as fh:
        fh.write("\nTRAINING_CODE_REVISION = 2  # a change to the training code\n")
    second = run_job(defs, instance)
    assert second.success
    assert reused(second) == {"titanic_prepared": True, "titanic_model": False}
    assert "script code/train.py changed" in materializations(second)["titanic_model"]["runs_because"]


def test_editing_csv_contents_reruns_both_and_mints_a_dataset_version(baseline, instance, datastore):
    defs, _ = baseline
    csv = datastore.local_path("titanic/titanic.csv")
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace(",22,", ",23,")  # first passenger's age
    csv.write_text("\n".join(lines) + "\n")
    second = run_job(defs, instance)
    assert second.success
    assert reused(second) == {"titanic_prepared": False, "titanic_model": False}
    mats = materializations(second)
    assert mats["titanic_prepared"]["runs_because"] == "input titanic changed"
    assert mats["titanic_prepared"]["dataset_version"] == 2
    registry = DatasetRegistry(datastore)
    assert registry.versions("titanic_prepared") == [1, 2]
    assert len(registry.get("titanic_prepared", 1).to_pandas_dataframe()) == 891
    assert registry.get("titanic_prepared", 2).lineage["run_id"] == second.run_id


def test_touching_csv_reuses_both(baseline, instance, datastore):
    defs, _ = baseline
    touch_later(datastore.local_path("titanic/titanic.csv"))
    second = run_job(defs, instance)
    assert second.success
    assert reused(second) == {"titanic_prepared": True, "titanic_model": True}


def test_allow_reuse_false_always_reruns(project, spark_pool, instance):
    import definitions

    pipeline = definitions.build_pipeline(project)
    train = next(s for s in pipeline.steps if s.name == "train")
    train.allow_reuse = False
    from aml_assets import LocalDatastore

    defs = pipeline.to_definitions(
        {**definitions.compute_targets(), "spark01": spark_pool, "workspace": LocalDatastore()}
    )
    for _ in range(2):
        result = run_job(defs, instance)
        assert result.success
        assert reused(result)["titanic_model"] is False
        assert materializations(result)["titanic_model"]["runs_because"] == "allow_reuse=False"
    assert reused(result)["titanic_prepared"] is True


@pytest.mark.parametrize("how", ["run_config", "tag"])
def test_regenerate_switch_reruns_everything(baseline, instance, how):
    defs, _ = baseline
    if how == "run_config":
        second = run_job(defs, instance, run_config={"resources": {"pipeline": {"config": {"regenerate_outputs": True}}}})
    else:
        second = run_job(defs, instance, tags={"aml/regenerate_outputs": "true"})
    assert second.success
    assert reused(second) == {"titanic_prepared": False, "titanic_model": False}
    assert materializations(second)["titanic_model"]["runs_because"] == "regenerate_outputs was requested"


def test_upstream_rerun_with_identical_bytes_lets_downstream_reuse(baseline, project, instance):
    defs, first = baseline
    with open(project / "code" / "dataprep.py", "a") as fh:
        fh.write("\nUNUSED_SETTING = 1  # a code change: the data it writes is identical\n")
    second = run_job(defs, instance)
    assert second.success
    # dataprep's code changed so it reran (in a fresh JVM's session, writing Parquet footers
    # with their own noise), but its data is identical, so train is reused.
    assert reused(second) == {"titanic_prepared": False, "titanic_model": True}
    assert (
        materializations(second)["titanic_prepared"]["content_hash"]
        == materializations(first)["titanic_prepared"]["content_hash"]
    )


def test_deleted_output_is_recomputed(baseline, instance, datastore):
    defs, first = baseline
    published = datastore.local_path(first.output_for_node("train", "titanic_model").path)
    import shutil

    shutil.rmtree(published)
    second = run_job(defs, instance)
    assert second.success
    assert reused(second) == {"titanic_prepared": True, "titanic_model": False}
    assert "were deleted; recomputing" in materializations(second)["titanic_model"]["runs_because"]
    assert (datastore.local_path(second.output_for_node("train", "titanic_model").path) / "model.pkl").is_file()


def test_data_version_is_the_content_hash(baseline, instance):
    from dagster import AssetKey

    _, first = baseline
    record = instance.get_latest_materialization_event(AssetKey("titanic_prepared"))
    mat = record.asset_materialization
    assert mat.tags["dagster/data_version"] == mat.metadata["content_hash"].value


def test_ledger_records_every_decision(baseline, instance, datastore):
    defs, first = baseline
    second = run_job(defs, instance)
    records = StepLedger(datastore, "train").run_records()
    assert [r.run_id for r in records] == [first.run_id, second.run_id]
    assert [r.status for r in records] == ["ran", "reused"]
    assert records[0].reasons == ["no previous run"]


def _explain(datastore, step, **kw) -> list[str]:
    return StepLedger(datastore, step).explain(**kw)[2]


def test_explain_names_what_changed_in_each_case(baseline, project, instance, datastore):
    """The explain API and CLI name the changed component: code, input, parameter, or nothing."""
    import io

    from aml_assets.cli import main

    defs, first = baseline
    touch_later(datastore.local_path("titanic/titanic.csv"))
    touched = run_job(defs, instance)
    assert _explain(datastore, "dataprep") == [] and _explain(datastore, "train") == []

    with open(project / "code" / "train.py", "a") as fh:
        fh.write("\nEDITED = True\n")
    edited = run_job(defs, instance)
    assert _explain(datastore, "train") == ["script code/train.py changed"]

    param = run_job(defs, instance, run_config={"resources": {"pipeline": {"config": {"n_estimators": 50}}}})
    assert _explain(datastore, "train") == ["parameter n_estimators changed (200 -> 50)"]

    csv = datastore.local_path("titanic/titanic.csv")
    csv.write_text(csv.read_text().replace(",22,", ",24,", 1))
    data = run_job(defs, instance, run_config={"resources": {"pipeline": {"config": {"n_estimators": 50}}}})
    assert _explain(datastore, "dataprep") == ["input titanic changed"]
    assert _explain(datastore, "train") == ["input titanic_prepared changed"]
    assert all(r.success for r in (touched, edited, param, data))

    # Any two runs can be compared, by run id prefix.
    assert _explain(datastore, "train", run=edited.run_id[:8], against=first.run_id) == [
        "script code/train.py changed"
    ]

    out = io.StringIO()
    assert main(["--root", str(datastore.root_dir()), "explain", "train", "--run", param.run_id], out=out) == 0
    text = out.getvalue()
    assert f"run {param.run_id} ran because: parameter n_estimators changed (200 -> 50)" in text
    assert "  - parameter n_estimators changed (200 -> 50)" in text

    out = io.StringIO()
    main(["--root", str(datastore.root_dir()), "explain", "dataprep", "--run", touched.run_id], out=out)
    assert f"reused outputs of run {first.run_id}" in out.getvalue()
    assert "nothing changed" in out.getvalue()


def test_cli_lists_registered_datasets_and_refuses_deletion(baseline, datastore, capsys):
    import io

    from aml_assets.cli import main

    out = io.StringIO()
    assert main(["--root", str(datastore.root_dir()), "datasets", "list"], out=out) == 0
    assert "titanic_prepared  versions 1  latest v1  891 rows" in out.getvalue()
    assert main(["--root", str(datastore.root_dir()), "datasets", "delete", "titanic_prepared", "1"]) == 2
    assert "Refusing to delete dataset 'titanic_prepared' version 1" in capsys.readouterr().err
    assert DatasetRegistry(datastore).versions("titanic_prepared") == [1]
