"""A Spark standalone cluster on this machine: one Master and one Worker, on loopback.

The Synapse Spark pool of an Azure ML workspace is a cluster the driver sends executors to; a
``SparkPool(master="spark://...")`` is the same thing on Spark's own cluster manager. This
module starts such a cluster from the Spark that ships with pyspark (its ``SPARK_HOME``), for
the tests, ``aml-assets up --cluster`` and anyone trying a cluster on a laptop::

    cluster = StandaloneSparkCluster(base_dir / "spark").start()
    pool = SparkPool(master=cluster.master_url, executor_memory="1g")
    ...
    cluster.stop()

What it guarantees:

* **Loopback only.** The Master, the Worker and both web UIs listen on ``host`` (127.0.0.1):
  ``SPARK_LOCAL_IP`` is what Spark's Jetty binds to, and the RPC endpoints get ``--host``.
* **Its own files.** Logs, the Worker's work folder (one folder per application and executor:
  the executors' stdout/stderr), the configuration folder and the pid files are under
  ``base_dir``; nothing is read from or written to ``$SPARK_HOME/conf`` or ``/tmp/spark-*``.
* **Free ports** unless given; a port that is taken is an error naming the fix.
* **Ready when it says so.** :meth:`start` returns once the Worker has registered with the
  Master (the Master's ``/json`` lists it ALIVE), so an application can get executors at once.
* **Stops exactly what it started.** Each daemon leads its own process group (the Worker's group
  holds the executors it launched and their Python workers); :meth:`stop` signals a pid from a
  pid file only after checking, from its command line, that it is still that daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aml_assets.compute.processes import command_line, terminate_group
from aml_assets.compute.secrets import CREDENTIAL_VARIABLES
from aml_assets.errors import ComputeTargetError

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class StandaloneSparkCluster:
    """A Spark standalone Master and one Worker on ``host``, with their files under ``base_dir``.

    Args:
        base_dir: folder of the cluster's logs, work folder, configuration and pid files.
        host: address the daemons and their web UIs listen on (and advertise).
        master_port: the Master's RPC port (``spark://host:PORT``); None: a free one.
        webui_port: the Master's web UI port; None: a free one.
        worker_cores: cores the Worker offers to applications.
        worker_memory: memory the Worker offers to applications (e.g. ``"2g"``); an
            application's ``spark.executor.memory`` must fit in it, or it never gets executors.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        master_port: int | None = None,
        webui_port: int | None = None,
        worker_cores: int = 1,
        worker_memory: str = "2g",
    ) -> None:
        if worker_cores < 1:
            raise ComputeTargetError(
                f"Spark standalone cluster: worker_cores={worker_cores}; give it at least 1 core."
            )
        # Imported here: spark.py loads Dagster, which `aml-assets up/down` need not pay for.
        from aml_assets.compute.spark import memory_string_problem

        problem = memory_string_problem(worker_memory)
        if problem:
            raise ComputeTargetError(f"Spark standalone cluster: worker_memory {problem}.")
        self.base_dir = Path(base_dir).resolve()
        self.host = host
        self.master_port = master_port
        self.webui_port = webui_port
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self.worker_port: int | None = None
        self.worker_webui_port: int | None = None
        self._processes: dict[str, subprocess.Popen] = {}

    def __repr__(self) -> str:
        where = self.master_url if self.master_port else "not started"
        return f"StandaloneSparkCluster({str(self.base_dir)!r}, {where})"

    # -- addresses ---------------------------------------------------------------------------

    @property
    def master_url(self) -> str:
        """The URL applications use as their master, e.g. ``spark://127.0.0.1:7077``."""
        return f"spark://{self.host}:{self._port('master_port')}"

    @property
    def web_url(self) -> str:
        """The Master's web UI, e.g. ``http://127.0.0.1:8080`` (its state as JSON at ``/json``)."""
        return f"http://{self.host}:{self._port('webui_port')}"

    @property
    def worker_web_url(self) -> str:
        """The Worker's web UI (its executors' logs)."""
        return f"http://{self.host}:{self._port('worker_webui_port')}"

    @property
    def log_dir(self) -> Path:
        """Where the Master's and the Worker's logs are (``master.log``, ``worker.log``)."""
        return self.base_dir / "logs"

    @property
    def work_dir(self) -> Path:
        """The Worker's work folder: ``<app-id>/<executor-id>/stdout|stderr`` per executor."""
        return self.base_dir / "work"

    def pid_file(self, role: str) -> Path:
        """The pid file of the ``master`` or ``worker`` daemon."""
        return self.base_dir / f"{role}.pid"

    @property
    def state_file(self) -> Path:
        """``cluster.json``: where the running cluster listens (for people, scripts, and a
        ``StandaloneSparkCluster(base_dir)`` made in another process to stop it)."""
        return self.base_dir / "cluster.json"

    def _port(self, name: str) -> int:
        port = getattr(self, name)
        if port is None:
            raise ComputeTargetError(
                f"Spark standalone cluster under {self.base_dir} has no {name} yet: call start() "
                "first."
            )
        return port

    # -- state -------------------------------------------------------------------------------

    def state(self, timeout: float = 5.0) -> dict[str, Any]:
        """The Master's state (its web UI's ``/json``): workers, active and completed apps."""
        with urllib.request.urlopen(f"{self.web_url}/json", timeout=timeout) as response:
            return json.load(response)

    def running(self) -> bool:
        """Whether both daemons of this cluster (as their pid files say) are alive."""
        return all(self._daemon_pid(role) is not None for role in ("master", "worker"))

    # -- start and stop ----------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> StandaloneSparkCluster:
        """Start the Master and the Worker; return once the Worker has registered."""
        if self.running():
            raise ComputeTargetError(
                f"Spark standalone cluster under {self.base_dir} already runs (pid files "
                f"{self.pid_file('master')}, {self.pid_file('worker')}). Stop it first, or use "
                "another base_dir."
            )
        spark_home = _spark_home()
        java = _java()
        for folder in (self.log_dir, self.work_dir, self.base_dir / "conf"):
            folder.mkdir(parents=True, exist_ok=True)
        self.master_port = self._claim(self.master_port, "master_port")
        self.webui_port = self._claim(self.webui_port, "webui_port")
        self.worker_port = self._claim(self.worker_port, "worker_port")
        self.worker_webui_port = self._claim(self.worker_webui_port, "worker_webui_port")
        env = self._env(spark_home, java)
        spark_class = str(Path(spark_home) / "bin" / "spark-class")
        deadline = time.monotonic() + timeout
        try:
            self._launch(
                "master",
                [spark_class, MASTER_CLASS, "--host", self.host, "--port", str(self.master_port),
                 "--webui-port", str(self.webui_port)],
                env,
            )  # fmt: skip
            self._await(self._answers, "the Master's web UI to answer", "master", deadline)
            self._launch(
                "worker",
                [spark_class, WORKER_CLASS, "--host", self.host, "--port", str(self.worker_port),
                 "--webui-port", str(self.worker_webui_port), "--cores", str(self.worker_cores),
                 "--memory", self.worker_memory, "--work-dir", str(self.work_dir),
                 self.master_url],
                env,
            )  # fmt: skip
            self._await(self._worker_registered, "the Worker to register", "worker", deadline)
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the Worker (with its executors) and the Master; only the processes this cluster
        started, checked by their command lines. Safe to call twice."""
        for role in ("worker", "master"):
            pid = self._daemon_pid(role)
            if pid is not None:
                terminate_group(pid, lambda r=role: self._daemon_pid(r) is not None, timeout)
            process = self._processes.pop(role, None)
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
            self.pid_file(role).unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> StandaloneSparkCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _claim(self, port: int | None, name: str) -> int:
        """``port`` if it is free on ``host``, else an error naming the fix; None: a free one."""
        with socket.socket() as sock:
            try:
                sock.bind((self.host, port or 0))
            except OSError as exc:
                raise ComputeTargetError(
                    f"Spark standalone cluster: cannot listen on {self.host}:{port} ({name}): "
                    f"{exc.strerror or exc}. Stop what uses that port, choose another {name}, "
                    "or leave it unset for a free one."
                ) from exc
            return sock.getsockname()[1]

    def _env(self, spark_home: str, java: str) -> dict[str, str]:
        """The daemons' environment: loopback, own folders, no datastore credentials."""
        env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
        for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
            env.pop(name, None)
        env.update(
            SPARK_HOME=spark_home,
            # What Jetty (both web UIs) binds to and what the daemons call themselves.
            SPARK_LOCAL_IP=self.host,
            SPARK_LOCAL_HOSTNAME=self.host,
            SPARK_PUBLIC_DNS=self.host,
            # An empty configuration folder of its own: no spark-defaults.conf/spark-env.sh from
            # $SPARK_HOME or the user's environment changes this cluster.
            SPARK_CONF_DIR=str(self.base_dir / "conf"),
            SPARK_LOG_DIR=str(self.log_dir),
            SPARK_PID_DIR=str(self.base_dir),
            SPARK_WORKER_DIR=str(self.work_dir),
            # Daemon sizes are small; the executors get what applications ask for.
            SPARK_DAEMON_MEMORY="512m",
            SPARK_DAEMON_JAVA_OPTS=f"-Djava.io.tmpdir={self.base_dir / 'tmp'}",
            # The Master's REST submission server (port 6066 on every cluster: a clash) accepts
            # applications from anyone who can reach it, without authentication: off.
            SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
        )
        # The Java that was checked, whether it came from JAVA_HOME or PATH.
        env.setdefault("JAVA_HOME", str(Path(java).resolve().parent.parent))
        (self.base_dir / "tmp").mkdir(parents=True, exist_ok=True)
        return env

    def _launch(self, role: str, command: list[str], env: dict[str, str]) -> None:
        with open(self.log_dir / f"{role}.log", "ab") as log:
            # A session of its own: no signals from the terminal that started it, and one
            # process group holding the daemon (spark-class execs the JVM) and its children.
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.base_dir,
            )
        self._processes[role] = process
        self.pid_file(role).write_text(f"{process.pid}\n")

    def _await(self, ready: Any, what: str, role: str, deadline: float) -> None:
        process = self._processes[role]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ComputeTargetError(
                    f"Spark standalone {role} exited during start-up (code {process.returncode}). "
                    f"Its log ({self.log_dir / f'{role}.log'}):\n{self._tail(role)}"
                )
            if ready():
                return
            time.sleep(0.25)
        raise ComputeTargetError(
            f"Spark standalone cluster under {self.base_dir}: timed out waiting for {what}; the "
            f"cluster was stopped. The {role}'s log:\n{self._tail(role)}"
        )

    def _answers(self) -> bool:
        try:
            self.state(timeout=2.0)
            return True
        except (OSError, ValueError):
            return False

    def _worker_registered(self) -> bool:
        try:
            workers = self.state(timeout=2.0).get("workers", [])
        except (OSError, ValueError):
            return False
        return any(w.get("state") == "ALIVE" and w.get("port") == self.worker_port for w in workers)

    def _write_state(self) -> None:
        state = {
            "master_url": self.master_url,
            "web_url": self.web_url,
            "worker_web_url": self.worker_web_url,
            "master_port": self.master_port,
            "worker_port": self.worker_port,
            "pids": {role: p.pid for role, p in self._processes.items()},
            "log_dir": str(self.log_dir),
            "work_dir": str(self.work_dir),
        }
        self.state_file.write_text(json.dumps(state, indent=1) + "\n")

    def _recorded_port(self, role: str) -> int | None:
        """``role``'s RPC port: known to this object, else as ``cluster.json`` recorded it."""
        port = self.master_port if role == "master" else self.worker_port
        if port is not None:
            return port
        try:
            return int(json.loads(self.state_file.read_text())[f"{role}_port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _daemon_pid(self, role: str) -> int | None:
        """The pid in ``role``'s pid file if that process is still this cluster's daemon."""
        try:
            pid = int(self.pid_file(role).read_text().strip())
        except (OSError, ValueError):
            return None
        args = command_line(pid)
        cls = MASTER_CLASS if role == "master" else WORKER_CLASS
        port = self._recorded_port(role)
        if not args or cls not in args:
            return None
        # spark-class runs as bash for a moment before it execs the JVM; both carry the port.
        return pid if port is None or str(port) in args else None

    def _tail(self, role: str, chars: int = 3000) -> str:
        try:
            return (self.log_dir / f"{role}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _spark_home() -> str:
    """The Spark that ships with pyspark (its jars and ``bin/spark-class``)."""
    try:
        from pyspark.find_spark_home import _find_spark_home
    except ImportError as exc:
        raise ComputeTargetError(
            "Spark standalone cluster: pyspark is not installed; pip install pyspark."
        ) from exc
    home = _find_spark_home()
    if not (Path(home) / "bin" / "spark-class").exists():
        raise ComputeTargetError(
            f"Spark standalone cluster: {home}/bin/spark-class does not exist; reinstall pyspark "
            "(pip install --force-reinstall pyspark) or set SPARK_HOME to a Spark distribution."
        )
    return home


def _java() -> str:
    """The ``java`` executable: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(home) / "bin" / "java")] if home else []
    candidates.append(shutil.which("java") or "")
    for java in candidates:
        if java and os.access(java, os.X_OK):
            _check_java_version(java)
            return java
    raise ComputeTargetError(
        "Spark standalone cluster: Java was not found (no $JAVA_HOME/bin/java, no java on PATH). "
        "Spark 4 needs Java 17 or 21: apt-get install openjdk-17-jre-headless, or set JAVA_HOME."
    )


def _check_java_version(java: str) -> None:
    """Spark 4 runs on Java 17 or later; an older one fails with a class-version error only
    in the daemon's log, so say it here."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ComputeTargetError(
            f"Spark standalone cluster: {java} -version failed ({exc}); install Java 17 "
            "(apt-get install openjdk-17-jre-headless) or point JAVA_HOME at one."
        ) from exc
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0_392" is Java 8
        major = int(found.group(2))
    if major < 17:
        raise ComputeTargetError(
            f"Spark standalone cluster: {java} is Java {major or '(unknown version)'}; Spark 4 "
            "needs Java 17 or 21: apt-get install openjdk-17-jre-headless, or set JAVA_HOME to "
            "a Java 17+ installation."
        )
