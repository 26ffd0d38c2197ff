"""A shared Dagster instance on PostgreSQL: run, event-log and schedule storage in a real
PostgreSQL server (started by the tests on 127.0.0.1 with its own data directory, see
tests/support/postgres.py), while the reuse ledger and the registry stay on the datastore.

The pipeline is test_experiment's two-step project (no Spark):
numbers -> prep (--factor) -> doubled -> total (--offset) -> summed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from aml_assets.data.datastore import LocalDatastore
from aml_assets.reuse.ledger import StepLedger
from aml_assets.service.experiment import Experiment
from tests.support.postgres import PostgresServer
from tests.support.two_steps import Daemon, load_pipeline, steps_of, write_project

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BIN = Path(sys.executable).parent


def write_home(home: Path, postgres: PostgresServer, db_name: str, queued: bool = False) -> Path:
    """A DAGSTER_HOME whose dagster.yaml puts every storage on ``db_name`` of the server."""
    home.mkdir(parents=True, exist_ok=True)
    config = postgres.dagster_yaml(db_name) + "telemetry:\n  enabled: false\n"
    if queued:
        config += (
            "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n"
            "  config:\n    max_concurrent_runs: 4\n    dequeue_interval_seconds: 1\n"
        )
    (home / "dagster.yaml").write_text(config)
    return home


@pytest.fixture
def db_name(postgres: PostgresServer) -> str:
    """A fresh database on the session's server for this test (runs of other tests stay out)."""
    name = f"dagster_{uuid.uuid4().hex[:10]}"
    postgres.create_database(name)
    return name


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "two_steps_project")


@pytest.fixture
def home(tmp_path: Path, postgres: PostgresServer, db_name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = write_home(tmp_path / "dagster_home", postgres, db_name)
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the run worker processes open the same instance
    return home


@pytest.fixture
def pg_instance(home: Path) -> Iterator[DagsterInstance]:
    with DagsterInstance.get() as instance:
        yield instance


def test_runs_events_and_schedules_live_in_postgres_and_the_rerun_is_reused(
    project: Path, home: Path, pg_instance: DagsterInstance, postgres: PostgresServer, db_name: str,
    isolated_env: Path,
):
    """Both storages are PostgreSQL's; a run and its events are rows there; the rerun reuses both
    steps because the ledger is on the datastore, not in the instance; no SQLite file appears."""
    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(pg_instance.schedule_storage, PostgresScheduleStorage)

    pipeline = load_pipeline(project)
    with Experiment("pg_tests", workspace=project / "workspace.yaml", instance=pg_instance) as exp:
        first = exp.submit(pipeline)
        assert first.wait_for_completion(show_output=False, timeout_seconds=120) == "Finished"
        assert steps_of(first) == {"prep": ("Finished", False), "total": ("Finished", False)}
        second = exp.submit(pipeline)
        assert second.wait_for_completion(show_output=False, timeout_seconds=120) == "Finished"
        assert steps_of(second) == {"prep": ("Finished", True), "total": ("Finished", True)}
        assert second.find_step_run("prep")[0].reused_from_run == first.id

    # Straight from PostgreSQL, not through Dagster: both runs, successful, with their events.
    runs = dict(postgres.query("select run_id, status from runs", db=db_name))
    assert runs == {first.id: "SUCCESS", second.id: "SUCCESS"}
    events = postgres.query(
        "select run_id, dagster_event_type, step_key from event_logs where dagster_event_type is not null",
        db=db_name,
    )
    for run_id in (first.id, second.id):
        kinds = {kind for rid, kind, _ in events if rid == run_id}
        assert {"PIPELINE_START", "PIPELINE_SUCCESS", "STEP_SUCCESS"} <= kinds, kinds
        assert {step for rid, kind, step in events if rid == run_id and kind == "STEP_SUCCESS"} >= {"prep", "total"}
    # Dagster's tables are all in this database (schedules and sensors included).
    tables = {t for (t,) in postgres.query(
        "select table_name from information_schema.tables where table_schema = 'public'", db=db_name)}
    assert {"runs", "event_logs", "jobs", "job_ticks", "instigators", "alembic_version"} <= tables

    # The home holds no storage of its own; the reuse ledger lives on the datastore.
    assert not list(home.rglob("*.db")), list(home.rglob("*.db"))
    store = LocalDatastore(name="workspace", root=str(isolated_env))
    for step in ("prep", "total"):
        assert {r.run_id for r in StepLedger(store, step).run_records()} >= {first.id}, step


def test_four_cli_runs_at_once_all_succeed(project: Path, home: Path, pg_instance: DagsterInstance):
    """SQLite's weak point: four `aml-assets run` processes on one instance at the same time."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}

    def run(offset: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "aml-assets"), "run", "-f", "definitions.py", "--no-warm", "--param", f"offset={offset}"],
            cwd=project, env=env, capture_output=True, text=True, timeout=300,
        )

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(1, 5)))
    elapsed = time.monotonic() - started
    for proc in results:
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    runs = pg_instance.get_runs()
    assert len(runs) == 4, [r.run_id for r in runs]
    assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}
    for r in runs:
        kinds = {e.dagster_event.event_type_value for e in pg_instance.all_logs(r.run_id) if e.dagster_event}
        assert "PIPELINE_SUCCESS" in kinds
    print(f"four concurrent runs on PostgreSQL: {elapsed:.1f} s")


def test_queued_run_is_started_by_a_real_daemon_on_postgres(
    project: Path, tmp_path: Path, postgres: PostgresServer, db_name: str, monkeypatch: pytest.MonkeyPatch
):
    """Dagster's run queue and a real `dagster-daemon run` on the PostgreSQL instance: the
    daemon's heartbeat and the queued run go through PostgreSQL, and the run succeeds."""
    home = write_home(tmp_path / "queued_home", postgres, db_name, queued=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        daemon = Daemon(project / "workspace.yaml", home)
        try:
            daemon.start(instance)
            with Experiment("pg_queue", workspace=project / "workspace.yaml", instance=instance) as exp:
                run = exp.submit(load_pipeline(project))
                assert run.wait_for_completion(show_output=False, timeout_seconds=120) == "Finished"
            kinds = {e.dagster_event.event_type_value for e in instance.all_logs(run.id) if e.dagster_event}
            assert {"PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_SUCCESS"} <= kinds
        finally:
            daemon.stop()
    beats = {d for (d,) in postgres.query("select daemon_type from daemon_heartbeats", db=db_name)}
    assert "QUEUED_RUN_COORDINATOR" in beats
