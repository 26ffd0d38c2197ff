"""Bad input gets a clear error naming the dataset and path, before the step starts; nothing is lost."""

from __future__ import annotations

import pytest

from aml_assets import DatasetRegistry, PipelineValidationError
from tests.support.runs import materializations, run_job, step_failure_messages
from tests.support.small import small_defs, small_pipeline


def _fails_before_step(result, datastore) -> str:
    assert not result.success
    [message] = step_failure_messages(result)
    executed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert executed == {"numbers"}, "the script step must not start"
    assert "copied" not in materializations(result)
    assert DatasetRegistry(datastore).versions("copied") == []
    assert not datastore.local_path("steps").exists()
    return message


def test_missing_source_file(tmp_path, instance, datastore):
    result = run_job(small_defs(tmp_path, seed=False), instance, job="small")
    message = _fails_before_step(result, datastore)
    assert "Dataset 'numbers': no data at 'numbers/numbers.csv' on datastore 'workspace'" in message
    assert "Upload it (Datastore.upload_files) or declare the dataset with seed=" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"id,value\n1,1\n2,4,8\n3,9\n", "Expected 2 columns, got 3"),
        (b"id,name\n1,caf\xe9\n", "invalid UTF8"),
        (b"", "is empty. A delimited file needs at least a header row"),
        (b"id,value\n", "has a header but no rows"),
    ],
    ids=["ragged-rows", "bad-encoding", "empty-file", "header-only"],
)
def test_malformed_source_file(tmp_path, instance, datastore, content, expected):
    datastore.write_bytes("numbers/numbers.csv", content)
    result = run_job(small_defs(tmp_path, seed=False), instance, job="small")
    message = _fails_before_step(result, datastore)
    assert "Dataset 'numbers'" in message
    assert "numbers.csv" in message
    assert expected in message


def test_path_escaping_the_datastore_root_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(PipelineValidationError) as info:
        small_defs(tmp_path, source_path="../../etc/passwd")
    assert info.value.problems == [
        "dataset 'numbers': Datastore 'workspace': path '../../etc/passwd' escapes the datastore "
        "root. Use a path relative to the root without '..' or a scheme, e.g. 'titanic/titanic.csv'."
    ]
    assert small_pipeline(tmp_path).problems() == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty (0 bytes)"),
        (b"PAR1 this is not really parquet", "is not a readable Parquet file"),
    ],
    ids=["zero-bytes", "garbage"],
)
def test_unreadable_parquet_source(tmp_path, instance, datastore, content, expected):
    from aml_assets import (
        LocalDatastore,
        LocalProcessCluster,
        OutputDataset,
        Pipeline,
        PythonScriptStep,
        TabularDataset,
    )

    code = tmp_path / "code"
    code.mkdir()
    (code / "s.py").write_text("raise SystemExit('the step must not start')\n")
    datastore.write_bytes("numbers/part-0.parquet", content)
    source = TabularDataset.from_parquet_files("numbers", "numbers")
    step = PythonScriptStep(name="copy", script="s.py", source_directory=code,
                            arguments=[source.as_download(), OutputDataset("copied")])
    defs = Pipeline("small", [step]).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()}
    )
    message = _fails_before_step(run_job(defs, instance, job="small"), datastore)
    assert "Dataset 'numbers': file" in message and "part-0.parquet" in message
    assert expected in message and "Re-upload the file" in message
    assert "ArrowInvalid" not in message.splitlines()[0]
