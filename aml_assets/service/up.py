"""``aml-assets up`` / ``down``: the service on one machine, on loopback, on the project's instance.

Three processes, each Dagster's own or ours, in their own process groups:

- ``dagster-webserver`` (the UI), on ``host:ui_port``;
- ``dagster-daemon run``: the run queue, schedules and data-change sensors;
- the HTTP API (``aml-assets serve``), on ``host:api_port``.

The supervisor (this module) starts them on ``$DAGSTER_HOME``, waits until each answers (the
webserver's ``/server_info``, the API's ``/healthz``, the daemon's heartbeat in the instance),
prints where each listens and writes a state file (``$DAGSTER_HOME/aml/service.json``, 0600).
``down`` signals the supervisor named there (after checking, from its command line, that the pid
is still that supervisor: a reused pid is never signalled), and the supervisor stops its children
group by group: no broad ``pkill``.

Schedules and data-change triggers are Dagster definitions built from records on the datastore
when the code location loads. A running daemon and webserver keep the code they loaded, so the
supervisor polls the records' signature and, when a schedule is created, changed or deleted,
restarts the daemon and asks the webserver to reload the code location: a new schedule is live
within seconds, without the user restarting anything.

A child that dies is reported with the tail of its log, and the supervisor stops the others and
exits non-zero: a half-up service that looks up is worse than one that is plainly down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aml_assets.compute.processes import command_line, stop_group
from aml_assets.errors import AmlAssetsError

STATE_NAME = "service.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServiceError(AmlAssetsError):
    """The local service could not be started or stopped as asked."""


@dataclass
class ServiceSettings:
    """Where the service listens and what it serves."""

    workspace: Path = Path("workspace.yaml")
    host: str = "127.0.0.1"
    ui_port: int = 3000
    api_port: int = 8787
    #: Seconds between looks at the schedule records (a new schedule goes live this fast).
    schedule_poll_seconds: float = 5.0
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def ui_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.ui_port}"

    @property
    def api_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.api_port}"


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def state_dir(home: Path) -> Path:
    path = home / "aml"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def state_file(home: Path) -> Path:
    return state_dir(home) / STATE_NAME


def read_state(home: Path) -> dict[str, Any] | None:
    """The running service's state, or None (a stale file, whose supervisor is gone, is removed)."""
    path = state_file(home)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    args = command_line(int(state.get("pid", 0)))
    if not args or not any("aml_assets" in a or "aml-assets" in a for a in args) or "up" not in args:
        path.unlink(missing_ok=True)
        return None
    return state


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no output>"


@dataclass
class _Child:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    #: Its own working directory and environment additions (a cluster's workers), if any.
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, env: dict[str, str], cwd: Path) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=self.cwd or cwd, env={**env, **self.env}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop_leader(self, timeout: float = 30.0) -> int | None:
        """Stop only the child process, not its group; returns the group id left behind.

        For a reload: the daemon's code server keeps running the runs it started (Dagster's code
        server shuts down only once its executions finish), so they are not killed by a reload.
        """
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the child's process group (its code servers and run workers too), then
        SIGKILL what is left after ``timeout``."""
        if self.proc is not None:
            stop_group(self.proc, timeout, kill_wait=5.0)


class Supervisor:
    """Starts, watches and stops the service's processes (see the module docstring)."""

    def __init__(self, settings: ServiceSettings, home: Path, out: TextIO):
        self.settings = settings
        self.home = home
        self.out = out
        self.cwd = settings.workspace.resolve().parent
        logs = state_dir(home) / "logs"
        logs.mkdir(exist_ok=True)
        ws = str(settings.workspace.resolve())
        bin_dir = Path(sys.executable).parent
        self.webserver = _Child(
            "webserver",
            [str(bin_dir / "dagster-webserver"), "-w", ws, "-h", settings.host, "-p", str(settings.ui_port)],
            logs / "webserver.log",
        )
        self.daemon = _Child("daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", ws], logs / "daemon.log")
        self.api = _Child(
            "api",
            [
                sys.executable, "-m", "aml_assets.cli", "serve", "--workspace", ws,
                "--host", settings.host, "--port", str(settings.api_port),
                "--webserver-url", settings.ui_url,
            ],
            logs / "api.log",
        )
        self.children = [self.webserver, self.daemon, self.api]
        #: Process groups of daemons replaced by a reload: their code servers finish their runs.
        self.retired_groups: list[int] = []
        #: When the current daemon process started: only a heartbeat after it says it is up.
        self.daemon_started_at = 0.0
        self._stopping = False

    # --- start ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.extra_env, "DAGSTER_HOME": str(self.home)}

    def start(self) -> None:
        s = self.settings
        if not s.workspace.is_file():
            raise ServiceError(
                f"No workspace file {s.workspace}: run from the project folder or pass --workspace."
            )
        if s.host not in LOOPBACK:
            print(
                f"warning: listening on {s.host}, not loopback: the UI has no authentication and the "
                "API's tokens travel in clear text without TLS; put a TLS proxy in front.",
                file=sys.stderr,
            )
        ports = ((s.ui_port, "the UI", "--ui-port", self.webserver), (s.api_port, "the HTTP API", "--api-port", self.api))
        for port, what, flag, child in ports:
            if child in self.children and not _port_free(s.host, port):
                raise ServiceError(
                    f"Port {port} on {s.host} is in use, so {what} cannot listen there; stop what "
                    f"uses it ('aml-assets down' if it is another aml-assets service) or pass {flag}."
                )
        from aml_assets.service.instance import ensure_instance

        # Once, under a lock (three processes must not race on a new home), with the project's
        # dagster.yaml (its run queue) when the home has none yet.
        ensure_instance(self.home, default_config=self.instance_config())
        env = self.env()
        started = time.monotonic()
        self.daemon_started_at = time.time()
        for child in self.children:
            child.start(env, self.cwd)
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise

    def instance_config(self) -> Path | None:
        """The ``dagster.yaml`` the home starts from: the project's (its run queue), if any."""
        project_config = self.cwd / "dagster.yaml"
        return project_config if project_config.is_file() else None

    def _wait_ready(self, started: float, timeout: float = 180.0) -> None:
        from dagster import DagsterInstance

        pending = {child.name for child in self.children}
        deadline = time.monotonic() + timeout
        with DagsterInstance.from_config(str(self.home)) as instance:
            self._wait_for(pending, instance, deadline, timeout)
        self._say_where(started)

    def _wait_for(self, pending: set[str], instance: Any, deadline: float, timeout: float) -> None:
        while pending:
            for child in self.children:
                if not child.alive():
                    raise ServiceError(
                        f"The {child.name} exited while starting (status {child.proc.returncode}); "
                        f"its log ({child.log}) ends with:\n{_tail(child.log)}"
                    )
            pending -= {name for name in pending if self._ready(name, instance)}
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{', '.join(sorted(pending))} did not become ready in {timeout:.0f} s; see the "
                    f"logs in {state_dir(self.home) / 'logs'}"
                )
            time.sleep(0.3)

    def _ready(self, name: str, instance: Any) -> bool:
        """Whether the child ``name`` (alive) answers: the UI and the API over HTTP, the daemon
        by its heartbeat."""
        if name == "webserver":
            return _answers(f"{self.settings.ui_url}/server_info")
        if name == "api":
            return _answers(f"{self.settings.api_url}/healthz")
        return name != "daemon" or self._daemon_heartbeat(instance)

    def _say_where(self, started: float) -> None:
        print(
            f"aml-assets service up in {time.monotonic() - started:.1f} s on {self.home}:\n"
            f"  UI (dagster-webserver)  {self.settings.ui_url}\n"
            f"  HTTP API                {self.settings.api_url}/api/v1  (tokens: aml-assets tokens create NAME)\n"
            f"  dagster-daemon          run queue, schedules, data-change triggers\n"
            f"  logs                    {state_dir(self.home) / 'logs'}\n"
            "Stop with Ctrl-C (or 'aml-assets down').",
            file=self.out,
            flush=True,
        )

    def _daemon_heartbeat(self, instance: Any) -> bool:
        """Whether the daemon has written a heartbeat since it started."""
        beats = instance.get_daemon_heartbeats()
        return any(b.timestamp >= self.daemon_started_at for b in beats.values())

    # --- run -----------------------------------------------------------------------------
    def write_state(self) -> None:
        s = self.settings
        state = {
            "pid": os.getpid(),
            "home": str(self.home),
            "workspace": str(s.workspace.resolve()),
            "ui_url": s.ui_url,
            "api_url": s.api_url,
            "children": {c.name: c.proc.pid for c in self.children if c.proc},
            "started_at": time.time(),
        }
        path = state_file(self.home)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, path)

    def serve_forever(self) -> int:
        """Watch the children and the schedule records until stopped; the exit status."""
        signature = self._schedules_signature()
        last_poll = time.monotonic()
        while not self._stopping:
            for child in self.children:
                if not child.alive():
                    print(
                        f"The {child.name} exited (status {child.proc.returncode}); stopping the "
                        f"service. Its log ({child.log}) ends with:\n{_tail(child.log)}",
                        file=sys.stderr,
                    )
                    return 1
            if time.monotonic() - last_poll >= self.settings.schedule_poll_seconds:
                last_poll = time.monotonic()
                now = self._schedules_signature()
                if now is not None and signature is not None and now != signature:
                    self.reload_code()
                if now is not None:
                    signature = now
            time.sleep(0.5)
        return 0

    def _schedules_signature(self) -> str | None:
        """Digest of the schedule records: a change means the daemon and the UI must load the
        code again (schedules and triggers are definitions built from the records)."""
        from aml_assets.service.schedules import records_signature

        try:
            return records_signature(None)
        except Exception as exc:  # a datastore hiccup: keep serving, look again later
            print(f"warning: could not read the schedule records: {exc}", file=sys.stderr)
            return None

    def reload_code(self) -> None:
        """Schedules changed: restart the daemon, have the webserver reload its code location.

        Runs in progress go on: only the daemon process is stopped, and its code server (which
        runs them) exits once they finish. The HTTP API needs no reload for schedules; it reloads
        its own code when a version published after it loaded is called (``service.submit``).
        """
        print("Schedules or triggers changed: reloading the daemon and the UI's code", file=self.out, flush=True)
        retired = self.daemon.stop_leader()
        if retired is not None:
            self.retired_groups.append(retired)
        self.daemon_started_at = time.time()
        self.daemon.start(self.env(), self.cwd)
        query = json.dumps({"query": "mutation { reloadWorkspace { __typename } }"}).encode()
        request = urllib.request.Request(
            f"{self.settings.ui_url}/graphql", data=query, headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=60).read()
        except (OSError, urllib.error.URLError) as exc:
            print(f"warning: the UI did not reload its code ({exc}); use its Reload button", file=sys.stderr)
        self.write_state()

    def stop(self) -> None:
        self._stopping = True
        # The API first (no new submissions), the daemon (no new launches), then the UI.
        for child in (self.api, self.daemon, self.webserver):
            child.stop()
        for pgid in self.retired_groups:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def up(settings: ServiceSettings, home: Path, out: TextIO, supervisor: Supervisor | None = None) -> int:
    """Run the service (or ``supervisor``'s, e.g. the local cluster's) in the foreground until
    Ctrl-C, SIGTERM or ``aml-assets down``."""
    existing = read_state(home)
    if existing:
        raise ServiceError(
            f"A service is already running on {home} (pid {existing['pid']}, UI {existing['ui_url']}, "
            f"API {existing['api_url']}); stop it with 'aml-assets down'."
        )
    supervisor = supervisor or Supervisor(settings, home, out)

    def _stop(signum: int, _frame: Any) -> None:
        supervisor._stopping = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        supervisor.write_state()
        status = supervisor.serve_forever()
    finally:
        print("Stopping the service ...", file=out, flush=True)
        supervisor.stop()
        state_file(home).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def up_detached(
    settings: ServiceSettings, home: Path, out: TextIO, timeout: float = 240.0,
    command: list[str] | None = None, banner: str = "aml-assets service up",
) -> int:
    """Start ``up`` (or ``command``, a form of it whose ready message starts with ``banner``) as
    a background process and return once it is ready (or has failed)."""
    existing = read_state(home)
    if existing:
        print(f"Already running: UI {existing['ui_url']}, API {existing['api_url']} (pid {existing['pid']})", file=out)
        return 0
    log = state_dir(home) / "logs" / "supervisor.log"
    log.parent.mkdir(exist_ok=True)
    args = command or [
        sys.executable, "-m", "aml_assets.cli", "up", "--workspace", str(settings.workspace.resolve()),
        "--host", settings.host, "--ui-port", str(settings.ui_port), "--api-port", str(settings.api_port),
    ]
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            args, cwd=settings.workspace.resolve().parent, env={**os.environ, "DAGSTER_HOME": str(home)},
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"The service did not start; its log ({log}) ends with:\n{_tail(log)}")
        state = read_state(home)
        if state and state.get("pid") == proc.pid:
            text = _tail(log, 3000)
            print(text[text.rfind(banner):].strip(), file=out)
            return 0
        time.sleep(0.3)
    raise ServiceError(f"The service did not become ready in {timeout:.0f} s; see {log}")


def down(home: Path, out: TextIO, timeout: float = 60.0) -> int:
    """Stop the service recorded in ``home``'s state file."""
    state = read_state(home)
    if state is None:
        print(f"No aml-assets service is running on {home}.", file=out)
        return 0
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if command_line(pid) is None:
            print(f"Stopped the service (pid {pid}).", file=out)
            return 0
        time.sleep(0.2)
    raise ServiceError(
        f"The service (pid {pid}) did not stop within {timeout:.0f} s; its children may still be "
        f"stopping. Look at {state_dir(home) / 'logs'}."
    )
