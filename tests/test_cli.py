"""The reference pipeline through Dagster's own CLI, exactly as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from aml_assets import DatasetRegistry, LocalDatastore

REPO = Path(__file__).resolve().parent.parent
DAGSTER = str(Path(sys.executable).with_name("dagster"))

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _cli_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home)}


def test_dagster_job_execute_runs_the_reference_pipeline(tmp_path, datastore):
    env = _cli_env(tmp_path)
    out = subprocess.run(
        [DAGSTER, "job", "execute", "-f", "definitions.py", "-j", "synapse_pipeline"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RUN_SUCCESS" in out.stderr + out.stdout

    prepared = DatasetRegistry(datastore).get("titanic_prepared")
    assert prepared.version == 1
    assert len(prepared.to_pandas_dataframe()) == 891

    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    model = instance.get_latest_materialization_event(AssetKey("titanic_model")).asset_materialization
    assert model.metadata["accuracy"].value >= 0.75
    assert model.metadata["reused"].value is False


def test_failing_blocking_check_fails_the_cli_run(tmp_path, datastore):
    # Seed a truncated passenger list: dataprep succeeds, the row-count check (891) must fail.
    lines = (REPO / "data" / "titanic.csv").read_text().splitlines()
    datastore.write_bytes("titanic/titanic.csv", ("\n".join(lines[:101]) + "\n").encode())
    env = _cli_env(tmp_path)
    out = subprocess.run(
        [DAGSTER, "job", "execute", "-f", "definitions.py", "-j", "synapse_pipeline"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    logs = out.stderr + out.stdout
    assert out.returncode != 0
    assert "Asset check 'row_count' on 'titanic_prepared' did not pass" in logs
    assert (
        "Blocking check(s) failed: 'titanic_prepared' failed row_count: 100 rows, expected "
        "[891, 891]. The dataset was not registered and downstream steps do not run" in logs
    )
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    assert instance.get_latest_materialization_event(AssetKey("titanic_model")) is None
    assert instance.get_latest_materialization_event(AssetKey("titanic_prepared")) is None
    # Data that fails a blocking check is never registered as a dataset version.
    assert DatasetRegistry(LocalDatastore()).versions("titanic_prepared") == []
