"""The parallel executor: the steps of one run overlap in threads of the run's own process.

Why threads, not a process per step (Dagster's multiprocess executor, which ``parallel=True``
used before): a step's real work happens outside the Dagster process already (a script step
is a child process; a Spark step's work is in the pool's JVM), so the Dagster side of a step
only decides reuse, launches and waits. A process per step paid 1.5-2 s (a fresh interpreter
importing Dagster and reloading the pipeline file, 6 s under load) even for a step that was
then reused in milliseconds, which made parallel runs 5-18x slower than sequential ones, and it
gave every Spark step its own JVM. In threads:

- a reused step costs what it costs sequentially (no process, no import);
- resources are built once per run: one Spark session, one set of datastore clients;
- steps that run overlap up to their compute target's ``max_concurrent_steps`` (Dagster's own
  tag concurrency limits, keyed by the ``aml/compute_target`` op tag);
- the GIL is no bottleneck: the threads wait on child processes, the JVM and I/O.

A preloaded forkserver or a worker pool would still pay a process hand-off and the pipeline's
reload per step, and could not share the Spark session. In-process Spark steps take a
process-wide lock (they swap the process's stdio and environment while they run), so they run
one at a time, beside script steps. Events reach Dagster from this (the main) thread only, in
the order each step produced them, exactly as the in-process executor would write them.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from dagster import Field, executor
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.compute_logs import create_compute_log_file_key
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import (
    _trigger_hook,
    dagster_event_sequence_for_step,
)
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.executor.base import Executor
from dagster._utils.error import serializable_error_info_from_exc_info

from aml_assets.compute.launch import stop_running_steps

#: How often the orchestrating thread looks for an interrupt while steps run (seconds).
_POLL_SECONDS = 0.1

_DONE = object()


class ThreadedExecutor(Executor):
    """Runs a run's steps in threads of its process, within per-compute-target limits."""

    def __init__(
        self,
        retries: RetryMode,
        max_concurrent: int,
        tag_concurrency_limits: Sequence[Mapping[str, Any]] = (),
    ):
        self._retries = retries
        self.max_concurrent = max(1, max_concurrent)
        self.tag_concurrency_limits = [dict(limit) for limit in tag_concurrency_limits]

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        keys = execution_plan.step_keys_to_execute
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in threads of process {os.getpid()} "
            f"(at most {self.max_concurrent} at once; per compute target: "
            + (", ".join(f"{lim['value']} {lim['limit']}" for lim in self.tag_concurrency_limits) or "no limit")
            + ")",
            event_specific_data=EngineEventData.in_process(os.getpid(), keys),
        )
        yield from ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=self._iterate,
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job,
                retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan,
                run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run,
                instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error,
                output_capture=plan_context.output_capture,
            ),
        )

    def _iterate(
        self, job_context: PlanExecutionContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        with InstanceConcurrencyContext(job_context.instance, job_context.dagster_run) as icc:
            yield from _run_plan(
                job_context,
                execution_plan,
                icc,
                self.max_concurrent,
                self.tag_concurrency_limits,
            )


def _drive(key: str, step_context: Any, events: queue.Queue) -> None:
    """A step's thread: run the step, handing each of its events to the orchestrating thread."""
    try:
        for event in dagster_event_sequence_for_step(step_context):
            events.put((key, event))
    except BaseException as exc:  # noqa: BLE001 - re-raised by the orchestrating thread
        events.put((key, exc))
    finally:
        events.put((key, _DONE))


def _run_plan(
    job_context: PlanExecutionContext,
    execution_plan: ExecutionPlan,
    icc: InstanceConcurrencyContext,
    max_concurrent: int,
    tag_limits: list[dict[str, Any]],
) -> Iterator[DagsterEvent]:
    """The in-process executor's loop (``inner_plan_execution_iterator``), with up to
    ``max_concurrent`` steps in flight, each in its own thread."""
    compute_log_manager = job_context.instance.compute_log_manager
    step_keys = [step.key for step in execution_plan.get_steps_to_execute_in_topo_order()]
    with execution_plan.start(
        retry_mode=job_context.retry_mode,
        max_concurrent=max_concurrent,
        tag_concurrency_limits=tag_limits,
        instance_concurrency_context=icc,
        step_dependency_config=job_context.step_dependency_config,
    ) as active, ExitStack() as capture_stack:
        # One captured log for the whole process, as the in-process executor keeps.
        file_key = create_compute_log_file_key()
        log_key = compute_log_manager.build_log_key_for_run(job_context.run_id, file_key)
        try:
            log_context = capture_stack.enter_context(compute_log_manager.capture_logs(log_key))
            yield DagsterEvent.capture_logs(job_context, step_keys, log_key, log_context)
        except Exception:
            yield DagsterEvent.engine_event(
                job_context,
                "Exception while setting up compute log capture",
                EngineEventData(error=serializable_error_info_from_exc_info(sys.exc_info())),
            )

        events: queue.Queue = queue.Queue()
        running: dict[str, tuple[Any, list[DagsterEvent], threading.Thread]] = {}
        stopping = False
        failure: BaseException | None = None
        try:
            while running or (not stopping and not active.is_complete):
                if not stopping and active.check_for_interrupts():
                    stopping = True
                    active.mark_interrupted()
                    yield DagsterEvent.engine_event(
                        job_context,
                        "Received a termination signal: stopping the running steps "
                        f"({', '.join(running) or 'none'}); they publish nothing",
                        EngineEventData.interrupted(list(running)),
                    )
                    stop_running_steps(job_context.run_id)
                if not stopping:
                    for step in active.get_steps_to_execute(limit=max_concurrent - len(running)):
                        step_context = job_context.for_step(step, active.get_known_state())
                        thread = threading.Thread(
                            target=_drive,
                            args=(step.key, step_context, events),
                            name=f"aml-step-{step.key}",
                            daemon=True,
                        )
                        running[step.key] = (step_context, [], thread)
                        thread.start()
                    yield from active.concurrency_event_iterator(job_context)
                if not running:
                    if stopping:
                        break
                    active.sleep_til_ready()  # e.g. a step waiting for its retry
                    continue
                try:
                    key, item = events.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
                step_context, step_events, thread = running[key]
                if item is _DONE:
                    thread.join()
                    del running[key]
                    active.verify_complete(job_context, key)
                    for event in active.plan_events_iterator(job_context):
                        step_events.append(event)
                        yield event
                    yield from _trigger_hook(step_context, step_events)
                elif isinstance(item, BaseException):
                    # Dagster's own machinery failed (a step's errors are events): stop the
                    # others, then fail the run with it.
                    failure = failure or item
                    if not stopping:
                        stopping = True
                        stop_running_steps(job_context.run_id)
                else:
                    step_events.append(item)
                    yield item
                    active.handle_event(item)
        except BaseException:
            # The run is being torn down (an interrupt raised here, an error): no step of it
            # may go on running, or publish, behind Dagster's back.
            stop_running_steps(job_context.run_id)
            for _, _, thread in running.values():
                thread.join(timeout=30)
            raise
        if failure is not None:
            raise failure
        if stopping:
            raise DagsterExecutionInterruptedError()
        capture_stack.close()


def pipeline_executor(max_concurrent: int, tag_concurrency_limits: Sequence[Mapping[str, Any]]):
    """The executor definition of a parallel pipeline (config: Dagster's usual ``retries``)."""

    @executor(
        name="aml_threads",
        config_schema={
            "retries": get_retries_config(),
            "max_concurrent": Field(
                int,
                default_value=max_concurrent,
                description="How many steps of a run may be in flight at once (each compute "
                "target's own limit applies too).",
            ),
        },
    )
    def aml_threads(init_context):
        config = init_context.executor_config
        return ThreadedExecutor(
            retries=RetryMode.from_config(config["retries"]),
            max_concurrent=config["max_concurrent"],
            tag_concurrency_limits=tag_concurrency_limits,
        )

    return aml_threads
