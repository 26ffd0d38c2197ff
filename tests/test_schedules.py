"""Schedules and data-change triggers: recurrence -> cron (exact, also for intervals cron cannot
say), no run at creation, a run at the first tick, triggers that see subfolders on a local folder
and on Azurite, start one run per new or changed file and never two for the same content (also
across a daemon restart, with a real dagster-daemon)."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    EnvVar,
    RunsFilter,
    build_schedule_context,
    build_sensor_context,
)

from aml_assets import (
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineParameter,
    PythonScriptStep,
)
from aml_assets.data.datastore import DatastoreError
from aml_assets.pipeline.datapath import DataPath, DataPathParameter
from aml_assets.pipeline.instigators import TriggerCursor, is_ignored
from aml_assets.pipeline.tags import (
    EXPERIMENT_TAG,
    REGENERATE_TAG,
    SCHEDULE_TAG,
    SUBMITTED_VIA_TAG,
    TRIGGER_PATH_TAG,
)
from aml_assets.service.schedules import (
    Schedule,
    ScheduleError,
    ScheduleRecurrence,
    cli_schedules,
    records_signature,
)

UTC = timezone.utc
CREATED = datetime(2026, 1, 5, 10, 0, 30, tzinfo=UTC)  # a Monday

READ = textwrap.dedent(
    """
    import argparse, pathlib
    p = argparse.ArgumentParser()
    p.add_argument("--raw"); p.add_argument("--mode"); p.add_argument("--out")
    a = p.parse_args()
    src = pathlib.Path(a.raw)
    files = sorted(f for f in src.rglob("*") if f.is_file()) if src.is_dir() else [src]
    (pathlib.Path(a.out) / "copy.txt").write_text("".join(f.read_text() for f in files))
    """
)


def watcher_pipeline(code: Path) -> Pipeline:
    """One step reading a DataPath parameter ('raw') and a value parameter ('mode')."""
    code.mkdir(parents=True, exist_ok=True)
    (code / "read.py").write_text(READ)
    raw = DataPathParameter("raw", DataPath("workspace", "incoming/seed.csv"), format="files")
    step = PythonScriptStep(
        "read", "read.py", code,
        arguments=["--raw", raw, "--mode", PipelineParameter("mode", "fast"), "--out", OutputDataset("copied")],
    )
    return Pipeline("watcher", [step])


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return watcher_pipeline(tmp_path / "code")


def _resources(store) -> dict:
    return {"workspace": store, "cpucluster": LocalProcessCluster()}


def _defs(pipeline: Pipeline, store):
    return pipeline.to_definitions(_resources(store))


def _backdate(path: Path, seconds: float = 30) -> None:
    """Make a file look finished (its last write ``seconds`` ago)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


# --- recurrence -> cron ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, cron, exact, first_ticks",
    [
        (dict(frequency="Minute", interval=15), "0-59/15 * * * *", True, ["10:15", "10:30", "10:45"]),
        (dict(frequency="minute", interval=1), "* * * * *", True, ["10:01", "10:02", "10:03"]),
        # 7 does not divide the hour: every minute, all but every 7th skipped, counted from start.
        (dict(frequency="Minute", interval=7, start_time="2026-01-05T10:03:00"), "* * * * *", False,
         ["10:03", "10:10", "10:17", "10:24"]),
        (dict(frequency="Minute", interval=7), "* * * * *", False, ["10:01", "10:08", "10:15"]),
        (dict(frequency="Minute", interval=10, start_time="2026-01-05T09:03:00"), "3-59/10 * * * *", True,
         ["10:03", "10:13", "10:23"]),
        (dict(frequency="Minute", interval=90, start_time="2026-01-05T10:10:00"), "10-59/30 * * * *", False,
         ["10:10", "11:40", "13:10"]),
        (dict(frequency="Minute", interval=120), "0 0-23/2 * * *", True, ["12:00", "14:00", "16:00"]),
        (dict(frequency="Hour", interval=6), "0 0-23/6 * * *", True, ["12:00", "18:00", "00:00"]),
        (dict(frequency="Hour", interval=5, start_time="2026-01-05T08:20:00"), "20 * * * *", False,
         ["13:20", "18:20", "23:20", "04:20"]),
        (dict(frequency="Day", interval=1, time_of_day="09:30"), "30 9 * * *", True,
         ["Tue 09:30", "Wed 09:30"]),
        (dict(frequency="Day", interval=1, hours=[9, 17], minutes=[0, 30]), "0,30 9,17 * * *", True,
         ["Mon 17:00", "Mon 17:30", "Tue 09:00"]),
        (dict(frequency="Day", interval=2, hours=[9]), "0 9 * * *", False, ["Wed 09:00", "Fri 09:00"]),
        (dict(frequency="Week", interval=1, week_days=["Monday", "fri"], time_of_day="17:00"), "0 17 * * 1,5",
         True, ["Mon 17:00", "Fri 17:00", "Mon 17:00"]),
        (dict(frequency="Week", interval=2, week_days=["Sunday"], time_of_day="08:00"), "0 8 * * 0", False,
         ["01-11 08:00", "01-25 08:00"]),
        (dict(frequency="Month", interval=3, start_time="2026-02-15T06:00:00"), "0 6 15 2-12/3 *", True,
         ["02-15 06:00", "05-15 06:00", "08-15 06:00", "11-15 06:00", "02-15 06:00"]),
        (dict(frequency="Month", interval=5, start_time="2026-02-15T06:00:00"), "0 6 15 * *", False,
         ["02-15 06:00", "07-15 06:00", "12-15 06:00", "05-15 06:00"]),
    ],
)
def test_recurrence_becomes_an_exact_cron_schedule(kwargs, cron, exact, first_ticks):
    plan = ScheduleRecurrence(**kwargs).plan(CREATED)
    assert (plan.cron, plan.exact) == (cron, exact)
    fmt = "%a %H:%M" if first_ticks[0][:3].isalpha() else "%m-%d %H:%M" if "-" in first_ticks[0] else "%H:%M"
    assert [t.strftime(fmt) for t in plan.ticks(CREATED, len(first_ticks))] == first_ticks


def test_time_zone_and_daylight_saving():
    plan = ScheduleRecurrence("Day", 1, time_of_day="09:30", time_zone="Europe/Berlin").plan(
        datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
    )
    assert plan.timezone == "Europe/Berlin"
    ticks = plan.ticks(datetime(2026, 3, 27, 12, 0, tzinfo=UTC), 3)
    # 09:30 in Berlin on both sides of the switch to summer time (29 March 2026).
    assert [t.astimezone(UTC).strftime("%d %H:%M") for t in ticks] == ["28 08:30", "29 07:30", "30 07:30"]
    # A naive start_time is in the schedule's time zone.
    r = ScheduleRecurrence("Minute", 7, start_time="2026-01-05T11:03:00", time_zone="Europe/Berlin")
    assert r.plan(CREATED).anchor.astimezone(UTC).strftime("%H:%M") == "10:03"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frequency="Fortnight", interval=1), "frequency 'Fortnight' is not one of Minute, Hour, Day, Week, Month"),
        (dict(frequency="Day", interval=0), "interval must be a whole number >= 1"),
        (dict(frequency="Day", interval=1.5), "interval must be a whole number"),
        (dict(frequency="Hour", interval=1, hours=[3]), "hours is only allowed with frequency 'Day' or 'Week'"),
        (dict(frequency="Month", interval=1, minutes=[3]), "minutes is only allowed with frequency 'Day' or 'Week'"),
        (dict(frequency="Day", interval=1, week_days=["Monday"]), "week_days is only allowed with frequency 'Week'"),
        (dict(frequency="Week", interval=1, week_days=["Funday"]), r"week_days \['Funday'\] are not week days"),
        (dict(frequency="Day", interval=1, hours=[24]), "hours must be integers from 0 to 23; got 24"),
        (dict(frequency="Day", interval=1, minutes=[60]), "minutes must be integers from 0 to 59"),
        (dict(frequency="Day", interval=1, time_of_day="25:00"), "time_of_day '25:00' is not a time"),
        (dict(frequency="Day", interval=1, time_of_day="09:00", hours=[9]), "either time_of_day or hours/minutes"),
        (dict(frequency="Day", interval=1, time_zone="Mars/Olympus"), "time_zone 'Mars/Olympus' is not a known time zone"),
        (dict(frequency="Day", interval=1, start_time="next tuesday"), "start_time 'next tuesday' is not an ISO date-time"),
    ],
)
def test_recurrence_problems_are_named(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        ScheduleRecurrence(**kwargs)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ScheduleError, match="4 problems") as info:
        ScheduleRecurrence("Minute", 0, hours=[25], time_zone="Nowhere/Land")
    assert len(info.value.problems) == 4


# --- schedules ---------------------------------------------------------------------------------
def test_schedule_never_runs_at_creation_and_runs_at_the_first_tick(pipeline, datastore, instance):
    schedule = Schedule.create(
        "every_quarter", pipeline=pipeline, experiment_name="nightly",
        recurrence=ScheduleRecurrence("Minute", 15), pipeline_parameters={"mode": "slow"},
        regenerate_outputs=True, store=datastore,
    )
    created = datetime.fromisoformat(schedule.created)
    definition = _defs(pipeline, datastore).resolve_schedule_def("every_quarter")
    assert definition.cron_schedule == "0-59/15 * * * *"
    assert definition.default_status == DefaultScheduleStatus.RUNNING
    assert definition.job_name == "watcher"

    at_creation = definition.evaluate_tick(build_schedule_context(instance, scheduled_execution_time=created))
    assert at_creation.run_requests == [] and "never runs at creation" in at_creation.skip_message
    # The same minute, on the cron's boundary: still not (the creation guard, not only Dagster's).
    floor = created.replace(minute=created.minute - created.minute % 15, second=0, microsecond=0)
    assert definition.evaluate_tick(build_schedule_context(instance, scheduled_execution_time=floor)).run_requests == []

    first = floor + timedelta(minutes=15)
    result = definition.evaluate_tick(build_schedule_context(instance, scheduled_execution_time=first))
    [request] = result.run_requests
    assert request.run_config == {"resources": {"pipeline": {"config": {"mode": "slow"}}}}
    assert request.tags[SCHEDULE_TAG] == "every_quarter"
    assert request.tags[EXPERIMENT_TAG] == "nightly"
    assert request.tags[SUBMITTED_VIA_TAG] == "schedule"
    assert request.tags[REGENERATE_TAG] == "true"


def test_non_divisor_interval_runs_exactly_on_its_grid(pipeline, datastore, instance):
    start = (datetime.now(UTC) + timedelta(hours=1)).replace(second=0, microsecond=0)
    Schedule.create(
        "every_seven", pipeline=pipeline, experiment_name="x", store=datastore,
        recurrence=ScheduleRecurrence("Minute", 7, start_time=start.isoformat()),
    )
    definition = _defs(pipeline, datastore).resolve_schedule_def("every_seven")
    assert definition.cron_schedule == "* * * * *"
    ran = []
    for minute in range(-3, 22):
        t = start + timedelta(minutes=minute)
        result = definition.evaluate_tick(build_schedule_context(instance, scheduled_execution_time=t))
        if result.run_requests:
            ran.append(minute)
        elif minute < 0:
            assert "before the schedule's start_time" in result.skip_message
        else:
            assert "between the schedule's runs" in result.skip_message
    assert ran == [0, 7, 14, 21]


def test_a_published_version_and_an_endpoint_default_resolved_at_each_tick(pipeline, datastore, instance, tmp_path):
    from aml_assets.pipeline.publish import PipelineEndpoint
    from aml_assets.pipeline.tags import ENDPOINT_TAG, PUBLISHED_VERSION_TAG

    resources = _resources(datastore)
    v1 = pipeline.publish("watcher_service", datastore=datastore, resources=resources)
    endpoint = PipelineEndpoint.publish("watcher_endpoint", v1, datastore=datastore)
    recurrence = ScheduleRecurrence("Hour", 1)
    Schedule.create("fixed", pipeline=v1, experiment_name="x", recurrence=recurrence, store=datastore)
    Schedule.create("moving", pipeline=endpoint, experiment_name="x", recurrence=recurrence, store=datastore)
    assert [s.name for s in Schedule.list(pipeline=endpoint, store=datastore)] == ["moving"]
    (tmp_path / "code" / "read.py").write_text(READ + "\n# changed\n")
    v2 = pipeline.publish("watcher_service", datastore=datastore, resources=resources)
    assert v2.version == 2
    endpoint.add_default(v2)
    defs = _defs(pipeline, datastore)
    tick = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)

    def tags(name):
        context = build_schedule_context(instance, scheduled_execution_time=tick)
        result = defs.resolve_schedule_def(name).evaluate_tick(context)
        return result.run_requests[0].tags if result.run_requests else result.skip_message

    assert tags("fixed")[PUBLISHED_VERSION_TAG] == "1"
    assert tags("moving")[PUBLISHED_VERSION_TAG] == "2" and tags("moving")[ENDPOINT_TAG] == "watcher_endpoint"
    v1.disable()
    assert "version 1 is disabled" in tags("fixed")


def test_create_checks_everything_before_storing(pipeline, datastore):
    with pytest.raises(ScheduleError) as info:
        Schedule.create(
            "bad name", pipeline=pipeline, experiment_name="x", store=datastore,
            recurrence=ScheduleRecurrence("Day", 1), datastore="workspace",
            pipeline_parameters={"mdoe": 1},
        )
    text = str(info.value)
    assert "name 'bad name' is not allowed" in text
    assert "either recurrence= (a schedule) or datastore=" in text
    assert "mdoe" in text and "mode" in text  # unknown parameter, with the known names
    with pytest.raises(ScheduleError, match="data_path_parameter_name 'mode' is not a DataPath parameter"):
        Schedule.create("t", pipeline=pipeline, experiment_name="x", store=datastore, datastore="workspace",
                        path_on_datastore="incoming", data_path_parameter_name="mode")
    with pytest.raises(ScheduleError, match="give polling_interval .minutes. or polling_interval_seconds, not both"):
        Schedule.create("t", pipeline=pipeline, experiment_name="x", store=datastore, datastore="workspace",
                        polling_interval=1, polling_interval_seconds=5)
    assert Schedule.list(store=datastore) == []  # nothing was stored
    Schedule.create("daily", pipeline=pipeline, experiment_name="x", store=datastore,
                    recurrence=ScheduleRecurrence("Day", 1))
    with pytest.raises(ScheduleError, match="A schedule named 'daily' already exists"):
        Schedule.create("daily", pipeline="watcher", experiment_name="x", store=datastore,
                        recurrence=ScheduleRecurrence("Day", 1))
    with pytest.raises(ScheduleError, match="No schedule named 'dialy'.*Did you mean 'daily'"):
        Schedule.get("dialy", store=datastore)


def test_disable_enable_delete_and_the_signature(pipeline, datastore):
    before = records_signature(datastore)
    schedule = Schedule.create("daily", pipeline=pipeline, experiment_name="x", store=datastore,
                               recurrence=ScheduleRecurrence("Day", 1, time_of_day="02:00"))
    created = records_signature(datastore)
    assert created != before
    schedule.disable()
    assert Schedule.get("daily", store=datastore).status == "Disabled"
    assert _defs(pipeline, datastore).resolve_schedule_def("daily").default_status == DefaultScheduleStatus.STOPPED
    assert records_signature(datastore) != created
    assert Schedule.list(store=datastore, active_only=True) == []
    schedule.enable()
    assert _defs(pipeline, datastore).resolve_schedule_def("daily").default_status == DefaultScheduleStatus.RUNNING
    assert [s.name for s in Schedule.list(pipeline=pipeline, store=datastore)] == ["daily"]
    assert Schedule.list(pipeline="other_job", store=datastore) == []
    schedule.delete()
    assert records_signature(datastore) == before
    assert list(_defs(pipeline, datastore).schedules or []) == []


def test_cli_lists_disables_and_deletes(pipeline, datastore, monkeypatch):
    monkeypatch.setenv("AML_DATASTORE_ROOT", datastore.root)
    Schedule.create("daily", pipeline=pipeline, experiment_name="nightly",
                    recurrence=ScheduleRecurrence("Day", 1, time_of_day="02:00"))
    out = io.StringIO()
    assert cli_schedules(argparse.Namespace(schedules_command="list", json=False, pipeline=None), out) == 0
    assert "daily  schedule  Active  watcher  every day at 02:00 (UTC)  experiment nightly" in out.getvalue()
    assert cli_schedules(argparse.Namespace(schedules_command="disable", name="daily"), out) == 0
    out = io.StringIO()
    cli_schedules(argparse.Namespace(schedules_command="list", json=True, pipeline=None), out)
    [row] = json.loads(out.getvalue())
    assert (row["Name"], row["Status"], row["Kind"]) == ("daily", "Disabled", "schedule")
    assert cli_schedules(argparse.Namespace(schedules_command="delete", name="daily"), out) == 0
    assert Schedule.list() == []


def _sensor_error(sensor, instance) -> str:
    with pytest.raises(Exception) as info:
        sensor.evaluate_tick(build_sensor_context(instance=instance))
    return str(info.value)


def test_a_bad_record_is_named_with_the_fix_and_the_pipeline_still_loads(pipeline, datastore, instance, monkeypatch):
    datastore._write_record("_schedules/broken.json", json.dumps(
        {"name": "broken", "job": "watcher", "experiment": "x", "created": "2026-01-01T00:00:00+00:00",
         "recurrence": {"frequency": "Day", "interval": 1, "hours": [30]}}).encode())
    datastore._write_record("_schedules/garbage.json", b"{not json")
    with pytest.warns(UserWarning) as caught:
        defs = _defs(pipeline, datastore)
    messages = "\n".join(str(w.message) for w in caught)
    assert "garbage.json is not valid JSON" in messages and "aml-assets schedules delete garbage" in messages
    assert "broken.json is invalid: hours must be integers from 0 to 23" in messages
    assert defs.resolve_job_def("watcher") is not None  # runs of the pipeline are unaffected
    # Where the schedule would be, the UI shows a sensor that fails with the problem.
    assert "hours must be integers from 0 to 23" in _sensor_error(defs.resolve_sensor_def("broken"), instance)

    monkeypatch.setenv("AML_DATASTORE_ROOT", datastore.root)
    out = io.StringIO()
    cli_schedules(argparse.Namespace(schedules_command="list", json=False, pipeline=None), out)
    assert "garbage  BROKEN" in out.getvalue() and "broken  BROKEN" in out.getvalue()
    for name in ("garbage", "broken"):
        assert cli_schedules(argparse.Namespace(schedules_command="delete", name=name), io.StringIO()) == 0
    assert Schedule.broken() == [] and list(_defs(pipeline, datastore).sensors or []) == []


def test_a_record_that_no_longer_fits_the_pipeline_is_reported(pipeline, datastore, instance, tmp_path):
    Schedule.create("on_files", pipeline=pipeline, experiment_name="x", store=datastore, datastore="workspace",
                    path_on_datastore="incoming", data_path_parameter_name="raw", pipeline_parameters={"mode": "a"})
    changed = Pipeline("watcher", [PythonScriptStep(
        "read", "read.py", tmp_path / "code", arguments=["--out", OutputDataset("copied")])])
    with pytest.warns(UserWarning, match="sets parameters \\['mode'\\], which pipeline 'watcher' does not have"):
        defs = changed.to_definitions({"cpucluster": LocalProcessCluster(), "workspace": datastore})
    message = _sensor_error(defs.resolve_sensor_def("on_files"), instance)
    assert "parameter 'raw', which is not a DataPath parameter" in message
    assert "aml-assets schedules delete on_files" in message


class _DownDatastore(LocalDatastore):
    """A datastore whose listing fails like an unreachable endpoint."""

    def list_dir(self, rel: str) -> list[str]:
        raise DatastoreError(f"Datastore '{self.name}': could not list '{rel}': the endpoint is unreachable")


def test_an_unreachable_store_leaves_the_code_location_loadable(pipeline, tmp_path):
    store = _DownDatastore(name="workspace", root=str(tmp_path / "down"))
    with pytest.warns(UserWarning, match="Could not read the schedules of pipeline 'watcher'.*unreachable"):
        defs = _defs(pipeline, store)
    assert defs.resolve_job_def("watcher") is not None
    assert list(defs.schedules or []) == [] and list(defs.sensors or []) == []


# --- data-change triggers: local folder ----------------------------------------------------------
def _trigger(pipeline, store, name="on_new_data", **kw):
    Schedule.create(
        name, pipeline=pipeline, experiment_name="incoming", store=store,
        datastore="workspace", path_on_datastore="incoming", polling_interval_seconds=1,
        data_path_parameter_name="raw", pipeline_parameters={"mode": "slow"}, **kw,
    )
    return _defs(pipeline, store).resolve_sensor_def(name)


def _tick(sensor, store, instance, cursor):
    result = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor, resources={"workspace": store}))
    return result.run_requests, result.cursor, result.skip_message


def test_trigger_sees_subfolders_and_starts_one_run_per_new_content(pipeline, datastore, instance):
    root = Path(datastore.root)
    (root / "incoming").mkdir(parents=True)
    (root / "incoming" / "before.csv").write_text("old\n")
    _backdate(root / "incoming" / "before.csv", 3600)  # there before the trigger: the baseline
    sensor = _trigger(pipeline, datastore)
    assert sensor.minimum_interval_seconds == 1  # (at least one second)
    assert sensor.default_status == DefaultSensorStatus.RUNNING

    requests, cursor, skip = _tick(sensor, datastore, instance, None)
    assert requests == [] and "No new or changed files" in skip

    nested = root / "incoming" / "2026" / "01" / "batch.csv"
    nested.parent.mkdir(parents=True)
    nested.write_text("a,b\n1,2\n")
    for name in (".hidden.csv", "batch.csv.tmp", "upload.part", "~lock.csv", "notes.txt~"):
        (nested.parent / name).write_text("partial")
        _backdate(nested.parent / name)
    _backdate(nested)
    [request], cursor, _ = _tick(sensor, datastore, instance, cursor)
    assert request.run_config == {"resources": {"pipeline": {"config": {
        "mode": "slow", "raw": {"datastore": "workspace", "path_on_datastore": "incoming/2026/01/batch.csv"}}}}}
    assert request.tags[TRIGGER_PATH_TAG] == "incoming/2026/01/batch.csv"
    assert request.tags[SUBMITTED_VIA_TAG] == "trigger"
    assert request.tags[SCHEDULE_TAG] == "on_new_data"
    assert request.run_key.startswith("incoming/2026/01/batch.csv@")
    first_key = request.run_key

    assert _tick(sensor, datastore, instance, cursor)[0] == []  # seen

    nested.write_text("a,b\n1,2\n")  # the same content, written again
    _backdate(nested, 10)
    requests, cursor, _ = _tick(sensor, datastore, instance, cursor)
    assert requests == []

    nested.write_text("a,b\n1,3\n")  # changed content
    _backdate(nested, 5)
    [request], cursor, _ = _tick(sensor, datastore, instance, cursor)
    assert request.run_key != first_key
    assert _tick(sensor, datastore, instance, cursor)[0] == []


def test_a_file_still_being_written_waits_until_it_is_complete(pipeline, datastore, instance):
    sensor = _trigger(pipeline, datastore)
    _, cursor, _ = _tick(sensor, datastore, instance, None)
    landing = Path(datastore.root) / "incoming" / "deep" / "big.csv"
    landing.parent.mkdir(parents=True)
    landing.write_text("a,b\n")
    stop = threading.Event()

    def keep_writing():  # a slow upload: a line every 0.3 s, never quiet for the settle window
        with landing.open("a") as fh:
            while not stop.wait(0.3):
                fh.write("1,2\n")
                fh.flush()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        requests, cursor, skip = _tick(sensor, datastore, instance, cursor)
    finally:
        stop.set()
        writer.join()
    assert requests == [] and "1 file(s) still being written" in skip
    # Quiet now: the next tick waits out the short settle window itself and takes the whole file.
    started = time.monotonic()
    [request], cursor, _ = _tick(sensor, datastore, instance, cursor)
    assert request.tags[TRIGGER_PATH_TAG] == "incoming/deep/big.csv"
    assert time.monotonic() - started < 5


def test_a_file_that_just_landed_is_taken_in_the_same_tick(pipeline, datastore, instance):
    """A complete file a moment old is not left for a whole polling interval: the tick waits
    the settle window (2 s) and takes it."""
    sensor = _trigger(pipeline, datastore)
    _, cursor, _ = _tick(sensor, datastore, instance, None)
    landing = Path(datastore.root) / "incoming" / "new.csv"
    landing.parent.mkdir(parents=True, exist_ok=True)
    landing.write_text("a\n1\n")
    started = time.monotonic()
    [request], cursor, _ = _tick(sensor, datastore, instance, cursor)
    assert request.tags[TRIGGER_PATH_TAG] == "incoming/new.csv"
    assert 1.5 <= time.monotonic() - started < 5


def test_cursor_stays_compact(tmp_path):
    files = {f"incoming/batch-{i:05d}/part.csv": ["0123456789abcdef", "b3:" + "0" * 32] for i in range(2000)}
    text = TriggerCursor(files).serialize()
    assert text.startswith("z:") and len(text) < 20_000
    assert TriggerCursor.parse(text).files == files
    assert is_ignored("steps/read/abc/x.csv") and is_ignored("incoming/.x/y.csv", "incoming")
    assert not is_ignored(".landing/y.csv", ".landing")


# --- data-change triggers: Azure Blob (Azurite) ---------------------------------------------------
@pytest.mark.azurite
def test_trigger_on_azure_blob_sees_subfolders_and_same_content_once(pipeline, azurite, instance, monkeypatch):
    from aml_assets.data.azure import AzureBlobDatastore

    container = f"t{uuid.uuid4().hex[:16]}"
    azurite.create_container(container)
    monkeypatch.setenv("AML_TEST_SCHEDULES_CS", azurite.connection_string)
    store = AzureBlobDatastore(name="workspace", container=container,
                               connection_string=EnvVar("AML_TEST_SCHEDULES_CS"), prefix="aml")
    sensor = _trigger(pipeline, store)
    requests, cursor, _ = _tick(sensor, store, instance, None)
    assert requests == []
    fs = store.filesystem()
    fs.pipe_file(store.path("incoming/2026/01/batch.csv"), b"a,b\n1,2\n")
    fs.pipe_file(store.path("incoming/2026/01/batch.csv.part"), b"a,b\n")
    [request], cursor, _ = _tick(sensor, store, instance, cursor)
    assert request.run_config["resources"]["pipeline"]["config"]["raw"] == {
        "datastore": "workspace", "path_on_datastore": "incoming/2026/01/batch.csv"}
    assert _tick(sensor, store, instance, cursor)[0] == []
    fs.pipe_file(store.path("incoming/2026/01/batch.csv"), b"a,b\n1,2\n")  # same bytes, new ETag
    requests, cursor, _ = _tick(sensor, store, instance, cursor)
    assert requests == []
    fs.pipe_file(store.path("incoming/2026/01/batch.csv"), b"a,b\n9,9\n")
    [changed], cursor, _ = _tick(sensor, store, instance, cursor)
    assert changed.run_key != request.run_key


# --- end to end: a real dagster-daemon ------------------------------------------------------------
DEFS = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})  # the test module's pipeline, also for code servers started by the test
from aml_assets import LocalProcessCluster
from tests.test_schedules import watcher_pipeline, workspace_store

HERE = Path(__file__).parent
defs = watcher_pipeline(HERE / "code").to_definitions(
    {{"workspace": workspace_store(HERE), "cpucluster": LocalProcessCluster()}}
)
"""


def workspace_store(project: Path):
    """The daemon test's workspace datastore: Azurite when the test set its container (the
    run worker and the code servers read the same variables), else a local folder."""
    container = os.environ.get("AML_TEST_TRIGGER_CONTAINER")
    if container:
        from aml_assets.data.azure import AzureBlobDatastore

        return AzureBlobDatastore(name="workspace", container=container,
                                  connection_string=EnvVar("AML_TEST_TRIGGER_CS"), prefix="aml")
    return LocalDatastore(name="workspace", root=str(project / "datastore"))

INSTANCE = """
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
    dequeue_interval_seconds: 1
telemetry:
  enabled: false
"""


def _start_daemon(project: Path, env: dict, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(project / "workspace.yaml")],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; daemon log:\n{log.read_text()[-4000:]}")


@pytest.fixture(params=["local", "azurite"])
def watched_store(request, tmp_path, monkeypatch):
    """(where files land, how to drop one) on a local folder and on Azurite."""
    if request.param == "azurite":
        azurite = request.getfixturevalue("azurite")
        container = f"t{uuid.uuid4().hex[:16]}"
        azurite.create_container(container)
        monkeypatch.setenv("AML_TEST_TRIGGER_CONTAINER", container)
        monkeypatch.setenv("AML_TEST_TRIGGER_CS", azurite.connection_string)
    else:
        monkeypatch.delenv("AML_TEST_TRIGGER_CONTAINER", raising=False)
    store = workspace_store(tmp_path / "proj")

    def drop(rel: str, data: bytes) -> None:
        local = store.local_path(rel)
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
        else:  # a blob is committed in one call: listed only once complete
            store.filesystem().pipe_file(store.path(rel), data)

    return store, drop


@pytest.mark.slow
def test_daemon_starts_one_run_for_a_dropped_file_and_none_after_a_restart(tmp_path, monkeypatch, watched_store):
    store, drop = watched_store
    project = tmp_path / "proj"
    project.mkdir()
    repo_root = Path(__file__).resolve().parent.parent
    (project / "defs.py").write_text(DEFS.format(repo=str(repo_root)))
    (project / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: defs.py\n      working_directory: {project}\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    pipeline = watcher_pipeline(project / "code")
    trigger = Schedule.create(
        "on_landing", pipeline=pipeline, experiment_name="incoming", store=store, datastore="workspace",
        path_on_datastore="landing", polling_interval_seconds=1, data_path_parameter_name="raw",
    )
    # A schedule whose start_time is long past: Dagster must not backfill its missed ticks.
    Schedule.create("every_minute", pipeline=pipeline, experiment_name="clock", store=store,
                    recurrence=ScheduleRecurrence("Minute", 1, start_time="2020-01-01T00:00:00"))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    log = tmp_path / "daemon.log"
    store.write_bytes("incoming/seed.csv", b"a\n0\n")  # the DataPath parameter's default
    with DagsterInstance.get() as instance:
        # Asked for explicitly: one run now, queued through the workspace like any submitted run.
        now = Schedule.create("hourly_now", pipeline=pipeline, experiment_name="clock", store=store,
                              recurrence=ScheduleRecurrence("Hour", 1), run_at_creation=True,
                              workspace=project / "workspace.yaml", instance=instance)
        created_run = instance.get_run_by_id(now.creation_run_id)
        assert created_run.status == DagsterRunStatus.QUEUED
        assert created_run.tags[SCHEDULE_TAG] == "hourly_now" and created_run.tags[SUBMITTED_VIA_TAG] == "schedule"
    daemon = _start_daemon(project, env, log)
    try:
        with DagsterInstance.get() as instance:
            def trigger_ticks():
                return [t for s in instance.all_instigator_state() if s.instigator_name == "on_landing"
                        for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)]

            _wait(trigger_ticks, 90, "the trigger's first evaluation", log)
            drop("landing/2026/batch.csv.tmp", b"a\n1\n")  # a partial upload's name: ignored
            drop("landing/2026/batch.csv", b"a\n1\n")
            dropped_at = time.monotonic()

            def trigger_runs():
                return instance.get_runs(RunsFilter(tags={SCHEDULE_TAG: "on_landing"}))

            [run] = _wait(trigger_runs, 60, "the run the dropped file starts", log)
            assert run.run_config["resources"]["pipeline"]["config"]["raw"] == {
                "datastore": "workspace", "path_on_datastore": "landing/2026/batch.csv"}
            assert run.tags[TRIGGER_PATH_TAG] == "landing/2026/batch.csv"
            landed_to_run = time.monotonic() - dropped_at
            finished = _wait(
                lambda: (r := instance.get_run_by_id(run.run_id)).is_finished and r, 120, "the run to finish", log
            )
            assert finished.status == DagsterRunStatus.SUCCESS, log.read_text()[-3000:]

            _stop(daemon, signal.SIGKILL)  # a crash, not a clean shutdown
            ticks_before = len(trigger_ticks())
            daemon = _start_daemon(project, env, log)
            _wait(lambda: len(trigger_ticks()) >= ticks_before + 2, 60, "two evaluations after the restart", log)
            assert len(trigger_runs()) == 1, "the restarted daemon started the same file again"

            schedule_runs = instance.get_runs(RunsFilter(tags={SCHEDULE_TAG: "every_minute"}))
            assert len(schedule_runs) <= 2, "the schedule backfilled ticks from before it existed"

            # The CLI's disable also stops the running sensor in the instance (what the UI shows).
            trigger.disable(instance)
            assert trigger.effective_status(instance) == "Disabled"
            trigger.enable(instance)
            assert trigger.effective_status(instance) == "Active"
            print(f"file landed -> run created: {landed_to_run:.1f} s")
    finally:
        _stop(daemon)
