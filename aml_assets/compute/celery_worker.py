"""Celery workers of a CPU cluster: the app both sides share, the step task, the worker command.

A worker (``aml-assets worker cpucluster --concurrency 1``) serves the queues named after compute
targets. Each task runs one whole Dagster step (reuse decision, inputs, script, publish) in a
pool process of the worker, loading the job from the code pointer the task carries (python file
and working directory), so a worker's own working directory does not matter.

Delivery settings, and why:

- ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a worker holds only the steps it runs.
  With early acks the message is acked when the step starts, which frees the prefetch slot: a
  busy worker of concurrency 1 then reserves a second step behind its running one (while
  another worker may sit idle), and if it dies that reserved step is lost with it: acked, never
  run, its orchestrator waiting forever on a PENDING task. Measured on Redis with 2 workers of
  concurrency 1 (tasks of 2 x 6 s then 6 x 1 s): early acks, 2 tasks reserved behind running
  ones; late acks, none; the same makespan (9.2 s, 9.1 s). Then 6 tasks of 5 s and one worker
  SIGKILLed: early acks, 2 lost (the running one STARTED forever, the reserved one PENDING
  forever); late acks, only the running one (STARTED, which the orchestrator detects), the
  other 5 ran.
- Redis redelivers an unacked message after ``visibility_timeout``. It is set above the longest
  step timeout, so a step that is still running is not handed out again; a message redelivered
  anyway (its worker was killed) is stale: every task first *claims* its id on Redis (SET NX),
  and a task whose id is claimed already, or whose run is no longer in progress, does nothing
  (``Ignore``: no result is stored, so the orchestrator's wait is not disturbed).
- ``task_track_started``: a running task's state is STARTED with the worker's host name, which
  is how the orchestrator tells a lost worker (it stops answering ``control.ping``) from a slow
  step (``celery_cluster``).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: The task every step runs as (submitted by ``celery_cluster.AmlCeleryExecutor``).
STEP_TASK = "aml_execute_step"
#: Redis key prefix of task claims (see the module docstring).
CLAIM_PREFIX = "aml:celery:claim:"
#: Added to the longest step timeout to get Redis's visibility timeout: a step's publishing and
#: Dagster's bookkeeping after the script's timeout.
VISIBILITY_MARGIN_SECONDS = 600.0
#: The visibility timeout when nothing says how long steps may run (CpuCluster's default step
#: timeout, 3600 s, plus the margin).
DEFAULT_VISIBILITY_TIMEOUT = 3600.0 + VISIBILITY_MARGIN_SECONDS
BROKER_ENV = "AML_CELERY_BROKER"


def default_backend(broker: str) -> str:
    """The result backend for a Redis broker: the same server, the next database number
    (``redis://h:p/0`` -> ``redis://h:p/1``), so results and queues never share keys."""
    parts = urlsplit(broker)
    if not parts.scheme.startswith("redis"):
        return broker
    path = parts.path.strip("/")
    db = int(path) + 1 if path.isdigit() else 1
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def celery_app(broker: str, backend: str | None = None, visibility_timeout: float | None = None) -> Any:
    """The Celery app of a CPU cluster (the same settings on the orchestrator and the workers)."""
    from celery import Celery

    app = Celery("aml_assets", broker=broker, backend=backend or default_backend(broker), set_as_current=False)
    vt = int(visibility_timeout or DEFAULT_VISIBILITY_TIMEOUT)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": vt},
        result_backend_transport_options={"visibility_timeout": vt},
        broker_connection_retry_on_startup=True,
        # A worker that loses Redis stops its running steps rather than finish them unseen
        # (their messages come back; the orchestrator fails them as lost).
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        result_expires=7 * 24 * 3600,
    )
    app.task(name=STEP_TASK, bind=True, track_started=True, acks_late=True)(_execute_step)
    return app


def running_in_worker() -> bool:
    """True in a Celery worker's pool process while it runs a step task."""
    if "celery" not in sys.modules:  # not a worker (and no import of Celery for nothing)
        return False
    from celery import current_task

    return current_task is not None and getattr(current_task, "name", None) == STEP_TASK


def _claim(task: Any, seconds: float) -> str | None:
    """Claim this task's id for this worker: None if claimed now, else who claimed it first."""
    client = task.backend.client
    key = f"{CLAIM_PREFIX}{task.request.id}"
    me = f"{task.request.hostname} (pid {os.getpid()})"
    if client.set(key, me, nx=True, ex=int(seconds)):
        return None
    owner = client.get(key)
    return owner.decode() if isinstance(owner, bytes) else str(owner)


def _execute_step(task: Any, execute_step_args_packed: dict, executable_dict: dict) -> list[str]:
    """Run one step of a run (dagster_celery's ``execute_plan`` task, made idempotent)."""
    from celery.exceptions import Ignore
    from celery.utils.log import get_task_logger
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.definitions.reconstruct import ReconstructableJob
    from dagster._core.events import EngineEventData
    from dagster._core.execution.api import create_execution_plan, execute_plan_iterator
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import serialize_value, unpack_value
    from dagster_celery.core_execution_loop import DELEGATE_MARKER

    logger = get_task_logger(__name__)
    began = time.perf_counter()
    args = unpack_value(execute_step_args_packed, as_type=ExecuteStepArgs)
    steps = ", ".join(args.step_keys_to_execute or [])
    visibility = task.app.conf.broker_transport_options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)
    owner = _claim(task, 2 * visibility)
    if owner is not None:
        logger.warning(
            f"Task {task.request.id} (step {steps} of run {args.run_id}) was started before by "
            f"{owner}: a redelivered message; it does nothing."
        )
        raise Ignore()
    with DagsterInstance.from_ref(args.instance_ref) as instance:
        run = instance.get_run_by_id(args.run_id)
        if run is None or run.status not in (DagsterRunStatus.STARTED, DagsterRunStatus.STARTING):
            state = "is not recorded" if run is None else f"is {run.status.value}"
            logger.warning(f"Step {steps}: run {args.run_id} {state}; a stale task does nothing.")
            raise Ignore()
        job = ReconstructableJob.from_dict(executable_dict)
        plan = create_execution_plan(
            job, run.run_config, step_keys_to_execute=args.step_keys_to_execute, known_state=args.known_state
        )
        events = [
            instance.report_engine_event(
                f"Executing step {steps} on Celery worker {task.request.hostname} (pid {os.getpid()})",
                run,
                EngineEventData(
                    {"step_keys": steps, "Celery worker": task.request.hostname, "pid": str(os.getpid())},
                    marker_end=DELEGATE_MARKER,
                ),
                step_key=plan.step_handle_for_single_step_plans().to_key(),
            )
        ]
        ready = time.perf_counter()
        events += execute_plan_iterator(
            execution_plan=plan,
            job=job,
            dagster_run=run,
            instance=instance,
            retry_mode=args.retry_mode,
            run_config=run.run_config,
        )
        logger.info(
            f"Step {steps} of run {args.run_id[:8]}: set up in {ready - began:.2f} s, "
            f"ran in {time.perf_counter() - ready:.2f} s"
        )
        return [serialize_value(event) for event in events]


def default_hostname(targets: Sequence[str]) -> str:
    """A node name unique on this machine (two workers with one name confuse ``ping``)."""
    return f"{'+'.join(targets)}-{os.getpid()}@{socket.gethostname()}"


def worker_command(
    targets: Sequence[str],
    concurrency: int = 1,
    broker: str | None = None,
    hostname: str | None = None,
    definitions: str | Path | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    """The command line starting a worker (``aml-assets worker ...``) with this interpreter."""
    command = [sys.executable, "-m", "aml_assets.cli", "worker", *targets, "--concurrency", str(concurrency)]
    if broker:
        command += ["--broker", broker]
    if hostname:
        command += ["--hostname", hostname]
    if definitions:
        command += ["-f", str(definitions)]
    return [*command, "--loglevel", loglevel]


def _visibility_from(definitions: str | Path, targets: Sequence[str]) -> tuple[float | None, str | None]:
    """(visibility timeout, broker) of the Celery clusters named ``targets`` in a definitions
    file; importing it here also preloads the project into the worker before its pool forks."""
    from dagster import EnvVar

    from aml_assets.compute.cluster import CpuCluster
    from aml_assets.compute.definitions_file import definitions_resources, import_definitions_file

    module = import_definitions_file(
        definitions, f"_aml_worker_{Path(definitions).stem}", "pass the project's with -f"
    )
    clusters = {
        key: r
        for key, r in definitions_resources(module).items()
        # A Celery CPU cluster (celery_cluster imports this module: checked by what it has).
        if isinstance(r, CpuCluster) and hasattr(r, "broker")
    }
    mine = [clusters[t] for t in targets if t in clusters]
    if not mine:
        return None, None
    broker = mine[0].broker
    broker = broker.get_value() if isinstance(broker, EnvVar) else broker
    return max(c.visibility_timeout_seconds for c in mine), broker


def run_worker(
    targets: Sequence[str],
    concurrency: int = 1,
    broker: str | None = None,
    hostname: str | None = None,
    definitions: str | Path | None = None,
    loglevel: str = "INFO",
    backend: str | None = None,
) -> None:
    """Serve the queues ``targets`` until stopped (SIGTERM: finish the running steps first)."""
    from aml_assets.errors import ComputeTargetError

    if not targets:
        raise ComputeTargetError("Name the compute targets this worker serves, e.g. 'aml-assets worker cpucluster'.")
    if concurrency < 1:
        raise ComputeTargetError(f"--concurrency must be at least 1 (got {concurrency}).")
    visibility, configured = _visibility_from(definitions, targets) if definitions else (None, None)
    broker = broker or os.environ.get(BROKER_ENV) or configured
    if not broker:
        raise ComputeTargetError(
            f"Worker for {', '.join(targets)}: no broker. Pass --broker redis://HOST:PORT/0 or set "
            f"${BROKER_ENV} (the URL the CeleryCpuCluster's runs use)."
        )
    # Imported before the pool forks, so each pool process starts with Dagster loaded.
    import dagster._core.execution.api  # noqa: F401

    app = celery_app(broker, backend, visibility)
    app.worker_main(
        [
            "worker",
            "--queues", ",".join(targets),
            "--concurrency", str(concurrency),
            "--hostname", hostname or default_hostname(targets),
            "--prefetch-multiplier", "1",
            "--pool", "prefork",  # the main process answers ping while a step runs
            "--loglevel", loglevel,
            # No startup sync with other workers (seconds each start; nothing here uses it).
            "--without-mingle",
            "--without-gossip",
        ]
    )
