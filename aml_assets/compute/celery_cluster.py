"""A CPU cluster on Celery workers (Redis broker): Dagster's Celery executor, hardened.

Which process does what:

- the run's own process (the *orchestrator*: ``aml-assets run``, the daemon's run launcher, the
  webserver) walks the plan and puts each step on the queue named after its compute target
  (op tag ``dagster-celery/queue``), at most ``2 x max_nodes`` of one run queued or running
  per queue;
- a worker (``aml-assets worker cpucluster --concurrency 1``, ``celery_worker``) runs the whole
  Dagster step: reuse decision, inputs, the script as a local process, publish;
- ``max_nodes`` is the number of worker slots serving the queue: the cluster never runs more
  steps at once than that, whichever runs they belong to.

A worker lost mid-step (killed, its machine gone) never reports: its task stays STARTED. The
orchestrator notices (the task's worker no longer answers ``control.ping``), fails the step with
a message naming the worker, and revokes the task. Nothing of the step was published (a step
publishes only after its script ended well, from the worker); the run fails, and the next run
reuses every step that finished. Lost steps are failed, not retried: a retry would hide a worker
that dies on a step's input, and Dagster's ``RetryPolicy`` on a step still applies as usual.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import EnvVar, ExecutorDefinition, executor, multiple_process_executor_requirements
from pydantic import Field

from aml_assets.compute.celery_worker import (
    STEP_TASK,
    VISIBILITY_MARGIN_SECONDS,
    celery_app,
    default_backend,
)
from aml_assets.compute.cluster import CpuCluster, start_local_process
from aml_assets.errors import ComputeTargetError

#: Op tag dagster_celery routes a step's task by.
QUEUE_TAG = "dagster-celery/queue"
#: How often the orchestrator pings the workers of its running steps (seconds), and how many
#: pings in a row a worker may miss before its steps are failed as lost. A worker's main process
#: answers while its pool runs a step (under a load of 9 on 2 cores, well within the timeout);
#: a false "lost" kills a healthy step, so it takes three misses, 10-15 s, to decide.
PING_INTERVAL_SECONDS = 5.0
PING_TIMEOUT_SECONDS = 2.0
MISSED_PINGS_FOR_LOST = 3
#: A step still waiting for a worker after this long gets a warning if no worker serves its queue.
NO_WORKER_WARNING_SECONDS = 30.0
#: How often the orchestrator looks at its steps' tasks (seconds).
TICK_SECONDS = 0.1
#: Celery priority of a step without a ``dagster-celery/priority`` tag (dagster_celery's default).
DEFAULT_PRIORITY = 5


class CeleryCpuCluster(CpuCluster):
    """A CPU cluster whose steps run on Celery workers serving its queue (Redis broker).

    Start workers with ``aml-assets worker cpucluster --concurrency 1 --broker redis://...``;
    ``max_nodes`` is how many steps the cluster runs at once (the workers' slots).

    >>> CeleryCpuCluster(broker=EnvVar("AML_CELERY_BROKER"), max_nodes=2)
    """

    broker: str = Field(description="Redis URL of the broker, e.g. redis://127.0.0.1:6379/0 (EnvVar ok).")
    backend: str | None = Field(
        default=None,
        description="Result backend URL; default: the broker's server, next database number.",
    )
    queue: str | None = Field(
        default=None, description="The queue its steps go to; default: the compute target's name."
    )
    max_nodes: int = Field(
        default=2,
        ge=1,
        description="Worker slots serving this cluster's queue (how many steps it runs at once); a "
        "run keeps at most twice that many of its steps queued or running on it.",
    )

    def __init__(self, **data: Any):
        # One number, as on Azure: the concurrency limit of a cluster is its node count.
        data.setdefault("max_concurrent_steps", data.get("max_nodes", 2))
        super().__init__(**data)

    @property
    def visibility_timeout_seconds(self) -> float:
        """Redis redelivers a message unacked for this long: above the longest step timeout."""
        return self.default_timeout_seconds + VISIBILITY_MARGIN_SECONDS

    def broker_url(self) -> str:
        """The broker URL, an ``EnvVar`` read now (at run time, never at import)."""
        return _value(self.broker, "broker")

    def backend_url(self) -> str | None:
        return _value(self.backend, "backend") if self.backend else None

    def start(
        self, command: Sequence[str], env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        """The step's process, on the worker running the step."""
        return start_local_process(command, env, cwd)


def _value(value: str, what: str) -> str:
    if isinstance(value, EnvVar):
        found = value.get_value()
        if not found:
            raise ComputeTargetError(
                f"CeleryCpuCluster's {what} is ${value.env_var_name}, which is not set: export it "
                "(e.g. redis://127.0.0.1:6379/0, the Redis the workers use)."
            )
        return found
    return value


def _described(value: str) -> str:
    """A setting as a message may show it (an ``EnvVar`` refuses ``str``)."""
    return f"${value.env_var_name}" if isinstance(value, EnvVar) else value


def step_queue(target: str, resources: Mapping[str, Any]) -> str:
    """The Celery queue of a step on compute target ``target``."""
    resource = resources.get(target)
    return (resource.queue if isinstance(resource, CeleryCpuCluster) else None) or target


class _WorkerWatch:
    """Tells a lost worker from a slow step: one ping, every few seconds, of the workers whose
    tasks are STARTED; a worker missing ``MISSED_PINGS_FOR_LOST`` pings in a row is lost."""

    def __init__(self, app: Any, log: Any):
        self.app = app
        self.log = log
        self.misses: dict[str, int] = {}
        self.watched: set[str] = set()
        self.last_ping = time.monotonic()
        self.warned_queues: set[str] = set()

    def lost(self, state: str, info: Any) -> tuple[str, str] | None:
        """(worker, pid) if the worker running a task (its ``state`` and ``info``) is lost."""
        if state != "STARTED":
            return None
        info = info if isinstance(info, dict) else {}
        host = info.get("hostname")
        if not host:
            return None
        self.watched.add(host)
        self._maybe_ping()
        if self.misses.get(host, 0) >= MISSED_PINGS_FOR_LOST:
            return host, str(info.get("pid", "?"))
        return None

    def _maybe_ping(self) -> None:
        if time.monotonic() - self.last_ping < PING_INTERVAL_SECONDS or not self.watched:
            return
        hosts = sorted(self.watched)
        replies = self.app.control.ping(destination=hosts, timeout=PING_TIMEOUT_SECONDS)
        answered = {name for reply in replies for name in reply}
        for host in hosts:
            self.misses[host] = 0 if host in answered else self.misses.get(host, 0) + 1
        self.watched.clear()
        self.last_ping = time.monotonic()

    def warn_if_unserved(self, queue: str) -> None:
        """Warn (once per queue) when no worker serves ``queue``: its steps would wait forever."""
        if queue in self.warned_queues:
            return
        self.warned_queues.add(queue)
        served = self.app.control.inspect(timeout=PING_TIMEOUT_SECONDS).active_queues() or {}
        if not any(q.get("name") == queue for queues in served.values() for q in queues):
            self.log.warning(
                f"No Celery worker serves queue '{queue}' (workers seen: "
                f"{', '.join(sorted(served)) or 'none'}): its steps wait until one does. Start one "
                f"with: aml-assets worker {queue} --concurrency 1 --broker <the cluster's Redis URL>"
            )


class _StepTask:
    """The orchestrator's handle on one step's task: an ``AsyncResult`` as dagster_celery's loop
    polls it (``ready``/``get``/``revoke``), which also reports a lost worker as a step failure."""

    def __init__(self, result: Any, watch: _WorkerWatch, plan_context: Any, step: Any, queue: str):
        self.result = result
        self.watch = watch
        self.plan_context = plan_context
        self.step = step
        self.queue = queue
        self.submitted = self.checked = time.monotonic()
        self.lost: tuple[str, str] | None = None

    def ready(self) -> bool:
        if self.lost is not None or self.result.ready():
            return True
        if time.monotonic() - self.checked < PING_INTERVAL_SECONDS:
            return False
        self.checked = time.monotonic()
        meta = self.result.backend.get_task_meta(self.result.id)
        state, info = meta.get("status"), meta.get("result")
        self.lost = self.watch.lost(state, info)
        if state == "PENDING" and self.checked - self.submitted > NO_WORKER_WARNING_SECONDS:
            self.watch.warn_if_unserved(self.queue)
        if self.lost is not None:
            # If the worker comes back, it must not go on with (and publish) the step.
            self.result.revoke(terminate=True, signal="SIGKILL")
        return self.lost is not None

    def get(self) -> list[str]:
        from celery.exceptions import TaskRevokedError

        if self.lost is not None:
            host, pid = self.lost
            return [self._failure(
                f"Step '{self.step.key}' was running on Celery worker '{host}' (pid {pid}), which "
                f"stopped answering ({MISSED_PINGS_FOR_LOST} pings {PING_INTERVAL_SECONDS:.0f} s "
                "apart): the worker was killed or its machine is gone. Nothing the step wrote was "
                "published. Check that worker's log, restart it (aml-assets worker "
                f"{self.queue}), and rerun: steps that finished are reused."
            )]
        try:
            return self.result.get(disable_sync_subtasks=False)
        except TaskRevokedError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as the step's failure, with its text
            # E.g. WorkerLostError: the worker's pool process died (out of memory) mid-step.
            info = self.result.info if isinstance(self.result.info, dict) else {}
            worker = info.get("hostname") or "a Celery worker"
            return [self._failure(
                f"Step '{self.step.key}' failed on {worker} outside the step itself "
                f"({type(exc).__name__}: {exc}). Nothing the step wrote was published; see the "
                "worker's log, then rerun."
            )]

    def revoke(self) -> None:
        # The run is being stopped: a queued step is dropped, a running one is killed (its
        # script dies with the worker's pool process) and publishes nothing.
        self.result.revoke(terminate=True, signal="SIGTERM")

    def _failure(self, message: str) -> str:
        from dagster._core.events import DagsterEvent
        from dagster._core.execution.plan.objects import ErrorSource, StepFailureData
        from dagster._serdes import serialize_value
        from dagster._utils.error import SerializableErrorInfo

        error = SerializableErrorInfo(message=message, stack=[], cls_name=ComputeTargetError.__name__)
        event = DagsterEvent.step_failure_event(
            self.plan_context.for_step(self.step),
            StepFailureData(error=error, user_failure_data=None, error_source=ErrorSource.FRAMEWORK_ERROR),
            message=message,
        )
        return serialize_value(event)


def _execution_loop(
    job_context: Any,
    plan: Any,
    submit: Callable[..., _StepTask],
    limits: list[dict[str, Any]],
    run_tags_of: Callable[[Any], Mapping[str, str]] | None = None,
) -> Iterator[Any]:
    """dagster_celery's ``core_celery_execution_loop``, with two changes:

    - at most ``2 x max_nodes`` steps of this run queued or running per queue (Dagster's tag
      concurrency limits, which that loop does not pass): a run never floods a shared queue, so
      runs submitted together interleave on the cluster instead of queuing behind each other
      whole; and one step waits behind each running one, so a worker that ends a step takes the
      next at once instead of waiting for the orchestrator to notice and submit (measured, one
      worker, 0.5 s steps: the gap between its steps 0.27 s with ``max_nodes``, 0.20 s with
      twice that);
    - a 0.1 s tick instead of 1 s: with a worker waiting for the next step of a limited queue,
      each second of tick was up to a second of idle worker per step (a fully reused 20-step
      rerun took 21 s on 2 workers, steps ~0.4 s each).
    """
    from celery.exceptions import TaskRevokedError
    from dagster._core.errors import DagsterSubprocessError
    from dagster._core.events import DagsterEvent, EngineEventData
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
    from dagster._utils.error import serializable_error_info_from_exc_info
    from dagster_celery.core_execution_loop import DELEGATE_MARKER
    from dagster_celery.tags import DAGSTER_CELERY_STEP_PRIORITY_TAG
    from dagster_shared.serdes import deserialize_value

    def priority(step: Any) -> int:
        return int(step.tags.get(DAGSTER_CELERY_STEP_PRIORITY_TAG, DEFAULT_PRIORITY))

    tasks: dict[str, _StepTask] = {}
    errors: dict[str, Any] = {}
    with InstanceConcurrencyContext(job_context.instance, job_context.dagster_run) as icc, plan.start(
        retry_mode=job_context.executor.retries,
        sort_key_fn=lambda step: -priority(step),
        tag_concurrency_limits=limits,
        instance_concurrency_context=icc,
    ) as active:
        stopping = False
        while (not active.is_complete and not stopping) or tasks:
            if not stopping and active.check_for_interrupts():
                yield DagsterEvent.engine_event(
                    job_context,
                    "Received a termination signal: revoking the run's Celery tasks (running steps "
                    "are stopped and publish nothing)",
                    EngineEventData.interrupted(list(tasks)),
                )
                stopping = True
                active.mark_interrupted()
                for task in tasks.values():
                    task.revoke()
            for key, task in list(tasks.items()):
                if not task.ready():
                    continue
                try:
                    serialized = task.get()
                except TaskRevokedError:
                    serialized = []
                    yield DagsterEvent.engine_event(
                        job_context.for_step(active.get_step_by_key(key)),
                        f'Celery task of step "{key}" was revoked.',
                        EngineEventData(marker_end=DELEGATE_MARKER),
                    )
                except Exception:  # noqa: BLE001 - the run fails with it below
                    serialized = []
                    errors[key] = serializable_error_info_from_exc_info(sys.exc_info())
                tags: dict[str, str] = {}
                for item in serialized:
                    event = deserialize_value(item, DagsterEvent)
                    yield event
                    active.handle_event(event)
                    tags.update(run_tags_of(event) if run_tags_of else {})
                if tags:
                    job_context.instance.add_run_tags(job_context.run_id, tags)
                del tasks[key]
                active.verify_complete(job_context, key)
            yield from active.plan_events_iterator(job_context)
            if not (stopping or errors):
                for step in active.get_steps_to_execute():
                    queue = step.tags[QUEUE_TAG]
                    yield DagsterEvent.engine_event(
                        job_context.for_step(step),
                        f'Submitting step "{step.key}" to Celery queue "{queue}".',
                        EngineEventData(marker_start=DELEGATE_MARKER),
                    )
                    tasks[step.key] = submit(job_context, step, queue, priority(step), active.get_known_state())
            time.sleep(TICK_SECONDS)
        if errors:
            raise DagsterSubprocessError(
                "Errors occurred in Celery workers:\n"
                + "\n".join(f"[{key}]: {err.to_string()}" for key, err in errors.items()),
                subprocess_error_infos=list(errors.values()),
            )


def celery_executor(
    resources: Mapping[str, Any],
    on_run_start: Callable[[Any, str, Any], Any] | None = None,
    run_tags_of: Callable[[Any], Mapping[str, str]] | None = None,
) -> ExecutorDefinition | None:
    """The ``aml_celery`` executor of a pipeline with a ``CeleryCpuCluster`` (None without one).

    ``on_run_start(instance, run_id, log)`` runs in the orchestrator before the first step;
    ``run_tags_of(event)``: run tags a step's event implies, written by the orchestrator (the
    run record's one writer: Dagster rewrites the whole record per tag, so workers tagging at
    once would lose each other's tags)."""
    clusters = {k: r for k, r in resources.items() if isinstance(r, CeleryCpuCluster)}
    if not clusters:
        return None
    brokers = {_described(r.broker) for r in clusters.values()}
    if len(brokers) > 1:
        raise ComputeTargetError(
            f"CPU clusters {', '.join(sorted(clusters))} use different brokers ({', '.join(sorted(brokers))}): "
            "one run talks to one Celery broker; give them the same Redis URL (queues keep them apart)."
        )
    first = next(iter(clusters.values()))
    limits = [
        {"key": QUEUE_TAG, "value": step_queue(k, resources), "limit": 2 * r.max_nodes}  # see _execution_loop
        for k, r in clusters.items()
    ]
    visibility = max(r.visibility_timeout_seconds for r in clusters.values())

    from dagster._core.execution.retries import RetryMode, get_retries_config

    @executor(
        name="aml_celery",
        config_schema={"retries": get_retries_config()},
        requirements=multiple_process_executor_requirements(),
    )
    def aml_celery(init_context):
        return _executor_class()(
            retries=RetryMode.from_config(init_context.executor_config["retries"]),
            broker=first.broker_url(),
            backend=first.backend_url(),
            visibility_timeout=visibility,
            limits=limits,
            on_run_start=on_run_start,
            run_tags_of=run_tags_of,
        )

    return aml_celery


@functools.cache
def _executor_class() -> type:
    """``AmlCeleryExecutor``, defined on first use: dagster_celery imports Celery (~0.3 s), which
    a pipeline without a Celery cluster, or a run that only loads definitions, never needs."""
    from dagster_celery.executor import CeleryExecutor

    class AmlCeleryExecutor(CeleryExecutor):
        """dagster_celery's executor with our task (idempotent), per-queue limits and lost-worker
        detection; Redis is broker and result backend."""

        def __init__(
            self,
            retries: Any,
            broker: str,
            backend: str | None,
            visibility_timeout: float,
            limits: list[dict[str, Any]],
            on_run_start: Callable[[Any, str, Any], Any] | None = None,
            run_tags_of: Callable[[Any], Mapping[str, str]] | None = None,
        ):
            super().__init__(retries=retries, broker=broker, backend=backend or default_backend(broker))
            self.visibility_timeout = visibility_timeout
            self.limits = limits
            self.on_run_start = on_run_start
            self.run_tags_of = run_tags_of

        def execute(self, plan_context: Any, execution_plan: Any):
            from dagster._core.events import DagsterEvent, EngineEventData

            if self.on_run_start is not None:
                self.on_run_start(plan_context.instance, plan_context.run_id, plan_context.log)
            app = celery_app(self.broker, self.backend, self.visibility_timeout)
            watch = _WorkerWatch(app, plan_context.log)
            yield DagsterEvent.engine_event(
                plan_context,
                f"Steps go to Celery workers through {_redacted(self.broker)} (orchestrator pid "
                f"{os.getpid()}); queued or running per queue at most: "
                + ", ".join(f"{lim['value']} {lim['limit']}" for lim in self.limits),
                EngineEventData(),
            )

            def submit(context, step, queue, priority, known_state):
                task = _submit(app, context, step, queue, priority, known_state)
                return _StepTask(task, watch, context, step, queue)

            if execution_plan.step_keys_to_execute and not execution_plan.artifacts_persisted:
                raise ComputeTargetError(
                    "Steps on Celery workers pass their outputs through the datastore: an output "
                    "kept in memory cannot reach another worker. Use the pipeline's IO manager."
                )
            yield from _execution_loop(plan_context, execution_plan, submit, self.limits, self.run_tags_of)

    return AmlCeleryExecutor


def _submit(app: Any, plan_context: Any, step: Any, queue: str, priority: int, known_state: Any) -> Any:
    """dagster_celery's ``_submit_task``, with our task (``celery_worker.STEP_TASK``)."""
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import pack_value

    args = ExecuteStepArgs(
        job_origin=plan_context.reconstructable_job.get_python_origin(),
        run_id=plan_context.dagster_run.run_id,
        step_keys_to_execute=[step.key],
        instance_ref=plan_context.instance.get_ref(),
        retry_mode=plan_context.executor.retries.for_inner_plan(),
        known_state=known_state,
        print_serialized_events=True,
    )
    return app.tasks[STEP_TASK].si(
        execute_step_args_packed=pack_value(args),
        executable_dict=plan_context.reconstructable_job.to_dict(),
    ).apply_async(priority=priority, queue=queue, routing_key=f"{queue}.{STEP_TASK}")


def _redacted(url: str) -> str:
    """A broker URL without its password (logs are read by everyone with the UI)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


