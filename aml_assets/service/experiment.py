"""Azure ML's run API on Dagster: ``Experiment``, ``PipelineRun`` and ``StepRun``.

``Experiment(name).submit(pipeline)`` submits an ordinary Dagster run of the pipeline's job
through the instance's run queue, tagged ``aml/experiment=<name>`` (filter the UI's run list on
that tag to see an experiment). ``PipelineRun`` reads everything back from the instance: the
run's status in Azure's words, its steps from the event log (ran or reused, why, metrics), a
step's script output from Dagster's captured logs, and its outputs from the datastore.

Without a dagster-daemon a queued run waits forever, so ``Experiment.submit`` launches the run
at once when no daemon is dequeuing the instance's runs (see ``Experiment.submit``).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aml_assets.errors import AmlAssetsError
from aml_assets.pipeline.tags import (
    ENDPOINT_TAG,
    EXPERIMENT_TAG,
    PUBLISHED_ID_TAG,
    PUBLISHED_VERSION_TAG,
)
from aml_assets.service.submit import SubmitError, Submitter, daemon_running, submit_pipeline_run

if TYPE_CHECKING:
    from dagster import DagsterInstance

#: Dagster run status -> Azure ML's run status. "Queued" is Azure's word for a run waiting for
#: compute, which is what a run in Dagster's queue waits for (a daemon slot). A suspended run
#: waits to be resumed: not started, as far as a caller can tell; a run managed outside Dagster
#: is running there.
RUN_STATUS = {
    "QUEUED": "Queued",
    "NOT_STARTED": "NotStarted",
    "SUSPENDED": "NotStarted",
    "MANAGED": "Running",
    "STARTING": "NotStarted",
    "STARTED": "Running",
    "CANCELING": "Running",
    "SUCCESS": "Finished",
    "FAILURE": "Failed",
    "CANCELED": "Canceled",
}
TERMINAL_STATUSES = frozenset({"Finished", "Failed", "Canceled"})
_EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
#: How long a run may sit in the queue with no daemon before ``wait_for_completion`` says so.
_QUEUE_WARNING_SECONDS = 10.0


class RunNotFoundError(AmlAssetsError):
    """No run with this id in the instance's run storage."""


class RunFailedError(AmlAssetsError):
    """``wait_for_completion(raise_on_error=True)`` saw the run fail; names the failed steps."""


class RunTimeoutError(AmlAssetsError, TimeoutError):
    """``wait_for_completion`` gave up before the run ended (the run goes on)."""


def azure_status(dagster_status: Any) -> str:
    """Azure ML's word for a Dagster run status (a ``DagsterRunStatus`` or its name)."""
    name = getattr(dagster_status, "value", dagster_status)
    return RUN_STATUS.get(str(name), str(name))


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z")


# --- steps ------------------------------------------------------------------------------------
@dataclass
class StepRun:
    """One step of a pipeline run: its status, whether it was reused, its output and metrics."""

    run: PipelineRun
    name: str
    status: str = "NotStarted"
    reused: bool | None = None
    reused_from_run: str | None = None
    runs_because: str | None = None
    error: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    #: Output dataset name -> the metadata of its materialization in this run.
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.run.id}:{self.name}"

    def get_status(self) -> str:
        """NotStarted, Running, Finished, Failed, Skipped (an upstream step failed) or Canceled."""
        return self.status

    def get_metrics(self) -> dict[str, Any]:
        """What the script logged with ``Run.log`` (also kept when the step was reused)."""
        from aml_assets.service.runs import _is_metric

        metrics: dict[str, Any] = {}
        for meta in self.outputs.values():
            metrics.update({k: v for k, v in meta.items() if _is_metric(k, v)})
        return metrics

    def get_output_data(self, name: str, datastore: Any = None) -> Any:
        """An output of this step in this run: the ``RegisteredDataset`` version when the output
        is registered (``.to_pandas_dataframe()``, ``.local_path()``), else its ``DatasetRef``.
        ``datastore``: the workspace datastore (``workspace_datastore()`` by default)."""
        from aml_assets.data import layout
        from aml_assets.data.datasets import DatasetRef
        from aml_assets.data.registry import DatasetRegistry
        from aml_assets.data.workspace import workspace_datastore

        if name not in self.outputs:
            known = ", ".join(sorted(self.outputs)) or "none in this run"
            raise AmlAssetsError(
                f"Step '{self.name}' of run {self.run.id} has no output '{name}' (its outputs: {known})."
            )
        store = datastore if datastore is not None else workspace_datastore()
        meta = self.outputs[name]
        if meta.get("dataset_version") is not None:
            return DatasetRegistry(store).get(name, int(meta["dataset_version"]))
        return DatasetRef.model_validate_json(store.read_bytes(layout.run_ref(name, self.run.id)))

    def get_stdout_log(self) -> str:
        """What the step's script printed on stdout in this run ("" when it was reused)."""
        return self.run._step_log(self.name, "stdout")

    def get_stderr_log(self) -> str:
        """What the step's script wrote on stderr in this run (from a capture of the whole run's
        process, with Dagster's log lines about the step)."""
        return self.run._step_log(self.name, "stderr")

    def to_json(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Status": self.status,
            "Reused": self.reused,
            "ReusedFromRun": self.reused_from_run,
            "RunsBecause": self.runs_because,
            "Error": self.error,
            "StartTime": _iso(self.start_time),
            "EndTime": _iso(self.end_time),
            "Metrics": self.get_metrics(),
        }

    def __repr__(self) -> str:
        return f"<StepRun {self.name} of run {self.run.id[:8]}: {self.status}>"


# --- runs -------------------------------------------------------------------------------------
class PipelineRun:
    """A pipeline run in the instance's run storage (Azure ML's ``PipelineRun``).

    ``instance``: the Dagster instance the run is on (``$DAGSTER_HOME``'s by default).
    """

    def __init__(self, run_id: str, instance: DagsterInstance | None = None):
        from dagster import DagsterInstance

        self.id = run_id
        self._instance = instance if instance is not None else DagsterInstance.get()
        self._record()  # fail early on an unknown id

    @property
    def instance(self) -> DagsterInstance:
        return self._instance

    def _record(self) -> Any:
        record = self._instance.get_run_record_by_id(self.id)
        if record is None:
            raise RunNotFoundError(
                f"No run '{self.id}' on the Dagster instance at {self._instance.root_directory}; "
                "check the id (`aml-assets runs show` lists runs) and DAGSTER_HOME."
            )
        return record

    # --- what the run is ---------------------------------------------------------------------
    def get_status(self) -> str:
        """NotStarted, Queued, Running, Finished, Failed or Canceled."""
        return azure_status(self._record().dagster_run.status)

    def get_tags(self) -> dict[str, str]:
        """The run's tags, without Dagster's and aml-assets' bookkeeping ones."""
        return _user_tags(self._record().dagster_run.tags)

    @property
    def experiment_name(self) -> str | None:
        return self.get_tags().get(EXPERIMENT_TAG)

    def get_details(self) -> dict[str, Any]:
        """Azure's run details: id, status, start and end time, tags, the job and run config."""
        record = self._record()
        run = record.dagster_run
        return {
            "runId": self.id,
            "status": azure_status(run.status),
            "startTimeUtc": _iso(record.start_time),
            "endTimeUtc": _iso(record.end_time),
            "tags": _user_tags(run.tags),
            "properties": {"job": run.job_name, "dagsterStatus": run.status.value},
            "runConfig": run.run_config,
        }

    def get_steps(self) -> list[StepRun]:
        """The pipeline's steps in this run, in the order they started (not started ones last)."""
        return list(self._steps().values())

    def find_step_run(self, name: str) -> list[StepRun]:
        """The step runs named ``name`` (Azure returns a list; here at most one)."""
        return [s for s in self.get_steps() if s.name == name]

    def _pipeline_step_keys(self, run: Any) -> list[str]:
        """Keys of the steps that are pipeline steps (not source datasets), in plan order."""
        from aml_assets.compute.cluster import COMPUTE_TAG

        snapshot = self._instance.get_job_snapshot(run.job_snapshot_id) if run.job_snapshot_id else None
        if snapshot is None:
            return []
        return [op.name for op in snapshot.node_defs_snapshot.op_def_snaps if COMPUTE_TAG in (op.tags or {})]

    def _steps(self, record: Any = None) -> dict[str, StepRun]:
        from dagster import DagsterEventType

        run = (record or self._record()).dagster_run
        keys = self._pipeline_step_keys(run)
        steps = {key: StepRun(self, key) for key in keys}
        for entry in self._instance.all_logs(self.id):
            event = entry.dagster_event
            if event is None or event.step_key not in steps:
                continue
            step = steps[event.step_key]
            kind = event.event_type
            if kind == DagsterEventType.STEP_START:
                step.status, step.start_time = "Running", entry.timestamp
            elif kind == DagsterEventType.STEP_SUCCESS:
                step.status, step.end_time = "Finished", entry.timestamp
            elif kind == DagsterEventType.STEP_FAILURE:
                from aml_assets.service.runs import _failure_text

                step.status, step.end_time = "Failed", entry.timestamp
                step.error = _failure_text(event.event_specific_data.error)
            elif kind == DagsterEventType.STEP_SKIPPED:
                step.status = "Skipped"
            elif kind == DagsterEventType.ASSET_MATERIALIZATION:
                mat = event.event_specific_data.materialization
                meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
                step.outputs[mat.asset_key.to_user_string()] = meta
                if "reused" in meta:
                    step.reused = bool(meta["reused"])
                    step.reused_from_run = meta.get("reused_from_run") or None
                    step.runs_because = meta.get("runs_because") or None
        if run.is_finished:
            for step in steps.values():
                if step.status == "Running":  # the run ended under it (canceled, worker died)
                    step.status = "Canceled" if azure_status(run.status) == "Canceled" else "Failed"
                elif step.status == "NotStarted" and azure_status(run.status) == "Canceled":
                    step.status = "Canceled"
        order = {key: i for i, key in enumerate(keys)}
        return dict(
            sorted(steps.items(), key=lambda kv: (kv[1].start_time is None, kv[1].start_time or 0, order[kv[0]]))
        )

    # --- captured output -----------------------------------------------------------------
    def _captures(self) -> list[tuple[list[str], list[str]]]:
        """(log key, step keys) of each capture of this run's output, in order."""
        from dagster import DagsterEventType

        manager = self._instance.compute_log_manager
        out = []
        for entry in self._instance.all_logs(self.id, of_type=DagsterEventType.LOGS_CAPTURED):
            data = entry.dagster_event.event_specific_data
            out.append((manager.build_log_key_for_run(self.id, data.file_key), list(data.step_keys or [])))
        return out

    def _read_log(self, log_key: list[str], stream: str) -> str | None:
        """A captured stream as text (None when nothing was captured under that key)."""
        data = self._instance.compute_log_manager.get_log_data(log_key)
        raw = data.stdout if stream == "stdout" else data.stderr
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def _step_log(self, step: str, stream: str) -> str:
        """A step's captured stdout or stderr.

        A capture of the step alone is used when there is one: under Dagster's per-step key,
        written by Dagster when steps run in separate processes, and by the step launcher when
        it keeps each script's output on its own. Otherwise Dagster captured the run's process
        as a whole (the pipelines' executors run every step in one process): stderr is cut per
        step along Dagster's log lines, which name the step; stdout has no such marks, so it is
        the step's when the step is the only one in that capture whose script ran (reused steps
        and source datasets print nothing), and else is returned whole, saying so.
        """
        manager = self._instance.compute_log_manager
        own = self._read_log(manager.build_log_key_for_run(self.id, step), stream)
        if own is not None:
            return own
        steps = self._steps()
        for log_key, step_keys in self._captures():
            if step not in step_keys:
                continue
            whole = self._read_log(log_key, stream) or ""
            if stream == "stderr":
                return _stderr_of_step(whole, self.id, step)
            # Steps whose script may have printed: started, and not reused (a failed one too).
            ran = [k for k in step_keys if k in steps and steps[k].start_time and steps[k].reused is not True]
            if step not in ran:
                return ""
            if ran == [step]:
                return whole
            return (
                f"[aml-assets: steps {', '.join(ran)} ran in one process; their stdout was captured "
                "together and cannot be told apart]\n" + whole
            )
        return ""

    # --- waiting ---------------------------------------------------------------------------------
    def wait_for_completion(
        self,
        show_output: bool = True,
        timeout_seconds: float | None = None,
        raise_on_error: bool = True,
        out: TextIO | None = None,
        poll_seconds: float = 0.5,
    ) -> str:
        """Wait until the run ends; returns its final status (Finished, Failed or Canceled).

        ``show_output``: print step status changes, the steps' log messages and their scripts'
        output as they happen, then the run summary. ``timeout_seconds``: raise
        ``RunTimeoutError`` after that long (the run goes on). ``raise_on_error``: raise
        ``RunFailedError`` naming the failed steps when the run failed.
        """
        out = out or sys.stdout
        started = time.monotonic()
        follower = _Follower(self, out) if show_output else None
        warned = False
        while True:
            status = self.get_status()
            if follower is not None:
                follower.poll()
            if status in TERMINAL_STATUSES:
                break
            waited = time.monotonic() - started
            if timeout_seconds is not None and waited > timeout_seconds:
                raise RunTimeoutError(
                    f"Run {self.id} is still {status} after {timeout_seconds:g} s; it goes on. "
                    "Call wait_for_completion() again, or cancel() it."
                )
            if status == "Queued" and not warned and waited > _QUEUE_WARNING_SECONDS and not daemon_running(self._instance):
                warned = True
                print(
                    f"Run {self.id} is queued, but no dagster-daemon is running for "
                    f"{self._instance.root_directory}: it starts when one does (`aml-assets up` "
                    "or `dagster-daemon run`).",
                    file=out,
                )
            time.sleep(poll_seconds)
        if follower is not None:
            follower.poll()
            self._print_summary(status, out)
        if raise_on_error and status == "Failed":
            failed = [s for s in self.get_steps() if s.status == "Failed"]
            detail = "; ".join(f"step '{s.name}': {s.error}" for s in failed) or "see the run's log"
            raise RunFailedError(f"Run {self.id} failed ({detail}).")
        return status

    def _print_summary(self, status: str, out: TextIO) -> None:
        from aml_assets.service.runs import print_summary

        record = self._record()
        seconds = (record.end_time or time.time()) - (record.start_time or record.create_timestamp.timestamp())
        print_summary(self._instance, self.id, record.dagster_run.job_name, status == "Finished", seconds, out)

    # --- control -------------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel the run: a queued run leaves the queue, a running one is terminated.
        Returns whether Dagster accepted the request (False when the run already ended)."""
        from dagster._core.storage.dagster_run import CANCELABLE_RUN_STATUSES

        run = self._record().dagster_run
        if run.is_finished or run.status not in CANCELABLE_RUN_STATUSES:
            return False
        return bool(self._instance.run_coordinator.cancel_run(self.id))

    def to_json(self) -> dict[str, Any]:
        """The run as the HTTP API answers ``GET /api/v1/runs/<id>``."""
        record = self._record()
        tags = _user_tags(record.dagster_run.tags)
        version = tags.get(PUBLISHED_VERSION_TAG)
        return {
            "Id": self.id,
            "Status": azure_status(record.dagster_run.status),
            "Pipeline": record.dagster_run.job_name,
            "Experiment": tags.get(EXPERIMENT_TAG),
            "PipelineId": tags.get(PUBLISHED_ID_TAG),
            "Version": int(version) if version and version.isdigit() else version,
            "Endpoint": tags.get(ENDPOINT_TAG),
            "Tags": tags,
            "CreatedTime": _iso(record.create_timestamp.timestamp()),
            "StartTime": _iso(record.start_time),
            "EndTime": _iso(record.end_time),
            "Steps": [step.to_json() for step in self._steps(record).values()],
        }

    def __repr__(self) -> str:
        return f"<PipelineRun {self.id}>"


def _user_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags a user set or reads (experiment, published version, ...), not internal ones (the
    code server's socket, the worker's pid record kept by ``pipeline.orphans``)."""
    from aml_assets.pipeline.orphans import BOOT_TAG, HOST_TAG, PID_TAG, PIDNS_TAG, START_TAG

    hidden = {BOOT_TAG, HOST_TAG, PID_TAG, PIDNS_TAG, START_TAG}
    return {k: v for k, v in tags.items() if not k.startswith(".dagster/") and k not in hidden}


_DAGSTER_LINE = re.compile(r"^\S+ \S+ [+-]\d{4} - dagster - [A-Z]+ - ")


def _stderr_of_step(text: str, run_id: str, step: str) -> str:
    """The lines of a process-wide stderr capture that belong to ``step``: Dagster's log lines
    naming it, and every other line (the script's) written while it was the step logging."""
    marker = re.compile(rf" - {re.escape(run_id)} - (?:\d+ - )?(?P<step>[A-Za-z0-9_.\[\]-]+) - ")
    current: str | None = None
    kept = []
    for line in text.splitlines(keepends=True):
        if _DAGSTER_LINE.match(line):
            found = marker.search(line)
            current = found.group("step") if found else None
        if current == step:
            kept.append(line)
    return "".join(kept)


#: Run events -> the status they put the run in (Dagster's names for them are "PIPELINE_*").
_RUN_EVENTS = {
    "PIPELINE_ENQUEUED": "Queued",
    "PIPELINE_STARTING": "NotStarted",
    "PIPELINE_START": "Running",
    "PIPELINE_SUCCESS": "Finished",
    "PIPELINE_FAILURE": "Failed",
    "PIPELINE_CANCELING": "Running",
    "PIPELINE_CANCELED": "Canceled",
}


class _Follower:
    """Prints a run's progress as it happens: run and step status changes, the steps' log
    messages (INFO and above) and the scripts' stdout."""

    def __init__(self, run: PipelineRun, out: TextIO):
        self.run = run
        self.out = out
        self.cursor: str | None = None
        self.log_cursors: dict[tuple[str, ...], str | None] = {}
        self.steps = set(run._pipeline_step_keys(run._record().dagster_run))
        self.status: str | None = None
        self.started = False

    def poll(self) -> None:
        from dagster import DagsterEventType

        if not self.started:
            self.started = True
            print(f"Run {self.run.id} of {self.run._record().dagster_run.job_name}", file=self.out)
        while True:
            conn = self.run.instance.get_records_for_run(self.run.id, cursor=self.cursor, limit=500)
            self.cursor = conn.cursor
            for record in conn.records:
                self._print(record.event_log_entry, DagsterEventType)
            if not conn.has_more:
                break
        self._print_script_output()

    def _print(self, entry: Any, kinds: Any) -> None:
        event = entry.dagster_event
        if event is None:
            if entry.step_key in self.steps and entry.level >= 20 and entry.user_message:
                print(f"  {entry.step_key}: {entry.user_message}", file=self.out)
            return
        if event.event_type == kinds.LOGS_CAPTURED:
            data = event.event_specific_data
            key = tuple(self.run.instance.compute_log_manager.build_log_key_for_run(self.run.id, data.file_key))
            self.log_cursors.setdefault(key, None)
            return
        run_status = _RUN_EVENTS.get(event.event_type.value)
        if run_status is not None and run_status != self.status:
            self._print_script_output()  # what the scripts printed before the run ended
            self.status = run_status
            print(f"Run {self.run.id[:8]}: {run_status}", file=self.out)
            return
        if event.step_key not in self.steps:
            return
        words = {
            kinds.STEP_START: "Running",
            kinds.STEP_SUCCESS: "Finished",
            kinds.STEP_FAILURE: "Failed",
            kinds.STEP_SKIPPED: "Skipped (an upstream step failed)",
        }
        if event.event_type in words:
            print(f"  step {event.step_key}: {words[event.event_type]}", file=self.out)

    def _print_script_output(self) -> None:
        manager = self.run.instance.compute_log_manager
        for key, cursor in list(self.log_cursors.items()):
            data = manager.get_log_data(list(key), cursor=cursor)
            self.log_cursors[key] = data.cursor
            text = (data.stdout or b"").decode("utf-8", errors="replace")
            for line in text.splitlines():
                print(f"  | {line}", file=self.out)


# --- experiments ------------------------------------------------------------------------------
class Experiment:
    """A named group of runs (Azure ML's ``Experiment``): the ``aml/experiment`` run tag.

    ``workspace``: the project's ``workspace.yaml`` (or definitions file), whose code locations
    hold the pipelines' jobs; loaded once, at the first submit (or pass a shared ``submitter``).
    """

    def __init__(
        self,
        name: str,
        workspace: str | Path = "workspace.yaml",
        instance: DagsterInstance | None = None,
        submitter: Submitter | None = None,
    ):
        if not isinstance(name, str) or not _EXPERIMENT_NAME.fullmatch(name):
            raise AmlAssetsError(
                f"Experiment name {name!r} is not valid: use 1 to 255 letters, digits, '_', '-' "
                "or '.', starting with a letter or digit."
            )
        from dagster import DagsterInstance

        self.name = name
        self.workspace = Path(workspace)
        self._submitter = submitter
        self._instance = (
            instance if instance is not None
            else submitter.instance if submitter is not None
            else DagsterInstance.get()
        )

    @property
    def submitter(self) -> Submitter:
        if self._submitter is None:
            self._submitter = Submitter(self.workspace, instance=self._instance)
        return self._submitter

    def close(self) -> None:
        """Stop the code servers this experiment's submitter started (runs go on)."""
        if self._submitter is not None:
            self._submitter.close()
            self._submitter = None

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def submit(
        self,
        pipeline: Any,
        pipeline_parameters: Mapping[str, Any] | None = None,
        datapath_assignments: Mapping[str, Any] | None = None,
        regenerate_outputs: bool = False,
        tags: Mapping[str, str] | None = None,
    ) -> PipelineRun:
        """Submit a run of a ``Pipeline``, a ``PublishedPipeline`` or a ``PipelineEndpoint``
        (its default version); returns the ``PipelineRun``.

        ``pipeline_parameters`` / ``datapath_assignments``: Azure's parameter assignments,
        checked before anything is created (``SubmitError`` lists every problem).

        The run goes through Dagster's run queue when a dagster-daemon is running for the
        instance. When none is, a queued run would wait until one starts (forever, in a script
        or a notebook), so the run is launched at once instead, as Azure starts a submitted run
        without further ado; the queue's ``max_concurrent_runs`` then does not apply to it.
        """
        job, parameters, extra_tags = _what_to_run(pipeline)
        run_id = submit_pipeline_run(
            self.submitter,
            job=job,
            parameters=parameters,
            values=pipeline_parameters,
            datapaths=datapath_assignments,
            regenerate=regenerate_outputs,
            experiment=self.name,
            tags={**extra_tags, **dict(tags or {})},
            via="python",
            launch_if_no_daemon=True,
        )
        return PipelineRun(run_id, self._instance)

    def get_runs(self, limit: int | None = None) -> list[PipelineRun]:
        """This experiment's runs, newest first."""
        from dagster import RunsFilter

        records = self._instance.get_run_records(RunsFilter(tags={EXPERIMENT_TAG: self.name}), limit=limit)
        return [PipelineRun(r.dagster_run.run_id, self._instance) for r in records]

    def __repr__(self) -> str:
        return f"<Experiment {self.name}>"


def _what_to_run(target: Any) -> tuple[str, list[Any], dict[str, str]]:
    """(job name, parameter objects, run tags) of a Pipeline, PublishedPipeline or PipelineEndpoint."""
    from aml_assets.pipeline.definition import Pipeline

    if isinstance(target, Pipeline):
        return target.name, target.parameters(), {}
    from aml_assets.pipeline.publish import PipelineEndpoint, PublishedPipeline

    endpoint_tags: dict[str, str] = {}
    if isinstance(target, PipelineEndpoint):
        endpoint_tags = {ENDPOINT_TAG: target.name}
        target = target.get_pipeline()  # its default version
    if isinstance(target, PublishedPipeline):
        status = target.status
        if status != "Active":
            raise SubmitError(
                [
                    f"Published pipeline '{target.name}' version {target.version} (id {target.id}) "
                    f"is {status.lower()}; enable it (published.enable()) or submit another version."
                ],
                status_code=403,
            )
        return target.pipeline_name, target.parameter_objects(), {**target.run_tags(), **endpoint_tags}
    raise TypeError(
        f"Experiment.submit takes a Pipeline, a PublishedPipeline or a PipelineEndpoint, not "
        f"{type(target).__name__}."
    )


# --- command line (wired in aml_assets/cli.py) ---------------------------------------------------
def find_run_id(instance: DagsterInstance, prefix: str, among: int = 500) -> str:
    """The id of the run whose id starts with ``prefix`` (among the latest ``among`` runs)."""
    if instance.get_run_by_id(prefix) is not None:
        return prefix
    found = [r.run_id for r in instance.get_runs(limit=among) if r.run_id.startswith(prefix)]
    if not found:
        raise RunNotFoundError(
            f"No run '{prefix}' among the latest {among} runs of {instance.root_directory}; "
            "`aml-assets runs show` shows the latest one."
        )
    if len(found) > 1:
        raise RunNotFoundError(
            f"'{prefix}' matches {len(found)} runs ({', '.join(r[:12] for r in found[:5])}); "
            "give more of the id."
        )
    return found[0]


def cli_runs_wait(args: Any, out: TextIO | None = None) -> int:
    """``aml-assets runs wait RUN [--timeout S] [--quiet]``: follow a run until it ends; exit
    status 0 when it finished, 1 when it failed or was canceled."""
    from dagster import DagsterInstance

    out = out or sys.stdout
    with DagsterInstance.get() as instance:
        run = PipelineRun(find_run_id(instance, args.run), instance)
        status = run.wait_for_completion(
            show_output=not getattr(args, "quiet", False),
            timeout_seconds=getattr(args, "timeout", None),
            raise_on_error=False,
            out=out,
        )
        if getattr(args, "quiet", False):
            print(f"{run.id} {status}", file=out)
    return 0 if status == "Finished" else 1


def cli_runs_cancel(args: Any, out: TextIO | None = None) -> int:
    """``aml-assets runs cancel RUN``: take a queued run off the queue, or stop a running one."""
    from dagster import DagsterInstance

    out = out or sys.stdout
    with DagsterInstance.get() as instance:
        run = PipelineRun(find_run_id(instance, args.run), instance)
        if not run.cancel():
            print(f"Run {run.id} is {run.get_status()}: nothing to cancel.", file=out)
            return 1
        print(f"Run {run.id}: cancel requested ({run.get_status()}).", file=out)
    return 0


def cli_submit(args: Any, out: TextIO | None = None) -> int:
    """``aml-assets submit (--published ID | --endpoint NAME) [-w workspace.yaml]
    [--experiment NAME] [--param NAME=VALUE ...] [--regenerate] [--wait]``: queue a run of a
    published pipeline (or an endpoint's default version) for the daemon; prints its id."""
    from aml_assets.pipeline.publish import PipelineEndpoint, PublishedPipeline
    from aml_assets.service.runs import RunRequest

    out = out or sys.stdout
    if bool(getattr(args, "published", None)) == bool(getattr(args, "endpoint", None)):
        raise AmlAssetsError("Give one of --published ID or --endpoint NAME.")
    target: Any = (
        PublishedPipeline.get(args.published) if args.published else PipelineEndpoint.get(args.endpoint)
    )
    name = args.experiment or (args.endpoint or target.name)
    values = RunRequest.parse_parameters(list(getattr(args, "param", None) or []))
    with Experiment(name, workspace=args.workspace) as experiment:
        run = experiment.submit(target, pipeline_parameters=values, regenerate_outputs=args.regenerate)
        print(f"Run {run.id} submitted (experiment '{name}'): {run.get_status()}", file=out)
        if not getattr(args, "wait", False):
            return 0
        status = run.wait_for_completion(show_output=True, raise_on_error=False, out=out)
    return 0 if status == "Finished" else 1
