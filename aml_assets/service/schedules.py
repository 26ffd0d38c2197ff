"""Schedules and data-change triggers of pipelines (Azure ML's ``Schedule`` and ``ScheduleRecurrence``).

```python
Schedule.create("nightly", pipeline=published, experiment_name="nightly",
                recurrence=ScheduleRecurrence("Day", 1, time_of_day="02:00", time_zone="Europe/Berlin"))
Schedule.create("on_new_data", pipeline=pipeline, experiment_name="incoming",
                datastore="workspace", path_on_datastore="incoming", polling_interval=1,
                data_path_parameter_name="raw")
```

A schedule is a record on the workspace datastore (``_schedules/<name>.json``); the pipeline's
code location turns it into a Dagster schedule or sensor (``aml_assets.pipeline.instigators``),
which a ``dagster-daemon`` runs. A running daemon or webserver sees a new, changed or deleted
schedule once its code location is reloaded (``aml-assets up`` reloads it when
``records_signature`` changes; otherwise reload it in the UI or restart the daemon).

Unlike Azure, a schedule never runs at creation unless ``run_at_creation=True``, a trigger
watches subfolders and local folders as well as Azure Blob, and ``regenerate_outputs`` (Azure's
``force_rerun``) is honoured by scheduled runs.

Enabled or disabled: the record's status is the default; starting or stopping the schedule in
the Dagster UI is stored in the instance and wins. ``enable()``/``disable()`` (and
``aml-assets schedules enable/disable``) set the record and, when the instance has a stored
state for the schedule, that state too, so the CLI and the UI agree after either.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aml_assets.data import layout
from aml_assets.data.datastore import Datastore
from aml_assets.pipeline.instigators import (
    ACTIVE,
    DEFAULT_SETTLE_SECONDS,
    DISABLED,
    BrokenRecord,
    ScheduleRecord,
    read_record,
    read_records,
    run_tags,
)
from aml_assets.pipeline.recurrence import ScheduleError, ScheduleRecurrence
from aml_assets.pipeline.tags import parameters_run_config

if TYPE_CHECKING:
    from dagster import DagsterInstance

__all__ = ["Schedule", "ScheduleError", "ScheduleRecurrence", "cli_schedules", "records_signature"]

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def _workspace(store: Datastore | None) -> Datastore:
    if store is not None:
        return store
    from aml_assets.data.workspace import workspace_datastore

    return workspace_datastore()


def _target(pipeline: Any) -> dict[str, Any]:
    """What a schedule of ``pipeline`` starts: the job, the published version or endpoint, and
    the parameter objects (None when only a job name is known)."""
    from aml_assets.pipeline.definition import Pipeline
    from aml_assets.pipeline.publish import PipelineEndpoint, PublishedPipeline

    if isinstance(pipeline, str):
        return {"job": pipeline, "parameters": None}
    if isinstance(pipeline, Pipeline):
        return {"job": pipeline.name, "parameters": pipeline.parameters()}
    if isinstance(pipeline, PublishedPipeline):
        return {
            "job": pipeline.pipeline_name,
            "parameters": pipeline.parameter_objects(),
            "published_id": pipeline.id,
            "published_tags": pipeline.run_tags(),
        }
    if isinstance(pipeline, PipelineEndpoint):
        default = pipeline.get_pipeline()
        return {"job": default.pipeline_name, "parameters": default.parameter_objects(), "endpoint": pipeline.name}
    raise ScheduleError(
        f"pipeline= must be a Pipeline, a PublishedPipeline, a PipelineEndpoint or a job name; "
        f"got {type(pipeline).__name__}."
    )


def _plain_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter values for a job known only by name (DataPath objects as their mappings)."""
    out = {}
    for name, value in values.items():
        out[name] = value.to_record() if hasattr(value, "to_record") and hasattr(value, "path_on_datastore") else value
    return out


class Schedule:
    """A stored schedule or data-change trigger of a pipeline (Azure ML's ``Schedule``)."""

    def __init__(self, record: ScheduleRecord, store: Datastore):
        self._record = record
        self._store = store
        #: The run started by ``run_at_creation=True`` (None otherwise).
        self.creation_run_id: str | None = None

    # --- creating ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        pipeline: Any,
        experiment_name: str,
        recurrence: ScheduleRecurrence | None = None,
        pipeline_parameters: Mapping[str, Any] | None = None,
        description: str | None = None,
        datastore: str | Datastore | None = None,
        path_on_datastore: str | None = None,
        polling_interval: float | None = None,
        data_path_parameter_name: str | None = None,
        regenerate_outputs: bool = False,
        run_at_creation: bool = False,
        store: Datastore | None = None,
        *,
        polling_interval_seconds: float | None = None,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        workspace: str | Path = "workspace.yaml",
        instance: DagsterInstance | None = None,
    ) -> Schedule:
        """Store a schedule (``recurrence``) or a data-change trigger (``datastore`` and
        ``path_on_datastore``) of ``pipeline``: a Pipeline, a PublishedPipeline (that version
        runs), a PipelineEndpoint (its default version at each run) or a job name.

        ``datastore`` is the watched datastore's resource key (a Datastore object stands for its
        ``name``); ``polling_interval`` is in minutes (floats allowed; default 5) or give
        ``polling_interval_seconds``; ``data_path_parameter_name`` names the DataPath parameter
        that receives the changed file. ``store`` holds the record (the workspace datastore by
        default). With ``run_at_creation=True`` one run is submitted now through
        ``service.submit.Submitter(workspace, instance)``; otherwise the first run is at the
        first tick after creation (or the first file change).
        """
        problems = []
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"name '{name}' is not allowed; use letters, digits and underscores (a Dagster name)")
        if not isinstance(experiment_name, str) or not experiment_name.strip():
            problems.append("experiment_name is required (the experiment the runs are grouped under)")
        trigger = datastore is not None
        if recurrence is not None and trigger:
            problems.append("give either recurrence= (a schedule) or datastore= (a data-change trigger), not both")
        if recurrence is None and not trigger:
            problems.append("give recurrence= for a schedule, or datastore= and path_on_datastore= for a data-change trigger")
        if recurrence is not None and not isinstance(recurrence, ScheduleRecurrence):
            problems.append(f"recurrence must be a ScheduleRecurrence, not {type(recurrence).__name__}")
        interval_seconds = None
        if trigger:
            if polling_interval is not None and polling_interval_seconds is not None:
                problems.append("give polling_interval (minutes) or polling_interval_seconds, not both")
            interval_seconds = (
                float(polling_interval_seconds) if polling_interval_seconds is not None
                else float(polling_interval if polling_interval is not None else 5) * 60
            )
            if not interval_seconds > 0:
                problems.append(f"the polling interval must be > 0; got {interval_seconds} seconds")
            if settle_seconds < 0:
                problems.append(f"settle_seconds must be >= 0; got {settle_seconds}")
        else:
            for label, value in (("path_on_datastore", path_on_datastore), ("polling_interval", polling_interval),
                                 ("polling_interval_seconds", polling_interval_seconds),
                                 ("data_path_parameter_name", data_path_parameter_name)):
                if value is not None:
                    problems.append(f"{label} is only for a data-change trigger (with datastore=)")
        target = _target(pipeline)
        values = dict(pipeline_parameters or {})
        params = target["parameters"]
        if params is not None:
            from aml_assets.pipeline.datapath import DataPathParameter
            from aml_assets.pipeline.parameters import check_assignments

            values, found = check_assignments(params, values)
            problems += found
            if data_path_parameter_name is not None:
                datapaths = sorted(p.name for p in params if isinstance(p, DataPathParameter))
                if data_path_parameter_name not in datapaths:
                    problems.append(
                        f"data_path_parameter_name '{data_path_parameter_name}' is not a DataPath parameter "
                        f"of pipeline '{target['job']}' (its DataPath parameters: {', '.join(datapaths) or 'none'})"
                    )
        else:
            values = _plain_values(values)
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise ScheduleError(f"Cannot create schedule '{name}':\n{lines}", problems)
        watched = datastore.name if isinstance(datastore, Datastore) else datastore
        record = ScheduleRecord(
            name=name,
            job=target["job"],
            experiment=experiment_name,
            created=datetime.now(timezone.utc).isoformat(),
            description=description,
            recurrence=recurrence.to_record() if recurrence is not None else None,
            parameters=values,
            datastore=watched,
            path_on_datastore=(path_on_datastore or "").strip("/"),
            polling_interval_seconds=interval_seconds,
            data_path_parameter_name=data_path_parameter_name,
            settle_seconds=float(settle_seconds),
            regenerate_outputs=bool(regenerate_outputs),
            published_id=target.get("published_id"),
            published_tags=target.get("published_tags") or {},
            endpoint=target.get("endpoint"),
        )
        if record.problems():
            raise ScheduleError(f"Cannot create schedule '{name}': {'; '.join(record.problems())}", record.problems())
        store = _workspace(store)
        if not store._create_record(layout.schedule_record(name), record.to_bytes()):
            raise ScheduleError(
                f"A schedule named '{name}' already exists on datastore '{store.name}'. Delete it first "
                f"(Schedule.get('{name}').delete(), or aml-assets schedules delete {name}) or choose another name."
            )
        schedule = cls(record, store)
        if run_at_creation:
            schedule.creation_run_id = schedule.submit_now(workspace, instance)
        return schedule

    def submit_now(self, workspace: str | Path = "workspace.yaml", instance: DagsterInstance | None = None) -> str:
        """Submit one run of this schedule now (what ``run_at_creation=True`` does); its run id."""
        from aml_assets.service.submit import Submitter

        tags = run_tags(self._record, self._store, "schedule")
        with Submitter(workspace, instance=instance) as submitter:
            return submitter.submit(self._record.job, parameters_run_config(self._record.parameters), tags)

    # --- reading ----------------------------------------------------------------------------
    @classmethod
    def get(cls, name: str, store: Datastore | None = None) -> Schedule:
        """The schedule named ``name``."""
        store = _workspace(store)
        record = read_record(store, name) if _NAME.fullmatch(name or "") else None
        if record is None:
            import difflib

            known = [r.name for r in read_records(store)]
            close = difflib.get_close_matches(name, known, n=1)
            raise ScheduleError(
                f"No schedule named '{name}' on datastore '{store.name}' ({store.uri()}); schedules: "
                f"{', '.join(known) or 'none'}." + (f" Did you mean '{close[0]}'?" if close else "")
            )
        return cls(record, store)

    @classmethod
    def list(cls, pipeline: Any = None, active_only: bool = False, store: Datastore | None = None) -> list[Schedule]:
        """Every schedule (of ``pipeline`` only, when given: a Pipeline, PublishedPipeline,
        PipelineEndpoint or job name), by name."""
        store = _workspace(store)
        broken: list[BrokenRecord] = []
        schedules = [cls(r, store) for r in read_records(store, broken)]
        for bad in broken:
            warnings.warn(str(bad.error), stacklevel=2)
        if pipeline is not None:
            target = _target(pipeline)
            schedules = [s for s in schedules if s._matches(target)]
        return [s for s in schedules if s.status == ACTIVE or not active_only]

    @classmethod
    def broken(cls, store: Datastore | None = None) -> list[BrokenRecord]:
        """The records that cannot be used (malformed), with what is wrong and the fix."""
        found: list[BrokenRecord] = []
        read_records(_workspace(store), found)
        return found

    @classmethod
    def remove(cls, name: str, store: Datastore | None = None, instance: DagsterInstance | None = None) -> None:
        """Delete the schedule ``name``, even when its record is malformed."""
        store = _workspace(store)
        if not _NAME.fullmatch(name or "") or not store.exists(layout.schedule_record(name)):
            cls.get(name, store)  # raises, naming the schedules there are
        store._delete_record(layout.schedule_record(name))
        _sync_state(instance, name, None)

    def _matches(self, target: Mapping[str, Any]) -> bool:
        r = self._record
        if target.get("endpoint"):
            return r.endpoint == target["endpoint"]
        if target.get("published_id"):
            return r.published_id == target["published_id"]
        return r.job == target["job"]

    # --- properties -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._record.name

    id = name

    @property
    def record(self) -> ScheduleRecord:
        return self._record

    @property
    def job(self) -> str:
        """The Dagster job (pipeline) the schedule starts."""
        return self._record.job

    @property
    def pipeline_id(self) -> str | None:
        """The published pipeline's id, when the schedule runs a published version."""
        return self._record.published_id

    @property
    def pipeline_endpoint_id(self) -> str | None:
        """The endpoint's name, when the schedule runs an endpoint's default version."""
        return self._record.endpoint

    @property
    def experiment_name(self) -> str:
        return self._record.experiment

    @property
    def description(self) -> str | None:
        return self._record.description

    @property
    def recurrence(self) -> ScheduleRecurrence | None:
        return self._record.schedule_recurrence()

    @property
    def pipeline_parameters(self) -> dict[str, Any]:
        return dict(self._record.parameters)

    @property
    def datastore_name(self) -> str | None:
        return self._record.datastore

    @property
    def path_on_datastore(self) -> str | None:
        return self._record.path_on_datastore if self._record.is_trigger else None

    @property
    def polling_interval(self) -> float | None:
        """Minutes between looks at the watched path (a trigger)."""
        seconds = self._record.polling_interval_seconds
        return seconds / 60 if seconds is not None else None

    @property
    def data_path_parameter_name(self) -> str | None:
        return self._record.data_path_parameter_name

    @property
    def regenerate_outputs(self) -> bool:
        return self._record.regenerate_outputs

    @property
    def is_trigger(self) -> bool:
        return self._record.is_trigger

    @property
    def status(self) -> str:
        """``Active`` or ``Disabled`` as recorded (see ``effective_status`` for the UI's say)."""
        return self._record.status

    @property
    def created(self) -> str:
        return self._record.created

    def effective_status(self, instance: DagsterInstance | None) -> str:
        """The status the daemon follows: a start/stop stored by the UI wins over the record."""
        from dagster._core.scheduler.instigation import InstigatorStatus

        for state in _states(instance, self.name):
            if state.status == InstigatorStatus.RUNNING:
                return ACTIVE
            if state.status == InstigatorStatus.STOPPED:
                return DISABLED
        return self.status

    def when(self) -> str:
        """In words: the recurrence, or what the trigger watches."""
        r = self._record
        if r.is_trigger:
            seconds = r.polling_interval_seconds or 0
            return f"files under {r.datastore}:{r.path_on_datastore or '/'} (every {seconds:g} s)"
        recurrence = self.recurrence
        return recurrence.describe() if recurrence else ""

    def to_json(self) -> dict[str, Any]:
        """What ``aml-assets schedules list --json`` prints for this schedule."""
        r = self._record
        return {
            "Name": r.name, "Kind": "trigger" if r.is_trigger else "schedule", "Status": r.status,
            "Pipeline": r.job, "PipelineId": r.published_id, "PipelineEndpoint": r.endpoint,
            "Experiment": r.experiment, "Description": r.description, "When": self.when(),
            "Recurrence": r.recurrence, "PipelineParameters": r.parameters, "Datastore": r.datastore,
            "PathOnDatastore": self.path_on_datastore, "PollingIntervalSeconds": r.polling_interval_seconds,
            "DataPathParameterName": r.data_path_parameter_name, "RegenerateOutputs": r.regenerate_outputs,
            "Created": r.created,
        }

    def __repr__(self) -> str:
        return f"Schedule(name={self.name!r}, job={self.job!r}, status={self.status!r}, when={self.when()!r})"

    # --- changing ---------------------------------------------------------------------------
    def enable(self, instance: DagsterInstance | None = None) -> None:
        """Run this schedule again: the record, and the instance's stored state if any."""
        self._set_status(ACTIVE, instance)

    def disable(self, instance: DagsterInstance | None = None) -> None:
        """Stop this schedule (its runs so far stay): the record, and the stored state if any."""
        self._set_status(DISABLED, instance)

    def _set_status(self, status: str, instance: DagsterInstance | None) -> None:
        import dataclasses

        current = read_record(self._store, self.name)
        if current is None:
            raise ScheduleError(f"Schedule '{self.name}' was deleted from datastore '{self._store.name}'.")
        self._record = dataclasses.replace(current, status=status)
        self._store._write_record(layout.schedule_record(self.name), self._record.to_bytes())
        _sync_state(instance, self.name, status)

    def delete(self, instance: DagsterInstance | None = None) -> None:
        """Delete this schedule's record (and the instance's stored state and cursor of it)."""
        self._store._delete_record(layout.schedule_record(self.name))
        _sync_state(instance, self.name, None)


# --- the instance's stored state ------------------------------------------------------------
def _default_instance() -> DagsterInstance | None:
    """The project's instance when one is configured (``$DAGSTER_HOME``), else None."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    from dagster import DagsterInstance

    return DagsterInstance.get()


def _states(instance: DagsterInstance | None, name: str) -> list[Any]:
    from dagster._core.scheduler.instigation import InstigatorType

    if instance is None:
        return []
    return [
        s for s in instance.all_instigator_state()
        if s.instigator_name == name and s.instigator_type in (InstigatorType.SCHEDULE, InstigatorType.SENSOR)
    ]


def _sync_state(instance: DagsterInstance | None, name: str, status: str | None) -> None:
    """Make the instance's stored state of schedule ``name`` say ``status`` (None: forget it).

    A stored RUNNING/STOPPED state (the UI's toggle) wins over the code's default status, so it
    is set explicitly; a schedule restarted this way starts from now (no catch-up of the ticks
    it missed while stopped); a trigger keeps its cursor.
    """
    import time

    from dagster._core.scheduler.instigation import (
        InstigatorStatus,
        InstigatorType,
        ScheduleInstigatorData,
    )

    for state in _states(instance, name):
        if status is None:
            instance.delete_instigator_state(state.instigator_origin_id, state.selector_id)
        elif status == DISABLED and state.status != InstigatorStatus.STOPPED:
            instance.update_instigator_state(state.with_status(InstigatorStatus.STOPPED))
        elif status == ACTIVE and state.status == InstigatorStatus.STOPPED:
            running = state.with_status(InstigatorStatus.RUNNING)
            if state.instigator_type == InstigatorType.SCHEDULE and state.instigator_data is not None:
                data = state.instigator_data
                running = running.with_data(ScheduleInstigatorData(data.cron_schedule, start_timestamp=time.time()))
            instance.update_instigator_state(running)


# --- for the supervisor and the CLI ---------------------------------------------------------
def records_signature(store: Datastore | None = None) -> str:
    """A digest of the schedule records' listing (names, sizes, modification times or ETags):
    it changes whenever a schedule is created, changed or deleted, so a supervisor can poll it
    cheaply and reload the code location."""
    store = _workspace(store)
    fs = store.filesystem()
    full = store.path(layout.SCHEDULES)
    fs.invalidate_cache(full)
    try:
        entries = fs.ls(full, detail=True)
    except FileNotFoundError:
        entries = []
    rows = sorted(
        (str(e.get("name")), e.get("size"), str(e.get("mtime", e.get("last_modified"))), str(e.get("etag", "")))
        for e in entries
    )
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def cli_schedules(args: Any, out: TextIO | None = None) -> int:
    """``aml-assets schedules list [--json] [--pipeline NAME] | enable NAME | disable NAME |
    delete NAME``: ``args.schedules_command``, ``args.name``, ``args.json``, ``args.pipeline``."""
    out = out or sys.stdout
    instance = _default_instance()
    try:
        command = args.schedules_command
        if command == "list":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # broken records are listed below
                schedules = Schedule.list(pipeline=getattr(args, "pipeline", None))
            broken = Schedule.broken()
            if getattr(args, "json", False):
                rows = [{**s.to_json(), "EffectiveStatus": s.effective_status(instance)} for s in schedules]
                rows += [{"Name": b.name, "Kind": "broken", "Pipeline": b.job, "Problem": str(b.error)} for b in broken]
                out.write(json.dumps(rows, indent=1) + "\n")
                return 0
            for bad in broken:
                out.write(f"{bad.name}  BROKEN  {bad.error}\n")
            if not schedules and not broken:
                out.write("No schedules. Create one with Schedule.create (aml_assets.service.schedules).\n")
                return 0
            for s in schedules:
                status = s.effective_status(instance)
                note = f" (record: {s.status}; set in the Dagster UI)" if status != s.status else ""
                out.write(f"{s.name}  {'trigger' if s.is_trigger else 'schedule'}  {status}{note}  "
                          f"{s.job}  {s.when()}  experiment {s.experiment_name}\n")
            return 0
        if command == "delete":
            Schedule.remove(args.name, instance=instance)
            out.write(f"Schedule '{args.name}' deleted. A running daemon follows once its code location "
                      "reloads (aml-assets up reloads it by itself).\n")
            return 0
        schedule = Schedule.get(args.name)
        if command == "enable":
            schedule.enable(instance)
        elif command == "disable":
            schedule.disable(instance)
        else:
            raise ScheduleError(f"Unknown schedules command '{command}'; use list, enable, disable or delete.")
        done = {"enable": "enabled", "disable": "disabled"}[command]
        out.write(f"Schedule '{schedule.name}' {done}. A running daemon follows once its code location "
                  "reloads (aml-assets up reloads it by itself).\n")
        return 0
    finally:
        if instance is not None:
            instance.dispose()
