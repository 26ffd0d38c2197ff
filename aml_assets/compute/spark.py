"""Spark pools as Dagster resources: local, a standalone cluster, or a Spark Connect server.

Three rules hold for every pool:

* **Fingerprints describe what runs.** Every Spark setting that can change a result is hashed
  wherever it is set: the pool's ``conf`` (:meth:`SparkPool.result_conf`, in every fingerprint of
  a step on that pool) and the step's own ``conf``. Only the settings listed in
  :data:`SPEED_ONLY_SPARK_KEYS` / :data:`SPEED_ONLY_SPARK_PREFIXES` (sizing, ports, UI, logs) are
  left out: they change how fast a step runs, never what it writes.
* **A step runs with its own settings, and only those.** :meth:`SparkPool.step_session` applies a
  step's settings to the process's one SparkSession for the duration of the step, checks that
  they took effect, and restores the session afterwards. A setting Spark cannot change in a
  running session (``spark.serializer``, ``spark.sql.extensions``...) fails the step before its
  script runs, with the fix, rather than being silently ignored.
* **A local pool listens on loopback only.** Driver RPC, block manager and (when enabled) the web
  UI bind to ``127.0.0.1`` unless ``bind_address`` says otherwise.
* **A warm pool changes speed, never results.** A pool without ``remote=`` attaches to the warm
  pool (:mod:`aml_assets.compute.warm_pool`) started for its resource key, if one runs with its
  settings; its result settings are applied to the Connect session like to an in-process one,
  so a step's fingerprint and output are the same warm or cold.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr, field_validator

from aml_assets.compute import warm_pool
from aml_assets.compute.warm_pool import CONNECT_ENV as _CONNECT_ENV
from aml_assets.compute.warm_pool import restored_env as _restored_env
from aml_assets.errors import ComputeTargetError

#: Spark accepts a number of bytes or a number with a k/m/g/t (optionally +b) suffix.
_MEMORY = re.compile(r"^\d+\s*([kmgtp]b?)?$", re.IGNORECASE)


def memory_string_problem(value: str) -> str | None:
    """Why a Spark memory string is invalid, or None if it is valid."""
    if not isinstance(value, str) or not _MEMORY.match(value.strip()):
        return (
            f"'{value}' is not a memory size; use a number with a unit such as '512m', '2g' or '1t'"
        )
    return None


#: Spark settings known to change only how fast (or where, or how visibly) a step runs, never
#: what it writes: left out of fingerprints, and only warned about when a running session has
#: another value. Everything else is hashed -- ``spark.sql.shuffle.partitions`` (output file
#: count and order), ``spark.sql.session.timeZone``, ``spark.sql.ansi.enabled``, any
#: ``spark.sql.legacy.*`` flag, serializers, ``spark.*.extraJavaOptions`` (``-Duser.timezone``)
#: and settings Spark does not know. When in doubt a key stays out of this list: a needless
#: rerun costs time, a wrong reuse costs a wrong result.
SPEED_ONLY_SPARK_KEYS: frozenset[str] = frozenset(
    {
        # Where, and under which name, the application runs.
        "spark.master",
        "spark.app.name",
        "spark.submit.deployMode",
        "spark.cores.max",
        # Sizing of the driver and executors.
        "spark.driver.memory",
        "spark.driver.cores",
        "spark.driver.memoryOverhead",
        "spark.driver.memoryOverheadFactor",
        "spark.driver.maxResultSize",
        "spark.executor.memory",
        "spark.executor.cores",
        "spark.executor.instances",
        "spark.executor.memoryOverhead",
        "spark.executor.memoryOverheadFactor",
        "spark.executor.pyspark.memory",
        "spark.memory.fraction",
        "spark.memory.storageFraction",
        "spark.memory.offHeap.enabled",
        "spark.memory.offHeap.size",
        # Network: addresses, ports, timeouts.
        "spark.driver.host",
        "spark.driver.bindAddress",
        "spark.driver.port",
        "spark.driver.blockManager.port",
        "spark.blockManager.port",
        "spark.port.maxRetries",
        "spark.network.timeout",
        # Scratch space, logs, progress bar and web UI.
        "spark.local.dir",
        "spark.log.level",
        "spark.logConf",
        "spark.ui.enabled",
        "spark.ui.port",
        "spark.ui.showConsoleProgress",
    }
)

#: Whole families of speed-only settings (see :data:`SPEED_ONLY_SPARK_KEYS`).
SPEED_ONLY_SPARK_PREFIXES: tuple[str, ...] = (
    "spark.dynamicAllocation.",  # executors added and removed with the load
    "spark.ui.",  # the web UI
    "spark.eventLog.",  # the event log for the history server
)

#: Former name, kept for ``steps.py``; prefer :func:`is_speed_only` (it also knows the prefixes).
SPARK_SIZING_KEYS = SPEED_ONLY_SPARK_KEYS


def is_speed_only(key: str) -> bool:
    """Whether a Spark setting only changes speed (left out of fingerprints), not results."""
    return key in SPEED_ONLY_SPARK_KEYS or key.startswith(SPEED_ONLY_SPARK_PREFIXES)


def result_settings(conf: Mapping[str, Any]) -> dict[str, str]:
    """The entries of a Spark configuration that can change a result (all but speed-only ones)."""
    return {key: str(value) for key, value in conf.items() if not is_speed_only(key)}


#: Spark steps in one process share its one SparkSession: they run one at a time, whichever
#: thread starts them (a step's settings are applied, its script runs and the settings are
#: restored under it; Connect mode is flagged in os.environ, which is process-wide too).
_STEP_LOCK = threading.RLock()

#: The result settings the process's classic SparkSession was started with by a pool, by Spark
#: application id. Static ones among them stay for the life of the session, whoever asked.
_STARTED_WITH: dict[str, dict[str, str]] = {}

#: Sizing a running session is checked against (a local session has no executor instances).
_MEMORY_KEYS = frozenset({"spark.driver.memory", "spark.executor.memory"})

_WILDCARDS = frozenset({"0.0.0.0", "::", "[::]", "*"})
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class SparkPool(ConfigurableResource):
    """A Synapse-style Spark pool: `local[*]` by default, a `spark://` master for a cluster.

    The SparkSession is created on first use, so a run whose Spark steps are all reused never
    starts a JVM. Steps on the pool share one session per process; `step_session` gives each
    step its own settings on it.

    A local pool (a `local...` master) listens on 127.0.0.1 only: the driver, its block manager
    and, if `ui_enabled`, the web UI. `bind_address` changes that (`0.0.0.0` exposes it on every
    interface). A `spark://` pool on loopback (`spark://127.0.0.1:PORT`, a
    `StandaloneSparkCluster`) listens on 127.0.0.1 too; any other `spark://` pool keeps Spark's
    own defaults unless `bind_address` is set, since its executors must reach the driver over the
    network; a Spark Connect pool (`remote`) starts no JVM, so the server's settings apply.

    A pool without `remote` uses the warm pool started for its resource key
    (`aml-assets pool start spark01`) when one runs and was started with the pool's settings
    (any that a session cannot change, sizing and master included); else it starts its own
    session, and says why in the log.
    """

    master: str = Field(
        default="local[*]", description="Spark master URL, e.g. local[2] or spark://host:7077."
    )
    remote: str | None = Field(
        default=None,
        description=(
            "Spark Connect URL (sc://host:15002). Set: steps attach to that server and no JVM starts "
            "in the step's process; master, sizing and network settings are the server's."
        ),
    )
    app_name: str = Field(default="aml-assets", description="Spark application name.")
    driver_memory: str = Field(default="1g", description="spark.driver.memory")
    driver_cores: int = Field(default=1, ge=1, description="spark.driver.cores")
    executor_memory: str = Field(default="1g", description="spark.executor.memory")
    executor_cores: int = Field(default=1, ge=1, description="spark.executor.cores")
    num_executors: int = Field(default=1, ge=1, description="spark.executor.instances")
    ui_enabled: bool = Field(
        default=False,
        description=(
            "Start the Spark web UI (port 4040 and up; it has no authentication). Off by default; "
            "on a local pool it listens on bind_address, 127.0.0.1 unless set."
        ),
    )
    bind_address: str | None = Field(
        default=None,
        description=(
            "Address the driver, its block manager and the web UI listen on. Unset: 127.0.0.1 for "
            "a local[...] master or a spark:// master on loopback, Spark's default (all "
            "interfaces, advertised under the host's address) for another spark:// master, "
            "whose executors must reach the driver. '0.0.0.0' "
            "exposes a local pool on every interface. Applies when the process's JVM starts."
        ),
    )
    conf: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra Spark configuration for every step on the pool. Entries that can change a "
            "result are part of every such step's fingerprint (see result_conf())."
        ),
    )
    default_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A step running longer than this (unless it sets timeout_seconds) is stopped: "
        "its Spark jobs are cancelled and nothing is published.",
    )

    _session: Any = PrivateAttr(default=None)
    #: The pool's resource key: the name of the warm pool it may attach to.
    _name: str | None = PrivateAttr(default=None)
    #: The warm pool the session is attached to, if any.
    _warm: warm_pool.WarmPool | None = PrivateAttr(default=None)

    @field_validator("driver_memory", "executor_memory")
    @classmethod
    def _valid_memory(cls, value: str) -> str:
        problem = memory_string_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("bind_address")
    @classmethod
    def _valid_address(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value.strip())):
            raise ValueError(
                f"'{value}' is not an address; use an IP address or host name such as "
                "'127.0.0.1' or '0.0.0.0', or leave bind_address unset"
            )
        return value.strip() if value is not None else None

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Learn the pool's resource key (a warm pool is started under that name)."""
        defs = context.all_resource_defs or {}
        self._name = next((key for key, d in defs.items() if d is context.resource_def), None)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Release a warm pool's session on the server (its cached data, temporary views)."""
        with _STEP_LOCK:
            self._release_warm()

    # -- configuration -------------------------------------------------------------------------

    def is_local(self) -> bool:
        """Whether the pool runs Spark inside the step's process (a ``local...`` master)."""
        return self.remote is None and self.master.strip().lower().startswith("local")

    def effective_bind_address(self) -> str | None:
        """The address the driver listens on: ``bind_address``, else 127.0.0.1 for a local pool,
        else None (Spark's default) for a cluster or Spark Connect pool."""
        if self.remote:
            return None
        if self.bind_address is not None:
            return self.bind_address
        return "127.0.0.1" if self.is_local() or self.is_loopback_cluster() else None

    def is_loopback_cluster(self) -> bool:
        """Whether the pool's master is a ``spark://`` cluster on this machine's loopback
        (``StandaloneSparkCluster``): its executors reach the driver on 127.0.0.1 too."""
        master = self.master.strip()
        if self.remote or not master.lower().startswith("spark://"):
            return False
        hosts = [h.rsplit(":", 1)[0].strip("[]") for h in master[len("spark://") :].split(",")]
        return all(h in _LOOPBACK_HOSTS for h in hosts)

    def network_conf(self) -> dict[str, str]:
        """Spark settings for where the driver listens and whether the web UI runs."""
        conf = {"spark.ui.enabled": "true" if self.ui_enabled else "false"}
        address = self.effective_bind_address()
        if address is not None:
            conf["spark.driver.bindAddress"] = address
            if address not in _WILDCARDS:
                # Advertise the address it listens on (the default is the host's external name).
                conf["spark.driver.host"] = address
        return conf

    def spark_conf(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """The full Spark configuration of this pool, with a step's settings applied on top.

        Precedence, lowest first: the typed fields (sizing, network), ``conf``, the step's.
        """
        conf = {
            "spark.master": self.master,
            "spark.app.name": self.app_name,
            "spark.driver.memory": self.driver_memory,
            "spark.driver.cores": str(self.driver_cores),
            "spark.executor.memory": self.executor_memory,
            "spark.executor.cores": str(self.executor_cores),
            "spark.executor.instances": str(self.num_executors),
            "spark.ui.showConsoleProgress": "false",
            **self.network_conf(),
            **self.conf,
        }
        conf.update({key: str(value) for key, value in (overrides or {}).items()})
        if conf["spark.master"].strip().lower().startswith("spark://"):
            conf.setdefault("spark.cores.max", _standalone_cores(conf))
        return conf

    def result_conf(self) -> dict[str, str]:
        """The pool's own settings that can change a result: its ``conf`` minus speed-only keys.

        Part of the fingerprint of every step on this pool. The typed fields are all speed-only
        (sizing, master, application name, UI, network), so none of them is here.
        """
        return result_settings(self.conf)

    # -- sessions ------------------------------------------------------------------------------

    def session(self, log: Any, overrides: Mapping[str, str] | None = None) -> Any:
        """The pool's SparkSession, started (or attached to) on first use.

        ``overrides`` apply only if this call starts the session; use :meth:`step_session` to
        run a step with its settings on a session that may already run.
        """
        with _STEP_LOCK:
            spark, started = self._ensure_session(log, overrides)
            if not started and not self.remote:
                self._warn_speed_only(log, spark, self.spark_conf(overrides), _MEMORY_KEYS, None)
            return spark

    @contextmanager
    def step_session(self, log: Any, step_conf: Mapping[str, str], step: str) -> Iterator[Any]:
        """The session for one Spark step, with exactly the pool's and the step's settings.

        No session yet: one starts with the pool's configuration plus ``step_conf`` (sizing
        included). A session already runs: each setting of the pool and step that can change a
        result and differs from the session's is set for the duration of the block, if Spark
        allows changing it at runtime; result settings the session was started with for another
        step and this step does not ask for are unset likewise. A setting Spark cannot change
        in a running session raises :class:`ComputeTargetError` before the block runs. Speed-only
        settings that differ are only warned about (they apply when a session starts). Applied
        values are read back to check they took effect. Afterwards -- success or exception --
        the session's configuration is what it was before (for a session the block started:
        the pool's), including anything the step's script changed, so no step's settings leak
        into the next.
        """
        step_conf = {key: str(value) for key, value in step_conf.items()}
        with _STEP_LOCK:
            spark, started = self._ensure_session(log, step_conf)
            conf = spark.conf
            before = dict(conf.getAll)
            if started:
                # The session started with this step's settings; after the step it must carry
                # only the pool's (those Spark can still change).
                pool = self.result_conf()
                for key in result_settings(step_conf):
                    if pool.get(key) != step_conf[key] and _modifiable(conf, key):
                        _put(before, key, pool.get(key))
            else:
                speed_only = {k for k in step_conf if is_speed_only(k)}
                self._warn_speed_only(log, spark, step_conf, speed_only, step)
            try:
                changes = self._plan(spark, step_conf, step)
                with self._active(spark):
                    if changes:
                        _apply(conf, changes, step)
                        log.info(
                            f"Spark step '{step}' runs with "
                            + ", ".join(
                                f"{k}={'(unset)' if v is None else v}" for k, v in changes.items()
                            )
                            + " on the pool's running session; restored after the step"
                        )
                    yield spark
            finally:
                _restore(conf, before, log, step)

    def _plan(self, spark: Any, step_conf: Mapping[str, str], step: str) -> dict[str, str | None]:
        """Which result settings to change (None: unset) so the session matches the step's
        fingerprint; raises if Spark cannot change one of them in a running session."""
        conf = spark.conf
        wanted = result_settings(self.spark_conf(step_conf))
        changes: dict[str, str | None] = {}
        problems: list[str] = []
        for key, value in wanted.items():
            running = _effective(conf, key)
            if running is not None and _same(running, value):
                continue
            if _modifiable(conf, key):
                changes[key] = value
            else:
                problems.append(
                    f"{key}={value} is wanted, but the running session has "
                    f"{key}={'(not set)' if running is None else running}"
                )
        for key in self._started_with(spark):
            if key in wanted:
                continue
            explicit = _explicit(conf, key)
            if explicit is None:
                continue
            if _modifiable(conf, key):
                changes[key] = None
            else:
                problems.append(
                    f"{key} is not set for this step, but the running session was started with "
                    f"{key}={explicit} (for another step or pool in this process)"
                )
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise ComputeTargetError(
                f"Spark step '{step}' cannot run on the pool's running SparkSession: Spark cannot "
                f"change these settings once a session runs:\n{lines}\n"
                "Fix: set them on the Spark pool's conf, so every step's session starts with "
                "them, or run the pipeline with parallel=True, so this step gets its own process "
                "and session."
            )
        return changes

    def _warn_speed_only(
        self,
        log: Any,
        spark: Any,
        requested: Mapping[str, str],
        keys: Iterable[str],
        step: str | None,
    ) -> None:
        """Warn about speed-only settings the running session has other values for."""
        ordered = sorted(set(keys))
        if not ordered:
            return
        who = f"Spark step '{step}': " if step else ""
        if self.remote:
            log.warning(
                f"{who}{', '.join(ordered)} requested; a Spark Connect pool's sizing is the "
                "server's, so they do not apply."
            )
            return
        if self._warm is not None:
            running, where = self._warm.conf, f"warm Spark pool '{self._warm.name}' runs with"
        else:
            running, where = spark.sparkContext.getConf(), "the running session has"
        for key in ordered:
            actual = running.get(key, None)
            if actual is not None and actual != requested[key]:
                log.warning(
                    f"{who}{key}={requested[key]} was requested, but {where} {actual}; JVM "
                    "sizing applies only when a session starts."
                )

    def _started_with(self, spark: Any) -> dict[str, str]:
        if self.remote:
            return {}
        if self._warm is not None:
            return result_settings(self._warm.conf)
        try:
            return _STARTED_WITH.get(spark.sparkContext.applicationId, {})
        except Exception:
            return {}

    @contextmanager
    def _active(self, spark: Any) -> Iterator[None]:
        """Make ``SparkSession.builder.getOrCreate()`` in the step's script return ``spark``."""
        if not self._connect_url():
            yield
            return
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        holder = ConnectSession._active_session
        saved = getattr(holder, "session", None)
        holder.session = spark
        try:
            yield
        finally:
            holder.session = saved

    def _ensure_session(self, log: Any, overrides: Mapping[str, str] | None) -> tuple[Any, bool]:
        """The pool's session, and whether this call started it."""
        if self.remote:
            if self._session is not None and not getattr(self._session, "is_stopped", False):
                return self._session, False
            return self._connect(log), False
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        if self._warm is not None:
            # Another pool may have started a JVM in this process since: a step's script would
            # then get that one (or an error) from getOrCreate(), so the pool moves to it too.
            if SparkContext._active_spark_context is None and not self._session.is_stopped:
                return self._session, False
            self._release_warm()

        if self._session is not None and _alive(self._session):
            return self._session, False
        started = time.perf_counter()
        if SparkContext._active_spark_context is not None:
            self._note_warm_unused(log)
            # Attach without options: the builder would write them into the running session's
            # configuration for good (step_session applies a step's settings, and undoes them).
            self._session = SparkSession.builder.getOrCreate()
            log.info(
                f"Spark pool attached to the running SparkSession ({time.perf_counter() - started:.2f} s)"
            )
            return self._session, False
        if self._attach_warm(log) is not None:
            return self._session, False
        from dagster_pyspark import LazyPySparkResource

        conf = self.spark_conf(overrides)
        # The JVM is started by the Python interpreter running this step; executors use it too.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        with _restored_env(("SPARK_LOCAL_IP",)):
            # The web UI's Jetty binds to $SPARK_LOCAL_IP, else 0.0.0.0; no setting changes that.
            address = self.effective_bind_address()
            if address is not None and address not in _WILDCARDS:
                os.environ["SPARK_LOCAL_IP"] = address
            elif address is not None:
                os.environ.pop("SPARK_LOCAL_IP", None)
            self._session = LazyPySparkResource(spark_config=conf).spark_session
        _STARTED_WITH[self._session.sparkContext.applicationId] = result_settings(conf)
        log.info(
            f"Spark pool started a SparkSession on {conf['spark.master']} in "
            f"{time.perf_counter() - started:.1f} s"
        )
        return self._session, True

    def _connect(self, log: Any) -> Any:
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession

        started = time.perf_counter()
        self._check_reachable()
        # A classic session's SparkContext (a JVM in this process) rules out Connect mode here,
        # whether or not that session is the thread's active one.
        from pyspark import SparkContext
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        running = SparkSession.getActiveSession()
        classic = SparkContext._active_spark_context is not None or (
            running is not None and not isinstance(running, ConnectSession)
        )
        if classic:
            raise ComputeTargetError(
                f"Spark pool is configured for Spark Connect ({self.remote}), but a local "
                "SparkSession already runs in this process and PySpark cannot hold both. Use one "
                "kind of Spark pool per process (or run this pipeline in its own process)."
            )
        try:
            self._session = warm_pool.connect_session(self.remote)
        except (PySparkException, OSError) as exc:
            raise self._unreachable(exc) from exc
        log.info(
            f"Spark pool attached to Spark Connect server {self.remote} "
            f"({time.perf_counter() - started:.2f} s)"
        )
        return self._session

    # -- warm pools ----------------------------------------------------------------------------

    def _connect_url(self) -> str | None:
        """The Spark Connect URL of the pool's session (``remote``, or its warm pool's); None
        for a session in this process."""
        if self.remote:
            return self.remote
        return self._warm.client_url() if self._warm is not None else None

    def _attach_warm(self, log: Any) -> Any:
        """Attach to this pool's warm pool, if one runs with the pool's settings; None (after
        saying why, if one was started) when the pool starts its own session instead."""
        if self.remote or self._name is None:
            return None
        from pyspark.errors import PySparkException

        found, why = warm_pool.find(self._name)
        if found is None:
            if why:
                log.info(f"Warm Spark pool '{self._name}' not used: {why}.")
            return None
        started = time.perf_counter()
        try:
            session = warm_pool.connect_session(found.client_url())
        except (PySparkException, OSError) as exc:
            log.warning(
                f"Warm Spark pool '{found.name}' at {found.url} not used: it did not answer "
                f"({exc}); this run starts its own SparkSession."
            )
            return None
        # Result settings a session can change are applied per step (step_session), like on an
        # in-process session; anything else must be what the server was started with.
        problems = found.settings_problems(
            self.spark_conf(),
            lambda key: not is_speed_only(key) and _modifiable(session.conf, key),
        )
        if problems:
            with _restored_env(_CONNECT_ENV):
                session.stop()
            lines = "\n".join(f"  - {p}" for p in problems)
            log.warning(
                f"Warm Spark pool '{found.name}' at {found.url} not used: it was started with "
                f"other settings than the pool has, which a session cannot change:\n{lines}\n"
                f"This run starts its own SparkSession. To use the warm pool with the pool's "
                f"settings: aml-assets pool stop {found.name}; aml-assets pool start {found.name}"
            )
            return None
        self._session, self._warm = session, found
        log.info(
            f"Spark pool attached to warm Spark pool '{found.name}' at {found.url} "
            f"({time.perf_counter() - started:.2f} s)"
        )
        return session

    def _release_warm(self) -> None:
        """Close the session on the warm pool, if the pool has one (the server keeps running)."""
        if self._warm is None:
            return
        warm, session, self._session, self._warm = self._warm, self._session, None, None
        if session is not None and not session.is_stopped:
            if not warm_pool.listening(warm.port):
                # The server is gone: the client would retry releasing the session for minutes.
                session.release_session_on_close = False
            with _restored_env(_CONNECT_ENV):
                session.stop()

    def _note_warm_unused(self, log: Any) -> None:
        """Say so when a warm pool runs for this pool but the process already has a JVM."""
        if self.remote or self._name is None or warm_pool.find(self._name)[0] is None:
            return
        log.info(
            f"Warm Spark pool '{self._name}' not used: a local SparkContext already runs in this "
            "process, and PySpark cannot hold a Spark Connect session beside it; the pool uses "
            "that SparkContext."
        )

    def _unreachable(self, exc: BaseException) -> ComputeTargetError:
        return ComputeTargetError(
            f"Spark pool cannot reach the Spark Connect server at {self.remote}: {exc}. Start "
            "it (sbin/start-connect-server.sh) or fix the pool's remote= URL."
        )

    def _check_reachable(self, timeout: float = 5.0) -> None:
        # The Connect client retries a refused connection with back-off for minutes; a plain TCP
        # probe first turns a wrong URL or a stopped server into an error in seconds.
        parsed = urlparse((self.remote or "").split(";", 1)[0])
        host, port = parsed.hostname or "localhost", parsed.port or 15002
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise self._unreachable(exc) from exc

    @contextmanager
    def script_environment(self) -> Iterator[None]:
        """While a step script runs: make its own ``SparkSession.builder.getOrCreate()`` find
        the pool's session (for Spark Connect that needs ``SPARK_REMOTE``)."""
        url = self._connect_url()
        if not url:
            yield
            return
        with _restored_env(_CONNECT_ENV):
            os.environ["SPARK_REMOTE"] = url
            yield


# -- runtime configuration helpers (classic and Spark Connect sessions alike) --------------------


def _standalone_cores(conf: Mapping[str, str]) -> str:
    """``spark.cores.max`` for Synapse's ``num_executors``: a standalone master ignores
    ``spark.executor.instances`` and would give the application every free core of the cluster;
    capping its cores at instances x cores per executor gives it that many executors."""
    try:
        return str(int(conf["spark.executor.instances"]) * int(conf["spark.executor.cores"]))
    except (KeyError, ValueError):
        return conf.get("spark.executor.cores", "1")


def _alive(session: Any) -> bool:
    sc = getattr(session, "_sc", None)
    return sc is not None and getattr(sc, "_jsc", None) is not None


def _explicit(conf: Any, key: str) -> str | None:
    """The value set for ``key`` in the session, or None if it is at Spark's default."""
    return conf.get(key, None)


def _effective(conf: Any, key: str) -> str | None:
    """The value ``key`` has in the session: set, else Spark's default, else None."""
    try:
        return conf.get(key)
    except Exception:  # a key Spark does not know and nobody set
        return None


def _modifiable(conf: Any, key: str) -> bool:
    """Whether setting ``key`` in a running session takes effect for the next queries."""
    if not key.startswith("spark."):
        # Spark reads none of these itself (isModifiable says False, as it knows them not): they
        # are session variables a script reads with spark.conf.get, as good set now as at start.
        return True
    try:
        return bool(conf.isModifiable(key))
    except Exception:
        return False


def _same(a: str, b: str) -> bool:
    a, b = a.strip(), b.strip()
    if a.lower() in ("true", "false"):
        return a.lower() == b.lower()
    return a == b


def _put(snapshot: dict[str, str], key: str, value: str | None) -> None:
    if value is None:
        snapshot.pop(key, None)
    else:
        snapshot[key] = value


def _apply(conf: Any, changes: Mapping[str, str | None], step: str) -> None:
    for key, value in changes.items():
        if value is None:
            conf.unset(key)
        else:
            conf.set(key, value)
    wrong = []
    for key, value in changes.items():
        actual = _explicit(conf, key)
        if (value is None and actual is not None) or (
            value is not None and (actual is None or not _same(actual, value))
        ):
            wrong.append(f"{key}={'(unset)' if value is None else value} (session has {actual})")
    if wrong:
        raise ComputeTargetError(
            f"Spark step '{step}': the running SparkSession did not take these settings: "
            f"{', '.join(wrong)}. Set them on the Spark pool's conf, or run the pipeline with "
            "parallel=True so the step gets its own session."
        )


def _restore(conf: Any, before: Mapping[str, str], log: Any, step: str) -> None:
    """Put the session's configuration back to ``before`` (the explicitly set entries)."""
    try:
        after = dict(conf.getAll)
    except Exception as exc:  # the session died with the step: nothing left to restore
        log.warning(f"Spark step '{step}': could not read the session's settings back: {exc}")
        return
    for key in sorted(set(before) | set(after)):
        value = before.get(key)
        if after.get(key) == value:
            continue
        try:
            if value is None:
                conf.unset(key)
            else:
                conf.set(key, value)
        except Exception as exc:
            log.warning(
                f"Spark step '{step}' changed {key} and it cannot be restored ({exc}); later "
                "steps in this process check their settings against the session."
            )
