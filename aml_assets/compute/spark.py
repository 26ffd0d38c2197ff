"""Spark pools as Dagster resources: local, a standalone cluster, or a Spark Connect server."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr, field_validator

from aml_assets.errors import ComputeTargetError

#: Spark accepts a number of bytes or a number with a k/m/g/t (optionally +b) suffix.
_MEMORY = re.compile(r"^\d+\s*([kmgtp]b?)?$", re.IGNORECASE)

def memory_string_problem(value: str) -> str | None:
    """Why a Spark memory string is invalid, or None if it is valid."""
    if not isinstance(value, str) or not _MEMORY.match(value.strip()):
        return (
            f"'{value}' is not a memory size; use a number with a unit such as '512m', '2g' "
            "or '1t'"
        )
    return None


#: Step/pool settings that size the cluster but never change a result: left out of fingerprints.
SPARK_SIZING_KEYS = frozenset(
    {
        "spark.driver.memory",
        "spark.driver.cores",
        "spark.executor.memory",
        "spark.executor.cores",
        "spark.executor.instances",
        "spark.app.name",
        "spark.master",
        "spark.ui.enabled",
        "spark.ui.showConsoleProgress",
    }
)


class SparkPool(ConfigurableResource):
    """A Synapse-style Spark pool. ``local[*]`` by default; a ``spark://`` master for a cluster.

    The SparkSession is created on first use, so a run whose Spark steps are all reused never
    starts a JVM. Steps on the pool share one session per process.
    """

    master: str = Field(default="local[*]", description="Spark master URL, e.g. local[2] or spark://host:7077.")
    remote: str | None = Field(
        default=None,
        description=(
            "Spark Connect URL (sc://host:15002). Set: steps attach to that server and no JVM starts "
            "in the step's process; master and sizing are the server's."
        ),
    )
    app_name: str = Field(default="aml-assets", description="Spark application name.")
    driver_memory: str = Field(default="1g", description="spark.driver.memory")
    driver_cores: int = Field(default=1, ge=1, description="spark.driver.cores")
    executor_memory: str = Field(default="1g", description="spark.executor.memory")
    executor_cores: int = Field(default=1, ge=1, description="spark.executor.cores")
    num_executors: int = Field(default=1, ge=1, description="spark.executor.instances")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark configuration.")

    _session: Any = PrivateAttr(default=None)

    @field_validator("driver_memory", "executor_memory")
    @classmethod
    def _valid_memory(cls, value: str) -> str:
        problem = memory_string_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def spark_conf(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """The full Spark configuration of this pool, with a step's settings applied on top."""
        conf = {
            "spark.master": self.master,
            "spark.app.name": self.app_name,
            "spark.driver.memory": self.driver_memory,
            "spark.driver.cores": str(self.driver_cores),
            "spark.executor.memory": self.executor_memory,
            "spark.executor.cores": str(self.executor_cores),
            "spark.executor.instances": str(self.num_executors),
            "spark.ui.showConsoleProgress": "false",
            **self.conf,
        }
        conf.update(overrides or {})
        return conf

    def session(self, log: Any, overrides: Mapping[str, str] | None = None) -> Any:
        """The pool's SparkSession, started (or attached to) on first use."""
        if self._session is not None:
            return self._session
        from dagster_pyspark import LazyPySparkResource
        from pyspark.sql import SparkSession

        if self.remote:
            return self._connect(log)
        conf = self.spark_conf(overrides)
        running = SparkSession.getActiveSession()
        started = time.perf_counter()
        # The JVM is started by the Python interpreter running this step; executors use it too.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        self._session = LazyPySparkResource(spark_config=conf).spark_session
        elapsed = time.perf_counter() - started
        if running is None:
            log.info(f"Spark pool started a SparkSession on {conf['spark.master']} in {elapsed:.1f} s")
        else:
            log.info(f"Spark pool attached to the running SparkSession ({elapsed:.2f} s)")
            for key in ("spark.driver.memory", "spark.executor.memory"):
                actual = self._session.sparkContext.getConf().get(key, None)
                if actual is not None and actual != conf[key]:
                    log.warning(
                        f"{key}={conf[key]} was requested, but the running session has {actual}; "
                        "JVM sizing applies only when a session starts."
                    )
        return self._session

    def _connect(self, log: Any) -> Any:
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession

        started = time.perf_counter()
        self._check_reachable()
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        running = SparkSession.getActiveSession()
        if running is not None and not isinstance(running, ConnectSession):
            raise ComputeTargetError(
                f"Spark pool is configured for Spark Connect ({self.remote}), but a local "
                "SparkSession already runs in this process and PySpark cannot hold both. Use one "
                "kind of Spark pool per process (or run this pipeline in its own process)."
            )
        try:
            # create(), not getOrCreate(): pyspark keeps one default Connect session per process,
            # whatever URL it was made for, so getOrCreate() could hand back another server's.
            with _restored_env(_CONNECT_ENV):
                # PySpark flags Connect mode in os.environ, which every process started later
                # (a step's script, a run worker) would inherit and obey.
                self._session = SparkSession.builder.remote(self.remote).create()
            self._session.range(1).count()  # fail here, clearly, if the server is not there
        except (PySparkException, OSError) as exc:
            raise self._unreachable(exc) from exc
        log.info(
            f"Spark pool attached to Spark Connect server {self.remote} "
            f"({time.perf_counter() - started:.2f} s)"
        )
        return self._session

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
        if not self.remote:
            yield
            return
        with _restored_env(_CONNECT_ENV):
            os.environ["SPARK_REMOTE"] = self.remote
            yield


#: Environment variables PySpark sets process-wide when it enters Spark Connect mode.
_CONNECT_ENV = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")


@contextmanager
def _restored_env(names: Sequence[str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
