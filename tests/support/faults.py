"""Helpers for fault tests: runs of ``dagster job execute`` in their own session, processes by
pid, waiting with a deadline, and cleaning up whatever a failed test left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait until ``predicate()`` holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text else None


def wait_for_pids(paths: Iterable[Path], timeout: float) -> dict[str, int]:
    """Wait until every pid file is written; returns file name -> pid."""
    paths = list(paths)
    wait_for(lambda: all(read_pid(p) for p in paths), timeout, f"pid files {[p.name for p in paths]}")
    return {p.name: read_pid(p) for p in paths}  # type: ignore[misc]


def kill_quietly(pids: Iterable[int]) -> None:
    """SIGKILL each pid that is still there (cleanup after a failed test)."""
    for pid in pids:
        if pid and alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class DagsterRun:
    """``dagster job execute`` in a subprocess of its own session (so killpg reaches it all)."""

    def __init__(self, defs_file: Path, job: str, home: Path, env: dict[str, str], log: Path):
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in wait/kill
        self.proc = subprocess.Popen(
            [DAGSTER, "job", "execute", "-f", str(defs_file), "-j", job],
            env={**env, "DAGSTER_HOME": str(home)},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def killpg(self) -> None:
        """SIGKILL the run's whole process group, as an OOM killer or ``kill -9 -PGID`` would."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._out.close()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.killpg()
        self._out.close()


def run_to_end(defs_file: Path, job: str, home: Path, env: dict[str, str], log: Path, timeout: float) -> tuple[int, str]:
    """Run a job to its end; returns (exit code, output)."""
    run = DagsterRun(defs_file, job, home, env, log)
    try:
        code = run.wait(timeout)
    finally:
        run.cleanup()
    return code, run.output()


def grep_tree(root: Path, needles: Iterable[str]) -> list[str]:
    """Every file under ``root`` holding one of ``needles`` (as bytes), as 'path: needle'."""
    found = []
    needles = [n.encode() for n in needles if n]
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path}: {n.decode()[:12]}..." for n in needles if n in data]
    return found
