"""A private PostgreSQL server for tests: its own data directory, loopback only, a free port.

Started from the machine's PostgreSQL binaries (``initdb`` + ``pg_ctl``), never a system
service. ``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user
(which must be able to write ``base_dir``: it is chowned). Authentication is ``trust`` on
127.0.0.1 and the unix socket: fine for a throwaway cluster nobody else can reach.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/14/bin")
INSTALL_HINT = "apt-get install postgresql (the tests start their own server from its binaries)"
DB_NAME = "dagster"
USER = "postgres"


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


def find_pg_bin() -> Path:
    """The directory holding initdb and pg_ctl."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(d) for d in PG_BIN_DIRS] + ([Path(on_path).parent] if on_path else [])
    for directory in candidates:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "createdb")):
            return directory
    raise PostgresNotInstalled(f"PostgreSQL server binaries (initdb, pg_ctl, createdb) not found; install: {INSTALL_HINT}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster under ``base_dir`` (data/, socket/, server.log), with database
    ``dagster`` created, listening on 127.0.0.1:``port``."""

    def __init__(self, base_dir: Path, port: int | None = None):
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log = self.base_dir / "server.log"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.db_name = DB_NAME
        self.username = USER
        self._started = False

    @property
    def url(self) -> str:
        """A libpq URL of the Dagster database (no password: trust authentication)."""
        return self.url_of(self.db_name)

    def url_of(self, db_name: str) -> str:
        """A libpq URL of one database on this server."""
        return f"postgresql://{self.username}@{self.host}:{self.port}/{db_name}"

    def create_database(self, db_name: str) -> None:
        """An empty database (one per test keeps tests' runs apart on the shared server)."""
        import psycopg2

        conn = psycopg2.connect(self.url_of("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{db_name}"')
        finally:
            conn.close()

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

    def _run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base_dir)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                               f"\n{self.log.read_text()[-2000:] if self.log.exists() else ''}")
        return proc

    def start(self) -> None:
        """initdb, start on loopback, create the ``dagster`` database; wait until it accepts."""
        bin_dir = find_pg_bin()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        self._run(bin_dir / "initdb", "-D", self.data_dir, "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run(
            bin_dir / "pg_ctl", "-D", self.data_dir, "-l", self.log, "-w", "-t", "60", "start", "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} -c fsync=off -c max_connections=200",
        )
        self._started = True
        self._run(bin_dir / "createdb", "-h", self.host, "-p", str(self.port), "-U", USER, self.db_name)
        self._wait_accepting()

    def _wait_accepting(self, timeout: float = 30) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.url).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def query(self, sql: str, params: tuple = (), db: str | None = None) -> list[tuple]:
        """Rows of one SQL query on the Dagster database (or on ``db``)."""
        import psycopg2

        conn = psycopg2.connect(self.url_of(db or self.db_name))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def stop(self) -> None:
        """pg_ctl stop -m fast (a no-op when it never started)."""
        if not self._started:
            return
        self._started = False
        self._run(find_pg_bin() / "pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop")


@pytest.fixture(scope="session")
def postgres():
    """A running PostgreSQL server for the session. Fails (does not skip) when PostgreSQL is
    missing under CI=true; skips locally with the install command in the reason."""
    # Not under pytest's tmp_path: its folders are 0700 root, which the postgres user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="aml-assets-postgres-"))
    server = PostgresServer(base)
    try:
        server.start()
    except PostgresNotInstalled as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
