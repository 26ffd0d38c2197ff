"""Identical data hashes the same across JVMs: the reference pipeline run in separate processes.

Spark writes Parquet footers whose details vary from one JVM to the next; the content hash must
not see that, or every concurrent or regenerated run mints a dataset version for identical rows
and reruns everything downstream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aml_assets import DatasetRegistry
from aml_assets.reuse.ledger import StepLedger
from aml_assets.service.instance import ensure_instance

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def _start(home: Path, *extra: str) -> subprocess.Popen[str]:
    home.mkdir(parents=True, exist_ok=True)
    ensure_instance(home, default_config=REPO / "dagster.yaml")  # as `make run` installs it
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [str(Path(sys.executable).parent / "dagster"), "job", "execute",
               "-f", str(REPO / "definitions.py"), "-j", "synapse_pipeline", *extra]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    return out


def _latest(datastore, step: str):
    return StepLedger(datastore, step).latest_record()


def test_two_concurrent_cold_runs_leave_one_version_and_the_next_run_reuses(tmp_path, datastore):
    procs = [_start(tmp_path / f"home{i}") for i in range(2)]
    for proc in procs:
        _finish(proc)
    registry = DatasetRegistry(datastore)
    assert registry.versions("titanic_prepared") == [1]
    # Both runs computed (nothing was committed when they started); their content hashes agree.
    hashes = {
        json.loads(datastore.read_bytes(f"_refs/titanic_prepared/{r.run_id}.json"))["content_hash"]
        for r in StepLedger(datastore, "dataprep").run_records()
    }
    assert len(hashes) == 1

    _finish(_start(tmp_path / "home0"))
    assert _latest(datastore, "dataprep").status == "reused"
    assert _latest(datastore, "train").status == "reused"
    assert registry.versions("titanic_prepared") == [1]


def test_regenerated_outputs_in_new_jvms_keep_one_version(tmp_path, datastore):
    home = tmp_path / "home"
    _finish(_start(home))
    regenerate = ["--tags", json.dumps({"aml/regenerate_outputs": "true"})]
    for _ in range(2):
        _finish(_start(home, *regenerate))
        assert _latest(datastore, "dataprep").reasons == ["regenerate_outputs was requested"]
    registry = DatasetRegistry(datastore)
    assert registry.versions("titanic_prepared") == [1]
    records = StepLedger(datastore, "dataprep").run_records()
    assert [r.status for r in records] == ["ran", "ran", "ran"]

    # Then an ordinary run: nothing changed, so both steps are reused.
    _finish(_start(home))
    assert _latest(datastore, "dataprep").status == "reused"
    assert _latest(datastore, "train").status == "reused"
    assert registry.versions("titanic_prepared") == [1]
