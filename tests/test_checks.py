"""Dataset checks declared with the dataset: unique keys, row-count ranges, schema drift."""

from __future__ import annotations

from aml_assets import DatasetRegistry, RowCount, SchemaDrift, UniqueKey
from tests.support.runs import run_job
from tests.support.small import small_defs


def _checks(result) -> dict[str, tuple[bool, str, str]]:
    out = {}
    for e in result.all_events:
        if e.event_type_value == "ASSET_CHECK_EVALUATION":
            d = e.asset_check_evaluation_data
            out[d.check_name] = (d.passed, d.severity.value, d.description)
    return out


def test_checks_pass_on_good_data(tmp_path, instance):
    checks = [UniqueKey(columns=["id"]), RowCount(min=1, max=100), SchemaDrift()]
    result = run_job(small_defs(tmp_path, checks=checks), instance, job="small")
    assert result.success
    assert _checks(result) == {
        "unique_key": (True, "ERROR", "keys are unique"),
        "row_count": (True, "ERROR", "20 rows, expected [1, 100]"),
        "schema_drift": (True, "WARN", "no previous version to compare with"),
    }


def test_duplicate_keys_and_row_count_fail(tmp_path, instance, datastore):
    datastore.write_bytes("numbers/numbers.csv", b"id,value\n1,1\n1,2\n2,3\n")
    checks = [UniqueKey(columns=["id"]), RowCount(min=10)]
    result = run_job(small_defs(tmp_path, checks=checks), instance, job="small")
    assert not result.success  # blocking checks fail the run
    found = _checks(result)
    assert found["unique_key"] == (False, "ERROR", "1 duplicate key(s) on id")
    assert found["row_count"] == (False, "ERROR", "3 rows, expected [10, inf]")
    assert DatasetRegistry(datastore).versions("copied") == []
    assert "copied" not in {
        e.event_specific_data.materialization.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }


def test_schema_drift_warns_or_fails_as_declared(tmp_path, instance, datastore):
    run_job(small_defs(tmp_path, checks=[SchemaDrift()]), instance, job="small")
    # A new column (and a changed type) in the next version of the data.
    datastore.write_bytes("numbers/numbers.csv", b"id,value,extra\n1,a,x\n2,b,y\n")
    warned = run_job(small_defs(tmp_path, checks=[SchemaDrift()]), instance, job="small")
    assert warned.success, "a warning-level drift check does not stop the run"
    passed, severity, text = _checks(warned)["schema_drift"]
    assert (passed, severity) == (False, "WARN")
    assert text == "added extra (string); value: int64 -> string"

    datastore.write_bytes("numbers/numbers.csv", b"id,value\n1,1\n")
    failed = run_job(small_defs(tmp_path, checks=[SchemaDrift(blocking=True)]), instance, job="small")
    assert not failed.success
    assert _checks(failed)["schema_drift"][:2] == (False, "ERROR")


def test_checks_on_a_source_dataset_stop_the_pipeline_before_any_step(tmp_path, instance):
    result = run_job(small_defs(tmp_path, source_checks=[RowCount(min=100)]), instance, job="small")
    assert not result.success
    assert _checks(result)["row_count"] == (False, "ERROR", "20 rows, expected [100, inf]")
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert started == {"numbers"}

    ok = run_job(small_defs(tmp_path, source_checks=[RowCount(min=10)]), instance, job="small")
    assert ok.success and _checks(ok)["row_count"][0] is True
