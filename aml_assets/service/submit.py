"""Submitting runs to Dagster's run queue, the way the UI and ``dagster job launch`` do.

A ``Submitter`` loads the code locations of a workspace once (Dagster's
``WorkspaceProcessContext``: one code server per location) and keeps each remote job it has
looked up, so a submit costs a config check, an execution plan from the code server and two
writes to the run storage. The run it creates is an ordinary Dagster run: with the project's
``QueuedRunCoordinator`` it is QUEUED until the dagster-daemon starts it, at most
``max_concurrent_runs`` at a time; the UI shows it like any run launched there.

``submit_pipeline_run`` is what the HTTP API, ``Experiment.submit`` and the CLI share: it checks
the parameter values a caller gave (names, types, bounds, datastores) *before* anything is
created, and sets the run tags every way of starting a run agrees on (``pipeline/tags.py``).
"""

from __future__ import annotations

import difflib
import importlib
import sys
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml_assets.errors import AmlAssetsError
from aml_assets.pipeline.tags import (
    EXPERIMENT_TAG,
    REGENERATE_TAG,
    SUBMITTED_VIA_TAG,
    parameters_run_config,
)

if TYPE_CHECKING:
    from dagster import DagsterInstance

#: How long a look at the daemon's heartbeat is trusted (one look per submit would cost a query).
_DAEMON_CHECK_SECONDS = 5.0
#: A daemon silent for longer is taken for stopped (it beats every 30 s while it runs).
_DAEMON_SILENCE_SECONDS = 60.0


class SubmitError(AmlAssetsError):
    """A run was refused before anything was created; ``problems`` lists every reason.

    ``status_code`` is the HTTP status the API answers with (400: the request is wrong; 404:
    no such job).
    """

    def __init__(self, problems: Iterable[str], status_code: int = 400):
        self.problems = list(problems)
        self.status_code = status_code
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"The run was not submitted ({len(self.problems)} problems):\n{lines}")


@dataclass(frozen=True)
class _JobHandle:
    """A remote job and where it lives (its code location and repository)."""

    location_name: str
    repository: Any  # RemoteRepository
    job: Any  # RemoteJob


def workspace_target(workspace: str | Path) -> Any:
    """Dagster's load target for a ``workspace.yaml`` or a definitions ``.py`` file."""
    from dagster._core.workspace.load_target import PythonFileTarget, WorkspaceFileTarget

    path = Path(workspace).resolve()
    if not path.is_file():
        raise SubmitError(
            [
                f"Workspace '{workspace}' not found; pass the workspace.yaml of your project (or "
                "its definitions .py file)."
            ],
            status_code=500,
        )
    if path.suffix == ".py":
        return PythonFileTarget(
            python_file=str(path), attribute=None, working_directory=str(path.parent), location_name=None
        )
    return WorkspaceFileTarget(paths=[str(path)])


#: Submitters not closed yet: closed when the interpreter exits (see ``_close_at_exit``).
_OPEN: set[Submitter] = set()
_OPEN_LOCK = threading.Lock()
_AT_EXIT_REGISTERED = False


def _close_at_exit(submitter: Submitter) -> None:
    """Close ``submitter`` when the interpreter exits, if its owner did not.

    Scripts written for Azure ML never close an ``Experiment`` (often not even kept in a
    variable): its code server then outlived the script by ~90 s (a 45 s heartbeat timeout, then
    up to 60 s of shutdown), holding the script's stdout open, so ``python pipeline.py | tee log``
    or a CI step hung that long after the script's last line. Held strongly (a dropped
    Experiment's server must still be stopped) until ``close`` forgets it.
    ``threading._register_atexit`` runs before non-daemon threads are joined (an ``atexit``
    handler would run after); it is what ``concurrent.futures`` uses.
    """
    global _AT_EXIT_REGISTERED
    with _OPEN_LOCK:
        _OPEN.add(submitter)
        if not _AT_EXIT_REGISTERED:
            threading._register_atexit(_close_open_submitters)
            _AT_EXIT_REGISTERED = True


def _close_open_submitters() -> None:
    with _OPEN_LOCK:
        open_now = list(_OPEN)
    for submitter in open_now:
        submitter.close()


class Submitter:
    """Creates runs of a workspace's jobs and hands them to the instance's run coordinator.

    Load it once per process and share it (it is thread-safe; loading starts a code server per
    code location and takes seconds)::

        with Submitter("workspace.yaml") as submitter:
            run_id = submitter.submit("synapse_pipeline", tags={"team": "ml"})
    """

    def __init__(self, workspace: str | Path = "workspace.yaml", instance: DagsterInstance | None = None):
        from dagster import DagsterInstance
        from dagster._core.workspace.context import WorkspaceProcessContext

        self.workspace = Path(workspace).resolve()
        self._owns_instance = instance is None
        self.instance = instance if instance is not None else DagsterInstance.get()
        self._lock = threading.RLock()
        self._jobs: dict[str, _JobHandle] = {}
        self._datastores: dict[str, list[str] | None] = {}
        self._daemon_seen: tuple[float, bool] | None = None
        self._closed = False
        try:
            self._context = WorkspaceProcessContext(self.instance, workspace_target(self.workspace))
            #: When the code locations were loaded (see ``refresh_if_older_than``).
            self.loaded_at = time.time()
        except BaseException:
            if self._owns_instance:
                self.instance.dispose()
            raise
        _close_at_exit(self)

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the code servers this submitter started (runs already started go on)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _OPEN_LOCK:
            _OPEN.discard(self)
        self._context.__exit__(None, None, None)
        if self._owns_instance:
            self.instance.dispose()

    def __enter__(self) -> Submitter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reload(self) -> None:
        """Reload every code location (after the definitions changed) and forget cached jobs."""
        with self._lock:
            self._context.reload_workspace()
            self._jobs.clear()
            self.loaded_at = time.time()

    def refresh_if_older_than(self, timestamp: float) -> None:
        """Reload when the code was loaded before ``timestamp`` (a version published since):
        the published version may need a parameter the loaded definitions do not have yet."""
        with self._lock:
            if timestamp >= int(self.loaded_at):  # records have whole seconds: err towards fresh
                self.reload()
            self._datastores.clear()

    # --- what the workspace holds -------------------------------------------------------------
    def location_errors(self) -> dict[str, str]:
        """Code location name -> why it failed to load (empty when all loaded)."""
        request = self._context.create_request_context()
        out = {}
        for entry in request.get_code_location_entries().values():
            if entry.load_error is not None:
                out[entry.origin.location_name] = entry.load_error.to_string()
        return out

    def _all_jobs(self) -> dict[str, _JobHandle]:
        request = self._context.create_request_context()
        found: dict[str, _JobHandle] = {}
        for location in request.code_locations:
            for repo in location.get_repositories().values():
                for job in repo.get_all_jobs():
                    if not job.name.startswith("__"):  # Dagster's implicit asset job
                        found.setdefault(job.name, _JobHandle(location.name, repo, job))
        return found

    def job_names(self) -> list[str]:
        """Names of the jobs the workspace defines (a pipeline's job is named like it)."""
        return sorted(self._all_jobs())

    def _job(self, name: str) -> _JobHandle:
        with self._lock:
            handle = self._jobs.get(name)
            if handle is None:
                jobs = self._all_jobs()
                if name not in jobs:
                    raise SubmitError([self._unknown_job(name, sorted(jobs))], status_code=404)
                self._jobs.update(jobs)
                handle = jobs[name]
            return handle

    def _unknown_job(self, name: str, known: list[str]) -> str:
        errors = self.location_errors()
        if errors:
            where, error = next(iter(errors.items()))
            return (
                f"Job '{name}' is not available: code location '{where}' failed to load "
                f"({error.strip().splitlines()[-1]}). Fix the definitions, then reload."
            )
        hint = difflib.get_close_matches(name, known, n=1)
        return f"No job named '{name}' in workspace {self.workspace}" + (
            f"; did you mean '{hint[0]}'?" if hint else f" (its jobs: {', '.join(known) or 'none'})."
        )

    def datastores(self, job: str) -> list[str] | None:
        """Resource keys of the Datastore resources of ``job``'s code location (None if their
        types cannot be told in this process)."""
        handle = self._job(job)
        with self._lock:
            if job not in self._datastores:
                self._datastores[job] = _datastore_keys(handle.repository)
            found = self._datastores[job]
        return None if found is None else list(found)

    # --- submitting ----------------------------------------------------------------------------
    def daemon_running(self) -> bool:
        """Whether a dagster-daemon is dequeuing this instance's runs (see ``daemon_running``)."""
        now = time.monotonic()
        with self._lock:
            if self._daemon_seen is not None and now - self._daemon_seen[0] < _DAEMON_CHECK_SECONDS:
                return self._daemon_seen[1]
            running = daemon_running(self.instance)
            self._daemon_seen = (now, running)
            return running

    def queues_runs(self) -> bool:
        """Whether the instance's run coordinator queues runs for a daemon."""
        from dagster._core.run_coordinator import QueuedRunCoordinator

        return isinstance(self.instance.run_coordinator, QueuedRunCoordinator)

    def submit(
        self,
        job: str,
        run_config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        launch_if_no_daemon: bool = False,
    ) -> str:
        """Create a run of ``job`` and submit it to the run coordinator; returns the run id.

        With a queued coordinator the run is QUEUED for the dagster-daemon. When
        ``launch_if_no_daemon`` and no daemon is running for the instance, the run is launched
        at once instead (it would otherwise wait in the queue until a daemon starts).
        Invalid run config raises ``SubmitError`` listing each problem; no run is created.
        """
        from dagster._config import validate_config_from_snap
        from dagster._utils.merger import merge_dicts
        from dagster._utils.tags import normalize_tags

        run_config = dict(run_config or {})
        with self._lock:
            handle = self._job(job)
            remote_job = handle.job
            checked = validate_config_from_snap(
                remote_job.config_schema_snapshot, remote_job.root_config_key, run_config
            )
            if not checked.success:
                raise SubmitError([_config_problem(e) for e in checked.errors or []])
            request = self._context.create_request_context()
            location = request.get_code_location(handle.location_name)
            plan = location.get_execution_plan(
                remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=self.instance
            )
            run = self.instance.create_run(
                job_name=remote_job.name,
                run_id=None,
                run_config=run_config,
                resolved_op_selection=remote_job.resolved_op_selection,
                step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
                op_selection=None,
                status=None,
                root_run_id=None,
                parent_run_id=None,
                tags=normalize_tags(merge_dicts(remote_job.tags, dict(tags or {}))),
                job_snapshot=remote_job.job_snapshot,
                execution_plan_snapshot=plan.execution_plan_snapshot,
                parent_job_snapshot=remote_job.parent_job_snapshot,
                remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
                asset_selection=None,
                asset_check_selection=None,
                asset_graph=handle.repository.asset_graph,
            )
            if launch_if_no_daemon and self.queues_runs() and not self.daemon_running():
                self.instance.launch_run(run.run_id, request)
            else:
                self.instance.submit_run(run.run_id, request)
            return run.run_id


def daemon_running(instance: DagsterInstance) -> bool:
    """Whether a dagster-daemon dequeues ``instance``'s runs: its queue daemon's last heartbeat
    is at most a minute old. (Dagster's own health check tolerates 30 minutes of silence, and a
    daemon leaves its last heartbeat behind when it stops; a daemon alive beats every 30 s.)"""
    from dagster._daemon.controller import DEFAULT_HEARTBEAT_INTERVAL_SECONDS, get_daemon_statuses
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    kind = QueuedRunCoordinatorDaemon.daemon_type()
    status = get_daemon_statuses(
        instance,
        [kind],
        ignore_errors=True,
        heartbeat_interval_seconds=DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        heartbeat_tolerance_seconds=_DAEMON_SILENCE_SECONDS - DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
    )[kind]
    return bool(status.healthy)


def _config_problem(error: Any) -> str:
    """A Dagster run-config error as a sentence naming the parameter when it is one."""
    message = str(error.message)
    path = [getattr(e, "field_name", None) for e in _stack_entries(error.stack)]
    path = [p for p in path if p]
    if len(path) >= 4 and path[0] == "resources" and path[2] == "config":
        return f"Parameter '{path[3]}': {message}"
    return message


def _stack_entries(stack: Any) -> list[Any]:
    entries = getattr(stack, "entries", None)
    return list(entries) if entries is not None else []


def _datastore_keys(repository: Any) -> list[str] | None:
    """Keys of a repository's Datastore resources (None when a resource's type is unknown here)."""
    from aml_assets.data.datastore import Datastore

    keys = []
    for resource in repository.get_resources():
        cls = _resource_class(resource.resource_type)
        if cls is None:
            return None
        if cls and issubclass(cls, Datastore):
            keys.append(resource.name)
    return sorted(keys)


def _resource_class(type_name: str) -> type | None | bool:
    """The class a resource snapshot names (``module.Class``); False when its module is known
    but the class is not a module attribute (a class made at run time, like a pipeline's
    settings); None when it cannot be told here. Only modules already imported or of
    aml-assets and Dagster are imported: never a user's definitions module, for its side effects.
    """
    module, _, name = type_name.rpartition(".")
    top = module.split(".")[0]
    if not module or (module not in sys.modules and top != "aml_assets" and not top.startswith("dagster")):
        return None
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return None
    for part in name.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else False


def submit_pipeline_run(
    submitter: Submitter,
    *,
    job: str,
    parameters: Iterable[Any],
    values: Mapping[str, Any] | None = None,
    datapaths: Mapping[str, Any] | None = None,
    regenerate: bool = False,
    experiment: str | None = None,
    tags: Mapping[str, str] | None = None,
    via: str = "python",
    datastores: Collection[str] | None = None,
    launch_if_no_daemon: bool = False,
) -> str:
    """Check the parameter values, then submit a run of a pipeline's job; returns the run id.

    ``parameters``: the pipeline's parameter objects (``Pipeline.parameters()`` or a published
    version's ``parameter_objects()``); ``values``/``datapaths``: Azure's ParameterAssignments and
    DataPathAssignments. Every problem is reported at once in a ``SubmitError`` and nothing is
    created. ``datastores`` (the known datastore names) defaults to the job's Datastore resources.
    """
    from aml_assets.pipeline.parameters import check_assignments

    if datastores is None:
        datastores = submitter.datastores(job)
    config_values, problems = check_assignments(list(parameters), dict(values or {}), datapaths, datastores)
    if problems:
        raise SubmitError(problems)
    run_tags = dict(tags or {})
    run_tags[SUBMITTED_VIA_TAG] = via
    if experiment:
        run_tags[EXPERIMENT_TAG] = experiment
    if regenerate:
        run_tags[REGENERATE_TAG] = "true"
    return submitter.submit(
        job, parameters_run_config(config_values), run_tags, launch_if_no_daemon=launch_if_no_daemon
    )
