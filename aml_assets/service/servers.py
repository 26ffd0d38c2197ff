"""Servers a local cluster needs, started from the machine's own packages on loopback.

Each server lives under its own ``base_dir`` (data, log, pid file), listens on 127.0.0.1 on a
free port, and is stopped by its pid: nothing here ever looks for processes by name. Used by
``aml-assets up --cluster`` and by the tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from aml_assets.errors import AmlAssetsError

REDIS_INSTALL_HINT = "apt-get install redis-server (or put redis-server on PATH)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RedisServer:
    """A private redis-server: the Celery broker and result backend of a local cluster.

    Nothing is persisted (``--save ''``, no append-only file): queued steps belong to runs whose
    orchestrators are waiting for them, and a restarted cluster starts with new runs.

    >>> server = RedisServer(Path("/tmp/cluster/redis")); server.start()
    >>> server.url  # 'redis://127.0.0.1:PORT/0'
    >>> server.stop()
    """

    def __init__(self, base_dir: Path | str, port: int | None = None):
        self.base_dir = Path(base_dir).absolute()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.pid_file = self.base_dir / "redis.pid"
        self.log = self.base_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis URL of database 0 (the broker; the result backend uses database 1)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's pid (from its pid file) if that process is still this redis-server (a
        pid reused by another process since is never signalled), else None."""
        from aml_assets.compute.processes import command_line

        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        args = command_line(pid)
        # redis-server rewrites its title to "redis-server 127.0.0.1:PORT".
        return pid if args and "redis-server" in args[0] and f":{self.port}" in " ".join(args) else None

    def command(self) -> list[str]:
        """The redis-server command line (foreground; the caller owns the process)."""
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if binary is None:
            raise AmlAssetsError(f"redis-server was not found: install it ({REDIS_INSTALL_HINT}).")
        return [
            binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.base_dir),
            "--pidfile", str(self.pid_file),
            "--logfile", str(self.log),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            # Loopback only, no password: protected mode would refuse nothing here, and
            # confuses clients on some versions.
            "--protected-mode", "no",
        ]

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the server (its own session, so a terminal's Ctrl-C reaches it only through
        ``stop``) and wait until it answers PING."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.pid is not None:
            raise AmlAssetsError(
                f"A redis-server (pid {self.pid}) already runs from {self.base_dir}; stop it first "
                "or use another folder."
            )
        self._proc = subprocess.Popen(
            self.command(),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AmlAssetsError(
                    f"redis-server exited with code {self._proc.returncode} at start (port "
                    f"{self.port}); see {self.log}:\n{self._log_tail()}"
                )
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise AmlAssetsError(f"redis-server did not answer on {self.url} within {timeout:.0f} s; see {self.log}")

    def ping(self) -> bool:
        """True if the server answers PING."""
        import redis

        try:
            return bool(redis.Redis(host=self.host, port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server this object (or its pid file) names: SIGTERM, then SIGKILL."""
        pid = self._proc.pid if self._proc is not None and self._proc.poll() is None else self.pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None
        deadline = time.monotonic() + timeout
        while pid is not None and time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    break
            elif not _pid_alive(pid):
                break
            time.sleep(0.05)
        else:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.pid_file.unlink(missing_ok=True)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-10:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- PostgreSQL ------------------------------------------------------------------------------
# A shared Dagster instance keeps runs, events and schedules in PostgreSQL (dagster-postgres).
# The server below is started from the machine's PostgreSQL binaries (``initdb`` + ``pg_ctl``),
# never a system service: its own data directory, loopback only, ``trust`` authentication on
# 127.0.0.1 and its unix socket (fine for a cluster nobody else can reach; a shared server
# elsewhere gets a password and TLS, see the README's "Scaling out").

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/14/bin")
PG_INSTALL_HINT = "apt-get install postgresql (aml-assets starts its own server from its binaries)"


class PostgresNotInstalled(AmlAssetsError):
    """No PostgreSQL server binaries (initdb, pg_ctl, createdb) on this machine."""


def find_pg_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``createdb``."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(d) for d in PG_BIN_DIRS] + ([Path(on_path).parent] if on_path else [])
    for directory in candidates:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "createdb")):
            return directory
    raise PostgresNotInstalled(
        f"PostgreSQL server binaries (initdb, pg_ctl, createdb) not found; install: {PG_INSTALL_HINT}"
    )


class PostgresServer:
    """One PostgreSQL cluster under ``base_dir`` (``data/``, ``socket/``, ``server.log``) with the
    database ``dagster``, listening on 127.0.0.1:``port`` (a free one unless given).

    ``start()`` on a ``base_dir`` that already holds a data directory starts that cluster again
    (its run history kept), on this object's port. ``initdb`` and ``pg_ctl`` refuse to run as
    root, so as root they run as the ``postgres`` user (``runuser``), which then owns
    ``base_dir`` and must be able to reach it: every parent folder needs ``o+x``.
    """

    db_name = "dagster"
    username = "postgres"

    def __init__(self, base_dir: Path | str, port: int | None = None):
        self.base_dir = Path(base_dir).absolute()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log = self.base_dir / "server.log"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._started = False

    def __repr__(self) -> str:
        return f"PostgresServer({str(self.base_dir)!r}, {self.host}:{self.port})"

    @property
    def url(self) -> str:
        """A libpq URL of the Dagster database (no password: trust authentication)."""
        return self.url_of(self.db_name)

    def url_of(self, db_name: str) -> str:
        """A libpq URL of one database on this server."""
        return f"postgresql://{self.username}@{self.host}:{self.port}/{db_name}"

    def dagster_yaml(self, db_name: str | None = None) -> str:
        """The instance config block: run, event-log and schedule storage on this server.

        ``scheme: postgresql+psycopg2``: SQLAlchemy 2.1 takes psycopg 3 for a bare
        ``postgresql://`` URL, while dagster-postgres installs psycopg2 (psycopg2-binary)."""
        return (
            "storage:\n"
            "  postgres:\n"
            "    postgres_db:\n"
            f"      hostname: {self.host}\n"
            f"      port: {self.port}\n"
            f"      username: {self.username}\n"
            '      password: ""\n'
            f"      db_name: {db_name or self.db_name}\n"
            "      scheme: postgresql+psycopg2\n"
        )

    def pid(self) -> int | None:
        """The postmaster's pid (from ``data/postmaster.pid``) if that process is still it."""
        from aml_assets.compute.processes import command_line

        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        args = command_line(pid)
        return pid if args and "postgres" in " ".join(args) else None

    def start(self) -> PostgresServer:
        """initdb (unless the data directory exists), start on loopback, create the ``dagster``
        database (unless it exists); return once it accepts connections."""
        bin_dir = find_pg_bin()
        if self.pid() is not None:
            raise AmlAssetsError(
                f"PostgreSQL under {self.base_dir} already runs (pid {self.pid()}); stop it first "
                f"({bin_dir / 'pg_ctl'} -D {self.data_dir} stop) or use another folder."
            )
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._hand_to_postgres_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(bin_dir / "initdb", "-D", self.data_dir, "-U", self.username, "--auth=trust",
                      "-E", "UTF8", "--no-sync")
        self._run(
            bin_dir / "pg_ctl", "-D", self.data_dir, "-l", self.log, "-w", "-t", "60", "start", "-o",
            f"-c listen_addresses={self.host} -p {self.port} -k {self.socket_dir} -c fsync=off "
            "-c max_connections=200",
        )
        self._started = True
        if not self.query("select 1 from pg_database where datname = %s", (self.db_name,), db="postgres"):
            self.create_database(self.db_name)
        return self

    def _hand_to_postgres_user(self) -> None:
        for path in (self.base_dir, self.socket_dir):
            shutil.chown(path, "postgres", "postgres")
        probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.base_dir)],
                               capture_output=True, timeout=30)
        if probe.returncode != 0:
            raise AmlAssetsError(
                f"PostgreSQL runs as the 'postgres' user here (initdb refuses root), which cannot "
                f"reach {self.base_dir}: a parent folder is closed to other users. Use a folder "
                "under one every user can enter (e.g. /srv or /tmp), or chmod o+x its parents."
            )

    def _run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base_dir)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AmlAssetsError(
                f"PostgreSQL under {self.base_dir}: {' '.join(cmd)} failed ({proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}\n{log}"
            )
        return proc

    def create_database(self, db_name: str) -> None:
        """An empty database (e.g. one per test, to keep tests' runs apart on one server)."""
        self._execute(f'CREATE DATABASE "{db_name}"', db="postgres")

    def query(self, sql: str, params: tuple = (), db: str | None = None) -> list[tuple]:
        """Rows of one SQL query on the Dagster database (or on ``db``)."""
        return self._execute(sql, params, db=db, fetch=True)

    def _execute(self, sql: str, params: tuple = (), db: str | None = None, fetch: bool = False) -> list[tuple]:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:  # pg_ctl -w returns once it accepts; a connection may still race the start
            try:
                conn = psycopg2.connect(self.url_of(db or self.db_name))
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if fetch else []
        finally:
            conn.close()

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` if it runs (started here, or by another process on
        ``base_dir``); a no-op otherwise."""
        if not self._started and self.pid() is None:
            return
        self._started = False
        self._run(find_pg_bin() / "pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop")
