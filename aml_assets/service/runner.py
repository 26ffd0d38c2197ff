"""The warm runner: ``aml-assets run`` without paying for Python imports on every run.

A fully reused run is mostly fixed cost: importing Dagster and its storage layer (~1 s here, more
under load), then loading the pipeline and executing the job (a few hundred ms). The warm runner
pays the imports once. It is a process started by ``aml-assets runner start`` that imports
Dagster, aml-assets, pyarrow and pyspark, then listens on a Unix socket in ``$DAGSTER_HOME``
(mode 0600: the user's own runs only; no network port at all).

For each run it forks a child, a copy of the warm process with nothing of any earlier run in it.
The child takes the client's working directory, environment and stdin/stdout/stderr (the file
descriptors travel over the socket), loads the definitions file anew, and runs the job exactly as
``aml-assets run`` does in its own process: same instance, same executor, same output. A Ctrl-C
of the client reaches the child as SIGINT. So a warm run is a cold run minus the imports.

It is never stale: before each fork the runner checks that no module file it imported changed
on disk since it started (an upgrade, a ``git pull`` of aml-assets); if one did, it refuses the
run and exits, and the client runs in its own process. A client of another Python environment
is refused the same way. Without a runner, ``aml-assets run`` simply runs in its own process.

This module imports only the standard library at the top (and ``compute.processes``, which does
too): the client side must start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aml_assets.compute.processes import command_line

SOCKET_NAME = "aml-runner.sock"
PID_NAME = "aml-runner.json"
#: Modules the runner imports ahead of any run: the fixed cost it exists to pay once.
PRELOAD = (
    "dagster",
    "dagster._core.execution.api",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.workspace.autodiscovery",
    "dagster._core.instance.factory",
    "dagster._core.instance.runs.run_domain",
    "dagster._core.executor.in_process",
    "dagster._core.execution.plan.active",
    "dagster._core.storage.legacy_storage",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.secrets.env_file",
    "dagster._core.definitions.repository_definition.repository_data_builder",
    "dagster._core.utility_ops",
    "dagster._utils.test.definitions",
    "upath",
    "aml_assets.pipeline.assets",
    "aml_assets.pipeline.definition",
    "aml_assets.pipeline.executor",
    "aml_assets.pipeline.orphans",
    "aml_assets.service.runs",
    "aml_assets.service.event_log",
    "aml_assets.compute.launch",
    "pyarrow",
    "pyarrow.csv",
    "pyarrow.parquet",
    "pyspark.sql",
)


def dagster_home() -> Path | None:
    home = os.environ.get("DAGSTER_HOME")
    return Path(home).absolute() if home else None


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


# --- wire format: a length-prefixed JSON message, optionally with file descriptors -----------


def _send(conn: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    payload = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(conn, [payload], fds)
    else:
        conn.sendall(payload)


def _recv(conn: socket.socket, with_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(conn, 4, with_fds)
    else:
        head = conn.recv(4)
    while head and len(head) < 4:
        more = conn.recv(4 - len(head))
        if not more:
            break
        head += more
    if len(head) < 4:
        return None, fds
    (size,) = struct.unpack("!I", head)
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None, fds
        data += chunk
    return json.loads(data), fds


# --- the client ---------------------------------------------------------------------------------


def run_warm(request: dict[str, Any]) -> int | None:
    """Run ``request`` (a ``RunRequest`` as JSON) on the warm runner of ``$DAGSTER_HOME``.

    Returns the run's exit status, or None when no usable runner is there (the caller then runs
    in its own process)."""
    home = dagster_home()
    if home is None or not socket_path(home).exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(socket_path(home)))
        _send(
            conn,
            {"request": request, "env": dict(os.environ), "cwd": os.getcwd(), "python": sys.executable},
            fds=[0, 1, 2],
        )
    except OSError:
        conn.close()
        return None  # a runner that died without removing its socket
    interrupted: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        with contextlib.suppress(OSError):
            _send(conn, {"signal": int(signum)})

    saved = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                reply, _ = _recv(conn)
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        conn.close()
    if reply is None:
        if interrupted:
            return 130
        print("aml-assets: the warm runner ended without answering; see its log", file=sys.stderr)
        return 1
    if reply.get("refused"):
        print(f"aml-assets: warm runner not used: {reply['refused']}", file=sys.stderr)
        return None
    return int(reply.get("exit", 1))


# --- the server ---------------------------------------------------------------------------------


def _module_files() -> dict[str, int]:
    """Every imported module's file with its modification time (to notice upgrades)."""
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path not in out:
            with contextlib.suppress(OSError):
                out[path] = os.stat(path).st_mtime_ns
    return out


def _changed(stamp: dict[str, int]) -> str | None:
    for path, mtime in stamp.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return path
        except OSError:
            return path
    return None


def serve(home: Path) -> int:
    """Preload, then fork a child per run until SIGTERM (or until our own code changes)."""
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    with contextlib.suppress(Exception):  # the event log's schema revision, computed once here
        from aml_assets.service.event_log import head_revision

        head_revision()
    stamp = _module_files()
    path = socket_path(home)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is created 0600: this user's runs only
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(16)
    server.settimeout(1.0)
    pid_file = home / PID_NAME
    pid_file.write_text(
        json.dumps({"pid": os.getpid(), "socket": str(path), "python": sys.executable, "started": time.time()})
    )
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stopping.append(s))
    signal.signal(signal.SIGINT, lambda s, f: stopping.append(s))
    # Forking copies one thread only: a lock another thread held at fork stays locked in the
    # child. Preloading must not have started any.
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    print(
        f"warm runner {os.getpid()} listening on {path} ({len(stamp)} module files preloaded"
        + (f"; WARNING: threads running at fork: {', '.join(threads)}" if threads else "")
        + ")",
        flush=True,
    )
    try:
        while not stopping:
            _reap()
            try:
                conn, _ = server.accept()
            except (TimeoutError, InterruptedError):
                continue
            try:
                message, fds = _recv(conn, with_fds=3)
            except (OSError, ValueError):
                conn.close()
                continue
            if message is None or len(fds) != 3:
                conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            refused = None
            if message.get("python") != sys.executable:
                refused = f"it serves {sys.executable}, this command runs {message.get('python')}"
            elif changed := _changed(stamp):
                refused = f"{changed} changed since it started; it stopped (start it again)"
                stopping.append(0)
            if refused:
                with contextlib.suppress(OSError):
                    _send(conn, {"refused": refused})
                conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:  # the child: one run, then exit
                server.close()
                os._exit(_child(conn, message, fds))
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            if json.loads(pid_file.read_text()).get("pid") == os.getpid():
                pid_file.unlink()
    return 0


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _child(conn: socket.socket, message: dict[str, Any], fds: list[int]) -> int:
    """One run in a forked copy of the warm process, as the client's process would run it."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the client's terminal, kept open
        sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()  # its own session: the client's Ctrl-C arrives forwarded, once
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(message["env"])
        threading.Thread(target=_forward_signals, args=(conn,), daemon=True).start()
        from aml_assets.service.runs import RunRequest, execute

        code = execute(RunRequest.from_json(message["request"]), where=f"on the warm runner (pid {os.getppid()})")
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # noqa: BLE001 - reported to the client's terminal
        from aml_assets.errors import AmlAssetsError

        code = 1
        if isinstance(exc, AmlAssetsError):  # as the command itself reports it
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        else:
            import traceback

            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            _send(conn, {"exit": code})
    return code


def _forward_signals(conn: socket.socket) -> None:
    """Signals the client received (Ctrl-C), delivered to this run's process."""
    while True:
        try:
            message, _ = _recv(conn)
        except OSError:
            return
        if message is None:
            return
        if "signal" in message:
            os.kill(os.getpid(), int(message["signal"]))


# --- start / stop / status ------------------------------------------------------------------------


def status(home: Path) -> dict[str, Any] | None:
    """The running runner of ``home`` (pid, socket), or None (a stale record is removed)."""
    pid_file = home / PID_NAME
    try:
        info = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return None
    if not _is_runner(int(info.get("pid", 0)), home):
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            socket_path(home).unlink()
        return None
    return info


def _is_runner(pid: int, home: Path) -> bool:
    """Whether ``pid`` is still the warm runner of ``home`` (not a zombie, not a reused pid,
    not another home's runner)."""
    args = command_line(pid) or []
    return "aml_assets.service.runner" in args and str(home) in args


def start(home: Path, timeout: float = 60) -> dict[str, Any]:
    """Start the runner of ``home`` in the background (idempotent); returns its status."""
    import subprocess

    if (info := status(home)) is not None:
        return {**info, "already": True}
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "aml-runner.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "aml_assets.service.runner", "serve", str(home)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "DAGSTER_HOME": str(home)},
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the warm runner exited with code {proc.returncode}; see {home / 'aml-runner.log'}"
            )
        info = status(home)
        if info is not None and socket_path(home).exists():
            return info
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"the warm runner did not start within {timeout:g} s; see {home / 'aml-runner.log'}")


def stop(home: Path, timeout: float = 30) -> bool:
    """Stop the runner of ``home``; False when none was running."""
    info = status(home)
    if info is None:
        return False
    pid = int(info["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _is_runner(pid, home):
        time.sleep(0.1)
    status(home)  # removes the record if it is left
    return True


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "serve":
        return serve(Path(args[1]))
    print("usage: python -m aml_assets.service.runner serve DAGSTER_HOME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
