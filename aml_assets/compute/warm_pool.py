"""Warm Spark pools: a local Spark Connect server kept running between runs, one per pool name.

Starting a JVM is most of a short Spark step's time (~12 s here). ``aml-assets pool start NAME``
starts a Spark Connect server with the settings of the pool named ``NAME`` and leaves it running,
detached from the terminal; a local :class:`~aml_assets.compute.spark.SparkPool` under that
resource key then attaches to it (~0.5 s) instead of starting its own JVM, as long as the server
was started with the pool's settings (see ``SparkPool``).

Each server is described by a state file, ``<state dir>/pools/<NAME>.json`` (pid, port, URL,
Spark version, the settings it was started with, its access token), readable by its user only.
The state dir is ``$AML_STATE_DIR``, else the platform's per-user state folder
(``$XDG_STATE_HOME/aml-assets``, by default ``~/.local/state/aml-assets``). A server:

* listens on 127.0.0.1 only (set explicitly: Spark's own default is every interface) and
  accepts only clients that present its token, so other users of the machine cannot run code
  on it;
* is stopped by its pid, after checking that the pid is still that server (its command line
  names the Connect server class and the port), together with the Python workers it started
  (its own process group), never by a name pattern;
* whose process is gone leaves a stale state file, which is detected and removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from aml_assets.compute.processes import command_line, terminate_group
from aml_assets.compute.secrets import CREDENTIAL_VARIABLES
from aml_assets.errors import ComputeTargetError

STATE_DIR_ENV = "AML_STATE_DIR"
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
#: The address every warm pool listens on.
HOST = "127.0.0.1"
#: Times the start-up runs its sample work (the JIT compiles what runs repeatedly).
WARM_UP_ROUNDS = 3
#: Settings of a pool that say nothing about how its sessions run.
IGNORED_KEYS = frozenset({"spark.app.name"})
#: Environment variables PySpark sets process-wide when it enters Spark Connect mode.
CONNECT_ENV = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_WILDCARDS = frozenset({"0.0.0.0", "::", "[::]", "*"})


@contextlib.contextmanager
def restored_env(names: Sequence[str]) -> Iterator[None]:
    """Put the given environment variables back as they were after the block."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect_session(url: str) -> Any:
    """A new Spark Connect session on ``url``, checked with one round trip, without Connect
    mode leaking into this process's environment (every process started later would obey it)."""
    from pyspark.sql import SparkSession

    with restored_env(CONNECT_ENV):
        # create(), not getOrCreate(): pyspark keeps one default Connect session per process,
        # whatever URL it was made for, so getOrCreate() could hand back another server's.
        session = SparkSession.builder.remote(url).create()
    # Fails here, clearly, if the server is not there or refuses the token; a request that
    # runs no Spark job (a query costs 0.1-0.3 s even on a warm server).
    session.version  # noqa: B018
    return session


def state_dir(create: bool = False) -> Path:
    """The folder of the warm pools' state files (private to the user when created)."""
    configured = os.environ.get(STATE_DIR_ENV)
    base = Path(configured).expanduser() if configured else Path(platformdirs.user_state_dir())
    folder = (base if configured else base / "aml-assets") / "pools"
    if create:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def check_name(name: str) -> str:
    """A pool name is a resource key; refuse anything that could escape the state folder."""
    if not _NAME.match(name or ""):
        raise ComputeTargetError(
            f"'{name}' is not a Spark pool name; use the pool's resource key, e.g. 'spark01'."
        )
    return name


@dataclass(frozen=True)
class WarmPool:
    """A running warm pool, as its state file describes it."""

    name: str
    pid: int
    port: int
    spark_version: str
    conf: dict[str, str]
    token: str = field(repr=False)
    started_at: float
    log_file: str
    host: str = HOST

    @property
    def url(self) -> str:
        """Where the server listens, e.g. ``sc://127.0.0.1:15002``."""
        return f"sc://{self.host}:{self.port}"

    def client_url(self) -> str:
        """The URL a client connects with: the token included. The Connect client sends a token
        only over TLS or a local channel, and it uses the local one for ``localhost`` alone."""
        return f"sc://localhost:{self.port}/;token={self.token}"

    def settings_problems(
        self, wanted: Mapping[str, str], per_session: Callable[[str], bool]
    ) -> list[str]:
        """How the settings the server was started with differ from ``wanted`` (a pool's full
        Spark configuration), leaving out those ``per_session(key)`` says a session can set."""
        problems = []
        for key in sorted((set(wanted) | set(self.conf)) - IGNORED_KEYS):
            want, have = wanted.get(key), self.conf.get(key)
            if want is not None and have is not None and want.strip() == have.strip():
                continue
            if per_session(key):
                continue
            problems.append(
                f"{key}={'(not set)' if want is None else want} is wanted, the server runs with "
                f"{'(not set)' if have is None else have}"
            )
        return problems


@dataclass(frozen=True)
class PoolStatus:
    """What ``pool status`` says about one name: ``state`` is running, unusable (its server
    runs but cannot be used, see ``note``) or not running."""

    name: str
    state: str
    pool: WarmPool | None
    note: str = ""


# -- state files -----------------------------------------------------------------------------


def _state_file(name: str) -> Path:
    return state_dir() / f"{check_name(name)}.json"


def read_state(name: str) -> WarmPool | None:
    """The state file of pool ``name``, or None if there is none."""
    path = _state_file(name)
    try:
        data = json.loads(path.read_text())
        data.pop("url", None)  # written for people and scripts; derived from host and port
        return WarmPool(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ComputeTargetError(
            f"Warm Spark pool '{name}': its state file {path} cannot be read ({exc}). If no "
            "server runs for it (ps), delete the file; then start the pool again."
        ) from exc


def _write_state(pool: WarmPool) -> None:
    state_dir(create=True)
    path = _state_file(pool.name)
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({**asdict(pool), "url": pool.url}, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(name: str, wait: bool = True) -> Iterator[bool]:
    """One start or stop of a pool at a time (two terminals, two runs); yields whether the
    lock is held (always, unless ``wait`` is False and another process holds it)."""
    with open(state_dir(create=True) / f"{check_name(name)}.lock", "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def _remove_stale(pool: WarmPool) -> None:
    """Remove the state file of a server that is gone, unless a start is replacing it now."""
    with _locked(pool.name, wait=False) as held:
        current = read_state(pool.name) if held else None
        if current is not None and current.pid == pool.pid and not is_server(current):
            _state_file(pool.name).unlink(missing_ok=True)


# -- processes -------------------------------------------------------------------------------


def is_server(pool: WarmPool) -> bool:
    """Whether ``pool.pid`` is still that pool's Connect server (not a reused pid)."""
    args = command_line(pool.pid)
    return bool(args) and SERVER_CLASS in args and (
        f"spark.connect.grpc.binding.port={pool.port}" in args
    )


def listening(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on ``port`` of 127.0.0.1."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((HOST, port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def find(name: str, _locked_by_caller: bool = False) -> tuple[WarmPool | None, str]:
    """The healthy warm pool ``name``, or None and why not ("" when none was started).

    A state file whose process is gone is removed.
    """
    pool = read_state(name)
    if pool is None:
        return None, ""
    if not is_server(pool):
        if _locked_by_caller:
            _state_file(name).unlink(missing_ok=True)
        else:
            _remove_stale(pool)
        return None, (
            f"its server (pid {pool.pid}) is no longer running; the stale state file was removed"
        )
    if not listening(pool.port):
        return None, f"its server (pid {pool.pid}) does not accept connections on {pool.url}"
    import pyspark

    if pool.spark_version != pyspark.__version__:
        return None, (
            f"it runs Spark {pool.spark_version} and this process has pyspark "
            f"{pyspark.__version__}; restart it (aml-assets pool stop/start {name})"
        )
    return pool, ""


# -- start, stop, status ---------------------------------------------------------------------


def start(
    name: str, conf: Mapping[str, str], port: int | None = None, timeout: float = 180.0
) -> tuple[WarmPool, bool, str]:
    """Start the warm pool ``name`` with the Spark configuration ``conf`` (a pool's
    ``spark_conf()``), detached. Returns it, whether this call started it (False: it already
    ran) and a note on a previous server that is gone ("" if none)."""
    with _locked(name):
        running, note = find(name, _locked_by_caller=True)
        if running is not None:
            return running, False, ""
        if read_state(name) is not None:  # its server runs, but is not usable
            raise ComputeTargetError(
                f"Warm Spark pool '{name}' has a server that cannot be used: {note}. Stop it "
                f"first: aml-assets pool stop {name}"
            )
        if port is not None and listening(port):
            raise ComputeTargetError(
                f"Warm Spark pool '{name}': port {port} on {HOST} is in use; choose another "
                "with --port, or leave it out for a free one."
            )
        pool = _launch(name, {k: str(v) for k, v in conf.items()}, port or _free_port(), timeout)
        _write_state(pool)
        return pool, True, note


def _server_env(conf: Mapping[str, str], token: str) -> dict[str, str]:
    """The server's environment: no datastore credentials, no Connect mode, loopback UI."""
    from pyspark.find_spark_home import _find_spark_home

    env = {
        k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES and k not in CONNECT_ENV
    }
    env["SPARK_HOME"] = _find_spark_home()
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    # Passed in the environment, so the token is not on the server's command line (ps).
    env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] = token
    # The web UI's Jetty binds to $SPARK_LOCAL_IP, else 0.0.0.0; no setting changes that.
    address = conf.get("spark.driver.bindAddress")
    if address and address not in _WILDCARDS:
        env["SPARK_LOCAL_IP"] = address
    else:
        env.pop("SPARK_LOCAL_IP", None)
    return env


def _launch(name: str, conf: dict[str, str], port: int, timeout: float) -> WarmPool:
    folder = state_dir()
    token = secrets.token_urlsafe(24)
    env = _server_env(conf, token)
    log_file = folder / f"{name}.log"
    properties = folder / f"{name}.properties"
    # A properties file keeps the settings (which may hold secrets) off the command line.
    fd = os.open(properties, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        for key, value in conf.items():
            if key != "spark.master":
                fh.write(f"{key}={value.replace(chr(92), chr(92) * 2)}\n")
    command = [
        str(Path(env["SPARK_HOME"]) / "bin" / "spark-submit"),
        "--master", conf.get("spark.master", "local[*]"),
        "--name", f"aml-assets pool {name}",
        "--properties-file", str(properties),
        "--conf", f"spark.connect.grpc.binding.address={HOST}",
        "--conf", f"spark.connect.grpc.binding.port={port}",
        "--class", SERVER_CLASS,
    ]  # fmt: skip
    started = time.time()
    with open(log_file, "ab") as log:
        # A session of its own: no terminal, no signals from the shell that started it, and a
        # process group that holds the server and its Python workers.
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=folder,
        )
    pool = WarmPool(
        name=name,
        pid=process.pid,
        port=port,
        spark_version="",
        conf=conf,
        token=token,
        started_at=started,
        log_file=str(log_file),
    )
    try:
        _await_listening(pool, process, timeout)
        version = _warm_up(pool)
    except BaseException:
        _terminate(pool)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        raise
    finally:
        properties.unlink(missing_ok=True)
    return WarmPool(**{**asdict(pool), "spark_version": version})


def _await_listening(pool: WarmPool, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ComputeTargetError(
                f"Warm Spark pool '{pool.name}': the Spark Connect server exited during start-up "
                f"(code {process.returncode}):\n{_tail(pool.log_file)}"
            )
        if listening(pool.port):
            return
        time.sleep(0.25)
    raise ComputeTargetError(
        f"Warm Spark pool '{pool.name}': the Spark Connect server did not listen on {pool.url} "
        f"within {timeout:.0f} s; it was stopped. Its log:\n{_tail(pool.log_file)}"
    )


def _warm_up(pool: WarmPool) -> str:
    """Run the kinds of work a data preparation step does (CSV reading with schema inference,
    aggregations, quantiles, a join, a Parquet write) a few times, so that class loading and
    JIT compilation happen now rather than in the first run; returns the server's Spark
    version."""
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F

    try:
        session = connect_session(pool.client_url())
        try:
            with restored_env(CONNECT_ENV), tempfile.TemporaryDirectory(
                prefix="warm-up-", dir=state_dir()
            ) as tmp:
                # pyspark.sql.functions builds Connect expressions only in Connect mode.
                os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
                csv = Path(tmp) / "warm_up.csv"
                rows = (f"{i},{'ab'[i % 2]},{i * 0.5 if i % 5 else ''}" for i in range(500))
                csv.write_text("id,kind,value\n" + "\n".join(rows) + "\n")
                for i in range(WARM_UP_ROUNDS):
                    df = session.read.option("header", "true").option("inferSchema", "true")
                    df = df.csv(str(csv))
                    df.approxQuantile("value", [0.5], 0.0)
                    medians = df.groupBy("kind").agg(F.percentile_approx("value", 0.5, 1000))
                    joined = df.join(medians, on="kind", how="left").fillna({"value": 0.0})
                    joined.groupBy("kind").count().orderBy(F.desc("count")).first()
                    joined.write.parquet(str(Path(tmp) / f"out{i}"))
            return session.version
        finally:
            with restored_env(CONNECT_ENV):
                session.stop()
    except (PySparkException, OSError) as exc:
        raise ComputeTargetError(
            f"Warm Spark pool '{pool.name}': the server at {pool.url} listens but does not answer "
            f"({exc}); it was stopped. Its log:\n{_tail(pool.log_file)}"
        ) from exc


def _tail(path: str, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def stop(name: str, timeout: float = 30.0) -> tuple[WarmPool | None, bool]:
    """Stop the warm pool ``name``: its state, and whether a running server was stopped (False:
    its process was already gone, the stale state file is removed). (None, False): none."""
    with _locked(name):
        pool = read_state(name)
        if pool is None:
            return None, False
        running = is_server(pool)
        if running:
            _terminate(pool, timeout)
        _state_file(name).unlink(missing_ok=True)
        return pool, running


def _terminate(pool: WarmPool, timeout: float = 30.0) -> None:
    """SIGTERM the server (and its process group: the Python workers it started), SIGKILL
    what is left after ``timeout``. Only a pid checked to be this server is signalled."""
    if not is_server(pool):
        return
    # Gone once its port is closed too: the JVM's last threads still hold its sockets for a
    # moment after the main one has exited.
    terminate_group(pool.pid, lambda: is_server(pool) or listening(pool.port), timeout)


def statuses(name: str | None = None) -> list[PoolStatus]:
    """Every warm pool (or the one named), checked; stale state files are removed."""
    names = [name] if name else sorted(p.stem for p in state_dir().glob("*.json"))
    out = []
    for each in names:
        pool, why = find(each)
        state = "running" if pool else "unusable" if read_state(each) else "not running"
        out.append(PoolStatus(each, state, pool, why))
    return out
