"""The reference pipeline through Dagster's own CLI, exactly as a user runs it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from aml_assets import DatasetRegistry, LocalDatastore
from aml_assets.service.instance import ensure_instance

REPO = Path(__file__).resolve().parent.parent
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _cli_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    ensure_instance(home, default_config=REPO / "dagster.yaml")  # as `make run` installs it
    return {**os.environ, "DAGSTER_HOME": str(home)}


@pytest.mark.spark
@pytest.mark.slow
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


@pytest.mark.spark
@pytest.mark.slow
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


# --- aml-assets datasets / verify / gc ---------------------------------------------------------------
def _aml(root, *args: str) -> tuple[int, str]:
    from aml_assets.cli import main

    out = io.StringIO()
    code = main(["--root", str(root), *args], out=out)
    return code, out.getvalue()


def test_datasets_list_skips_malformed_records_with_a_warning(datastore, tmp_path, capsys):
    from aml_assets.data import layout
    from tests.test_registry_integrity import A, B, publish

    registry = DatasetRegistry(datastore)
    registry.register(publish(datastore, tmp_path, "p/1/tbl", A))
    registry.register(publish(datastore, tmp_path, "p/2/tbl", B))
    datastore._write_record(layout.version_record("tbl", 3), b"{oops")
    datastore._write_record(layout.version_record("other", 1), b'{"name": "other"}')
    capsys.readouterr()
    code, out = _aml(datastore.root_dir(), "datasets", "list")
    err = capsys.readouterr().err
    assert code == 0
    assert "tbl  versions 1..2  latest v2  - rows  file://" in out
    assert "other" not in out
    assert "warning: skipped datasets/tbl/versions/000003.json is malformed (not valid JSON" in err
    assert "warning: skipped datasets/other/versions/000001.json is malformed (it has no 'ref'" in err
    assert err.count("000003.json") == 1  # each malformed record named once

    # Forced delete of the latest, then a new registration: a new number, never the old one.
    code, out = _aml(datastore.root_dir(), "datasets", "delete", "tbl", "2")
    assert code == 2 and "Pass force=True (CLI: --force)" in capsys.readouterr().err
    code, out = _aml(datastore.root_dir(), "datasets", "delete", "tbl", "2", "--force")
    assert code == 0 and "the number 2 is never given out again" in out
    code, out = _aml(datastore.root_dir(), "datasets", "show", "tbl", "--version", "2")
    assert code == 2 and "version 2 was deleted on" in capsys.readouterr().err
    assert registry.register(publish(datastore, tmp_path, "p/3/tbl", B)) == (4, True)
    code, out = _aml(datastore.root_dir(), "datasets", "list")
    assert "tbl  versions 1, 4  latest v4" in out
    code, out = _aml(datastore.root_dir(), "datasets", "show", "tbl", "--json")
    assert json.loads(out)["version"] == 4
    # For a reader: what it is, where it is, how many rows, and a preview table.
    code, out = _aml(datastore.root_dir(), "datasets", "show", "tbl")
    record = json.loads(_aml(datastore.root_dir(), "datasets", "show", "tbl", "--json")[1])
    lines = out.splitlines()
    assert lines[0] == "tbl version 4"
    assert f"  location     {record['ref']['uri']}" in lines
    stats = (record["ref"].get("producer") or {}).get("stats")
    if stats:
        assert f"  rows         {stats['row_count']}" in lines
        assert stats["preview"] in out
    assert "{" not in out.splitlines()[1], "no raw JSON in the readable view"


def test_verify_and_gc_on_an_empty_datastore(datastore):
    code, out = _aml(datastore.root_dir(), "verify")
    assert code == 0
    assert "Checked 0 step output(s) of 0 commit(s) and 0 registered version(s): 0 corrupt" in out
    code, out = _aml(datastore.root_dir(), "gc", "--dry-run")
    assert code == 0 and "Nothing to remove" in out


def test_help_is_plain_text_and_names_every_command(capsys):
    from aml_assets.cli import build_parser

    text = build_parser().format_help()
    assert "``" not in text, "reST markup in the terminal help"
    for command in ("run", "runs", "runner", "explain", "datasets", "gc", "verify", "pool"):
        assert command in text
