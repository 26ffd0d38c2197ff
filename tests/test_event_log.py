"""FastSqliteEventLogStorage: the same databases Dagster's SQLite event log makes, made faster."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, Definitions, asset, define_asset_job

FAST = """
event_log_storage:
  module: aml_assets.service.event_log
  class: FastSqliteEventLogStorage
  config:
    base_dir: "{dagster_home}/history/runs"
telemetry:
  enabled: false
"""


@asset
def one() -> int:
    return 1


@asset
def two(one: int) -> int:
    return one + 1


JOB = Definitions(assets=[one, two], jobs=[define_asset_job("both", selection="*")]).resolve_job_def("both")


def _schema(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return {f"{t} {n}: {s}" for t, n, s in rows} | {f"revision {v}" for (v,) in version}


def _instance(home: Path, fast: bool, monkeypatch) -> DagsterInstance:
    home.mkdir(exist_ok=True)
    text = FAST.replace("{dagster_home}", str(home)) if fast else "telemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(text)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return DagsterInstance.get()


def test_run_databases_are_what_dagster_makes_and_history_survives_a_switch(tmp_path, monkeypatch):
    default_home, fast_home = tmp_path / "default", tmp_path / "fast"
    with _instance(default_home, False, monkeypatch) as plain:
        plain_run = JOB.execute_in_process(instance=plain).run_id
    with _instance(fast_home, True, monkeypatch) as fast:
        from aml_assets.service.event_log import FastSqliteEventLogStorage

        assert isinstance(fast.event_log_storage, FastSqliteEventLogStorage)
        fast_runs = [JOB.execute_in_process(instance=fast).run_id for _ in range(3)]
        assert len(fast.get_runs()) == 3
        for run_id in fast_runs:
            assert len(fast.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)) == 2
        assert fast.get_latest_materialization_event(one.key) is not None
    runs_dir = fast_home / "history" / "runs"
    assert (runs_dir / ".aml-run-shard-template.sqlite").exists()
    # The very schema and revision Dagster gives a run database.
    expected = _schema(default_home / "history" / "runs" / f"{plain_run}.db")
    for run_id in fast_runs:
        assert _schema(runs_dir / f"{run_id}.db") == expected
    # Switching back to Dagster's own storage reads the same history (the template is no run).
    with _instance(fast_home, False, monkeypatch) as back:
        assert sorted(back.event_log_storage.get_all_run_ids()) == sorted(fast_runs)
        for run_id in fast_runs:
            assert len(back.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)) == 2
        JOB.execute_in_process(instance=back)


def test_concurrent_first_writes_of_one_run_database_keep_one_good_database(tmp_path, monkeypatch):
    from aml_assets.service.event_log import FastSqliteEventLogStorage

    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def first_write(storage: FastSqliteEventLogStorage) -> None:
        try:
            barrier.wait()
            with storage.run_connection("r1") as conn:
                conn.exec_driver_sql("SELECT count(*) FROM event_logs").fetchall()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    # Separate storages, as separate processes would have (each has its own lock).
    storages = [FastSqliteEventLogStorage(str(tmp_path / "runs")) for _ in range(6)]
    threads = [threading.Thread(target=first_write, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not list((tmp_path / "runs").glob("*.tmp")), "a temporary copy was left behind"
    with sqlite3.connect(tmp_path / "runs" / "r1.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_project_config_installed_in_a_home_names_that_home(tmp_path, monkeypatch):
    from aml_assets.service.event_log import FastSqliteEventLogStorage
    from aml_assets.service.instance import ensure_instance

    repo_config = Path(__file__).resolve().parent.parent / "dagster.yaml"
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "another-home"))  # must not matter
    ensure_instance(home, default_config=repo_config)
    assert f"{home}/history/runs" in (home / "dagster.yaml").read_text()
    instance = DagsterInstance.from_config(str(home))
    assert isinstance(instance.event_log_storage, FastSqliteEventLogStorage)
    assert Path(instance.event_log_storage._base_dir) == home / "history" / "runs"
    # The file copied by hand, placeholder and all: refused with the fix.
    with pytest.raises(ValueError, match="still holds the {dagster_home} placeholder"):
        FastSqliteEventLogStorage("{dagster_home}/history/runs")


def test_a_run_being_written_is_seen_live_by_a_watcher(tmp_path):
    """The UI follows a running run by watching its database; events committed on a connection
    kept open are in the WAL file, and still reach the watcher within moments."""
    import logging
    import time

    from dagster._core.events.log import EventLogEntry

    from aml_assets.service.event_log import FastSqliteEventLogStorage

    base = str(tmp_path / "runs")
    writer, reader = FastSqliteEventLogStorage(base), FastSqliteEventLogStorage(base)
    seen: list[str] = []

    def entry(message: str) -> EventLogEntry:
        return EventLogEntry(
            error_info=None, level=logging.INFO, user_message=message, run_id="r1",
            timestamp=time.time(), step_key=None, job_name="job", dagster_event=None,
        )

    writer.store_event(entry("first"))
    reader.watch("r1", None, lambda event, cursor: seen.append(event.user_message))
    try:
        for message in ("second", "third"):
            writer.store_event(entry(message))
            deadline = time.monotonic() + 10
            while message not in seen and time.monotonic() < deadline:
                time.sleep(0.05)
            assert message in seen, f"the watcher never saw '{message}' (saw {seen})"
    finally:
        reader.dispose()
        writer.dispose()
