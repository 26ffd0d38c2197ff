"""Celery workers for tests: real ``aml-assets worker`` processes, each in its own working
directory and its own process group (so one can be killed whole, as a lost machine would be).

Only processes started here are ever signalled, by their process group id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aml_assets.compute.celery_worker import celery_app, worker_command
from aml_assets.compute.processes import stop_group


@dataclass
class Worker:
    """One worker process: its Celery node name, folder and log."""

    name: str  # as Celery reports it: NAME@HOST
    proc: subprocess.Popen
    cwd: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker's whole process group: main process and pool, no goodbye."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM to the group): the running step ends first."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL to whatever of the group is left."""
        stop_group(self.proc, timeout, kill_wait=30)


def stop_all(workers: Sequence[Worker]) -> None:
    """Stop workers together (a warm shutdown takes seconds each)."""
    for w in workers:
        w.terminate()
    for w in workers:
        w.stop()


def start_worker(
    base_dir: Path,
    name: str,
    broker: str,
    targets: Sequence[str] = ("cpucluster",),
    concurrency: int = 1,
    env: Mapping[str, str] | None = None,
) -> Worker:
    """Start ``aml-assets worker TARGETS`` in ``base_dir/name`` (its cwd), in a new session."""
    cwd = Path(base_dir) / name
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / "worker.log"
    command = worker_command(targets, concurrency, broker, hostname=f"{name}@%h", loglevel="INFO")
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {}), "AML_WORKER_NAME": name},
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    import socket

    return Worker(name=f"{name}@{socket.gethostname()}", proc=proc, cwd=cwd, log=log)


def wait_ready(broker: str, workers: Sequence[Worker], timeout: float = 60) -> None:
    """Wait until every worker answers a ping (it consumes its queues from then on)."""
    app = celery_app(broker)
    deadline = time.monotonic() + timeout
    wanted = {w.name for w in workers}
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker {w.name} exited with {w.proc.returncode}:\n{w.log_text()[-3000:]}")
        replies = app.control.ping(destination=sorted(wanted), timeout=1.0)
        seen = {name for reply in replies for name in reply}
        if wanted <= seen:
            return
    raise RuntimeError(
        f"workers {sorted(wanted - seen)} did not answer within {timeout:.0f} s:\n"
        + "\n".join(w.log_text()[-2000:] for w in workers)
    )


@contextmanager
def celery_workers(
    base_dir: Path,
    broker: str,
    count: int,
    targets: Sequence[str] = ("cpucluster",),
    env: Mapping[str, str] | None = None,
    prefix: str = "w",
) -> Iterator[list[Worker]]:
    """``count`` workers (names ``w1``, ``w2``, ...) serving ``targets``; stopped at the end."""
    workers: list[Worker] = []
    try:
        for i in range(1, count + 1):
            workers.append(start_worker(base_dir, f"{prefix}{i}", broker, targets, env=env))
        wait_ready(broker, workers)
        yield workers
    finally:
        stop_all(workers)
