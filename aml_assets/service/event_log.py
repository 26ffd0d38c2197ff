"""Dagster's SQLite event log without its per-run set-up cost.

Dagster's default event log keeps one SQLite database per run. Creating it is the largest fixed
cost of a fully reused run here: for every new run, ``_initdb`` loads Alembic's migration
scripts (a few hundred Python files) to learn the head revision, creates ~10 tables with their
indexes statement by statement, and stamps the revision; then each process does the revision
check again for the index and asset databases. Measured: 0.1-0.3 s a run on this machine (more
under load), against a reused run's ~0.6 s of real work.

``FastSqliteEventLogStorage`` is the same storage, same files, same schema, with three shortcuts:

- a new run's database starts as a copy of a template database (made once by Dagster's own
  ``_initdb``, so it is exactly what Dagster would create), put in place atomically with
  ``os.link``: a reader that opened the file first, or another process that made it first, wins,
  and Dagster's usual initialisation then runs on it;
- the Alembic head revision is computed once per process and an existing database stamped with
  it is not checked again through Alembic;
- each database's SQLAlchemy engine and SQLite connection are made once per process (Dagster
  makes and disposes both per event, and closing a WAL database's last connection checkpoints
  it: a reused step writes ~7 events), and the connection commits with
  ``synchronous=NORMAL``, SQLite's recommended setting in WAL mode: a commit no longer waits for
  an fsync; a crash of a process loses nothing, a power cut may lose the last events written
  (never the database). The reuse ledger, the record of what a step produced, is not in it.
  With the connection kept open, new events sit in the database's WAL file until a checkpoint,
  so a run's watcher (the UI's live log) is woken by changes to ``<run>.db-wal`` too, not only
  to ``<run>.db`` as Dagster's is.

Select it in ``dagster.yaml`` (``python -m aml_assets.service.instance`` adds this block when it
installs the project's file in a home)::

    event_log_storage:
      module: aml_assets.service.event_log
      class: FastSqliteEventLogStorage
      config:
        base_dir: "{dagster_home}/history/runs"

``{dagster_home}`` is filled in when ``python -m aml_assets.service.instance`` installs the file
in a home (``make run``/``make ui`` do); ``history/runs`` is where the default storage keeps run
databases, so switching to it (or back) keeps the history. An absolute folder from the
configuration, never ``$DAGSTER_HOME`` at run time: an instance opened by path must not write
into another home's history. Dagster is pinned to one release
(pyproject.toml) because this subclass relies on ``SqliteEventLogStorage._initdb``; the tests run
real pipelines on it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from typing import Any

import sqlalchemy
from dagster._config import StringSource
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.sql import create_engine, get_alembic_config
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import NullPool, StaticPool
from watchdog.events import PatternMatchingEventHandler
from watchdog.observers import Observer

_TEMPLATE = ".aml-run-shard-template.sqlite"


@functools.lru_cache(maxsize=1)
def head_revision() -> str:
    """The Alembic head revision of Dagster's SQLite event log schema (once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(get_alembic_config(sqlite_event_log.__file__)).get_current_head()


def _stamped(path: str) -> str | None:
    """The revision an existing database is stamped with (None: not stamped, or no file)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


#: Engines kept per process (a long-lived webserver reads many runs): the least recently used
#: beyond this are disposed.
_ENGINES_KEPT = 32


def _wal_normal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class _RunLogWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's watcher of one run's database, also woken by its WAL file."""

    def __init__(self, storage: Any, run_id: str, callback: Any, cursor: str | None):
        super().__init__(storage, run_id, callback, cursor)
        self._paths = (self._log_path, f"{self._log_path}-wal")
        PatternMatchingEventHandler.__init__(self, patterns=list(self._paths))

    def on_modified(self, event: Any) -> None:
        if event.src_path in self._paths:
            self._process_log()


class FastSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` whose run databases start from a template (see the module)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        if "{dagster_home}" in base_dir:
            raise ValueError(
                f"FastSqliteEventLogStorage: base_dir '{base_dir}' still holds the {{dagster_home}} "
                "placeholder; install the project's dagster.yaml into the home with "
                "`python -m aml_assets.service.instance HOME --default-config dagster.yaml` (it "
                "fills in the home's path), or write the absolute folder yourself"
            )
        self._engines: collections.OrderedDict[str, Any] = collections.OrderedDict()
        super().__init__(base_dir, inst_data)

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:
        # Dagster's ``_connect`` with the engine kept (see the module docstring).
        with self._db_lock:
            engine = self._engines.pop(shard, None)
            if engine is None:
                # One connection per database, kept open (every use is under ``_db_lock``):
                # closing the last connection of a WAL database checkpoints it and deletes its
                # WAL file, which Dagster's per-event connections did ~7 times per step.
                engine = create_engine(
                    self.conn_string_for_shard(shard),
                    poolclass=StaticPool,
                    connect_args={
                        "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                        "check_same_thread": False,
                    },
                )
                sqlalchemy.event.listen(engine, "connect", _wal_normal)
            self._engines[shard] = engine
            while len(self._engines) > _ENGINES_KEPT:
                self._engines.popitem(last=False)[1].dispose()
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def watch(self, run_id: str, cursor: str | None, callback: Any) -> None:
        # Dagster's ``watch`` with the watcher that also follows the WAL file.
        if not self._obs:
            self._obs = Observer()
            self._obs.start()
        watchdog = _RunLogWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (
            watchdog,
            self._obs.schedule(watchdog, self._base_dir, recursive=True),
        )

    def dispose(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()
        super().dispose()

    @classmethod
    def config_type(cls) -> Any:
        return {"base_dir": StringSource}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> Any:
        return cls(inst_data=inst_data, **dict(config_value or {}))

    def _initdb(self, engine: Any, for_index_shard: bool = False) -> None:
        path = engine.url.database
        if path and path != ":memory:":
            if not os.path.exists(path) and not for_index_shard:
                self._copy_template(path)
            if _stamped(path) == head_revision():
                return  # Dagster's own check would find the same revision, via Alembic
        super()._initdb(engine, for_index_shard)

    def _template(self) -> str | None:
        """The template run database (made by Dagster's ``_initdb`` on first need)."""
        path = os.path.join(self._base_dir, _TEMPLATE)
        if _stamped(path) == head_revision():
            return path
        fd, tmp = tempfile.mkstemp(prefix=".aml-template-", suffix=".sqlite", dir=self._base_dir)
        os.close(fd)
        os.unlink(tmp)
        try:
            engine = create_engine(f"sqlite:///{tmp}", poolclass=NullPool)
            super()._initdb(engine)
            engine.dispose()
            os.replace(tmp, path)  # whole or not at all; a concurrent maker's copy is as good
        except Exception:  # noqa: BLE001 - without a template, Dagster creates the database itself
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            return None
        return path

    def _copy_template(self, path: str) -> None:
        template = self._template()
        if template is None:
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            shutil.copyfile(template, tmp)
            os.link(tmp, path)  # fails if the database appeared meanwhile: then it stays as is
        except OSError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
