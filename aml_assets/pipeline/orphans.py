"""Runs whose process is gone are marked failed.

A run killed with SIGKILL (or whose machine crashed) never reports its end: Dagster shows it
``STARTED`` forever. Each step op tags its run, once, with the identity of the process running it
(host, boot, pid and the pid's start time, so a reused pid is not mistaken for the run), and
checks the other in-progress runs on this host carrying those tags: a run whose process is gone
is marked failed, with a message saying so.

Runs launched through the daemon or the webserver are watched by Dagster's own run monitoring
too (``run_monitoring`` in ``dagster.yaml``).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import socket
from typing import Any

PID_TAG = "aml/pid"
HOST_TAG = "aml/host"
BOOT_TAG = "aml/boot"
START_TAG = "aml/pid_start"
#: The pid namespace: two containers on one host (same host name) see different processes.
PIDNS_TAG = "aml/pid_ns"

# Runs this process has tagged already (a run's steps run in one process, or in children of it).
_tagged: set[str] = set()


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return socket.gethostname()


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is no such process.

    Two processes that had the same pid have different start times.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:  # no /proc (not Linux): the pid is all we have
        return _pid_alive(pid)
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie has ended
        return None
    return fields[19].decode()


def _pid_alive(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"


def run_process() -> int:
    """The pid of the process running this run: this one, or the parent of a step process of
    Dagster's multiprocess executor."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getpid()


def identity(pid: int | None = None) -> dict[str, str]:
    """The tags naming the process ``pid`` (default: this run's process) on this host."""
    pid = pid or run_process()
    return {
        PID_TAG: str(pid),
        HOST_TAG: _host(),
        BOOT_TAG: _boot_id(),
        PIDNS_TAG: _pid_namespace(),
        START_TAG: process_start(pid) or "",
    }


def gone_reason(tags: dict[str, str]) -> str | None:
    """Why the process named by a run's tags is gone, or None while it runs (or is unknown)."""
    try:
        pid = int(tags[PID_TAG])
    except (KeyError, ValueError):
        return None
    namespace = tags.get(PIDNS_TAG, "")
    if namespace and _pid_namespace() and namespace != _pid_namespace():
        return None  # another container's process: not ours to judge
    gone = f"process (pid {pid}) is gone"
    boot = tags.get(BOOT_TAG, "")
    if boot and _boot_id() and boot != _boot_id():
        return f"{gone}: the machine was restarted"
    start = process_start(pid)
    if start is None:
        return f"{gone}: it was killed or crashed"
    recorded = tags.get(START_TAG, "")
    if recorded and start != "?" and recorded != start:
        return f"{gone}: it was killed or crashed (pid {pid} now belongs to another process)"
    return None


def watch_run(context: Any) -> list[str]:
    """At the start of a step op: tag the current run with its process (once), and mark failed
    the in-progress runs on this host whose process is gone. Returns the ids of those runs.

    Housekeeping: a problem here is logged, never fails the step."""
    from aml_assets.compute.celery_worker import running_in_worker

    if running_in_worker():
        # The step runs on a Celery worker: this process is the worker's, not the run's. Tagged
        # with it, the run would be marked failed when the worker goes, though its orchestrator
        # (which tagged the run itself: watch_orchestrator) still runs and fails the lost step.
        return []
    return _watch(context.instance, context.run_id, context.run.tags, context.log)


def watch_orchestrator(instance: Any, run_id: str, log: Any) -> list[str]:
    """At the start of a run whose steps run in other processes (Celery workers): tag the run
    with this, its orchestrating process, and mark failed the runs whose process is gone."""
    run = instance.get_run_by_id(run_id)
    return _watch(instance, run_id, run.tags if run is not None else {}, log)


def _watch(instance: Any, run_id: str, tags: Any, log: Any) -> list[str]:
    try:
        if run_id in _tagged:
            return []  # once per run: a query per step would cost every reused step ~5 ms
        _tagged.add(run_id)
        mine = identity()
        if any(tags.get(k) != v for k, v in mine.items()):
            instance.add_run_tags(run_id, mine)
        marked = mark_orphans_failed(instance, run_id)
    except Exception as exc:  # noqa: BLE001
        log.warning(f"Could not check for runs whose process is gone: {exc}")
        return []
    for other in marked:
        log.warning(f"Run {other}'s process is gone: marked it failed.")
    return marked


def mark_orphans_failed(instance: Any, current_run_id: str | None = None) -> list[str]:
    """Mark failed every STARTED/STARTING run on this host whose tagged process is gone."""
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance.get_runs(
        filters=RunsFilter(
            statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING],
            tags={HOST_TAG: _host()},
        )
    )
    marked = []
    for run in runs:
        if run.run_id == current_run_id:
            continue
        reason = gone_reason(dict(run.tags))
        if reason is None:
            continue
        by = f"; marked failed by run {current_run_id}" if current_run_id else ""
        message = f"Run {run.run_id}'s {reason}{by}."
        # The run may have ended between the query and now: only an in-progress run is failed.
        latest = instance.get_run_by_id(run.run_id)
        if latest is None or latest.status not in (DagsterRunStatus.STARTED, DagsterRunStatus.STARTING):
            continue
        instance.report_run_failed(latest, message=message)
        marked.append(run.run_id)
    return marked
