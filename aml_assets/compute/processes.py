"""What a process id stands for now: the check before signalling a process named in a state file.

A pid recorded in a file (a warm Spark pool's server, the warm runner) may since have exited and
been given to another process; stopping "it" must first confirm, from its command line, that it
is still the process the file describes. Standard library only: the CLI imports it on start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def command_line(pid: int) -> list[str] | None:
    """The arguments of a live (not zombie) process, or None if there is none."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return None
        return None if state in ("Z", "X") else [a.decode(errors="replace") for a in args if a]
    out = subprocess.run(
        ["ps", "-ww", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True
    )
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split()[1:]


def terminate_group(pid: int, alive: Callable[[], bool], timeout: float = 30.0) -> None:
    """Stop a server started with a session of its own (so it leads a process group holding
    its helpers: executors, Python workers): SIGTERM the group, wait until ``alive()`` says it
    is gone (collecting its exit status if this process started it), SIGKILL what is left after
    ``timeout``. Once the leader is gone, helpers still in its group are killed too: its pid
    cannot have been given to another process while its group has members, so the group is
    still the server's. The caller checks first that ``pid`` is still its server
    (``command_line``); a pid that leads no group is signalled alone."""
    try:
        group = pid if os.getpgid(pid) == pid else None
    except ProcessLookupError:
        return

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group is not None:
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)

    def reap() -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        reap()
        time.sleep(0.1)
    if alive() or (group is not None and command_line(pid) is None):
        send(signal.SIGKILL)
    reap()


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, timeout: float = 20.0, kill_wait: float = 10.0) -> None:
    """Stop a child this process started with a session of its own (so it leads a process group
    holding what it started: code servers, run workers, a worker's pool): SIGTERM the group,
    wait until the child has exited and the group is empty, SIGKILL what is left after
    ``timeout`` and wait up to ``kill_wait`` more. The child is reaped (no zombie)."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not group_alive(pgid):
                return
            time.sleep(0.1)
    proc.poll()
