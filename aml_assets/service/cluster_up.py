"""``aml-assets up --cluster`` / ``down --cluster``: a whole cluster on this machine, on loopback.

What a shared Azure ML workspace is made of, each part a real server, in its own process group,
with its files under one folder (``--cluster-dir``, default ``./.aml_cluster``):

==========================  =====================================================================
PostgreSQL                  Dagster's run, event-log and schedule storage (the shared instance)
Redis                       the Celery broker and result backend: one queue per compute target
Azurite                     the Azure Blob datastore: inputs, outputs, the reuse ledger, registry
Spark standalone            a Master and a Worker: the ``spark01`` pool's ``spark://`` master
dagster-webserver           the UI, on the cluster's instance
dagster-daemon              the run queue, schedules and triggers (launches queued runs)
worker1, worker2            ``aml-assets worker cpucluster spark01 --concurrency 1``: each runs
                            whole steps (Spark steps' drivers too), in its own working directory
==========================  =====================================================================

A run's process (``aml-assets run`` with the cluster's environment, or one the daemon launches)
orchestrates: its steps become Celery tasks on their compute targets' queues, so a step runs on
whichever worker takes it, and reads and writes only the datastore: no step relies on another
step's local disk.

The supervisor is ``up``'s (``service/up.py``), with the servers and workers added: it starts
them, waits until each answers, prints where each listens and the environment that selects the
cluster, writes ``cluster.json`` (pids, ports, that environment; 0600) in the cluster folder,
watches its processes and stops them all on Ctrl-C, SIGTERM or ``aml-assets down --cluster``.
``down --cluster`` also stops what a supervisor that was killed left behind, from the pids in
``cluster.json`` and the servers' pid files, each checked against its command line first: a
reused pid is never signalled, and nothing is looked up by name.

Azurite comes from the project's npm install (``npm ci --prefix tools/azurite``; ``make
install-test``) or ``azurite-blob`` on PATH. Without it the cluster uses a local datastore folder
in the cluster folder, with a warning: fine on one machine, not for workers on others.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

from aml_assets.compute.processes import command_line
from aml_assets.service.servers import PostgresServer, RedisServer, free_port
from aml_assets.service.up import (
    ServiceError,
    ServiceSettings,
    Supervisor,
    _Child,
    _tail,
    state_dir,
)

STATE_NAME = "cluster.json"
DEFAULT_DIR = ".aml_cluster"
BANNER = "aml-assets cluster up"
AZURITE_INSTALL = "npm ci --prefix tools/azurite"
# The well-known development account of Azurite and the Azure Storage Emulator (public,
# documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class ClusterSettings:
    """What the local cluster runs and where its files go."""

    directory: Path = Path(DEFAULT_DIR)
    workspace: Path = Path("workspace.yaml")
    ui_port: int = 3000
    #: Celery workers, each serving every target's queue with ``concurrency`` slots.
    workers: int = 2
    concurrency: int = 1
    targets: tuple[str, ...] = ("cpucluster", "spark01")
    container: str = "aml"
    #: Executor memory of one Spark application (the reference pipeline's dataprep asks for 2g).
    spark_app_memory_gb: int = 2

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).absolute()

    @property
    def spark_slots(self) -> int:
        """Applications the Spark Worker must hold at once: one per Celery worker slot. A worker's
        pool process keeps its Spark session (and its executor) between steps, so with fewer
        cores a Spark step on another worker would wait for executors forever."""
        return self.workers * self.concurrency

    @property
    def home(self) -> Path:
        """The cluster's DAGSTER_HOME (its dagster.yaml names the PostgreSQL storage)."""
        return self.directory / "dagster_home"


def azurite_binary(project: Path) -> Path | None:
    """``azurite-blob`` from the npm install in the project's or aml-assets' own checkout
    (``tools/azurite``), else from PATH; None if none."""
    checkout = Path(__file__).resolve().parents[2]
    for root in (project, checkout):
        local = root / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
        if local.exists() and shutil.which("node"):
            return local
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


def azurite_connection_string(port: int) -> str:
    """The connection string of the Azurite development account on 127.0.0.1:``port``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


class ClusterSupervisor(Supervisor):
    """``up``'s supervisor with the cluster's servers and workers (see the module docstring)."""

    def __init__(self, cluster: ClusterSettings, out: TextIO):
        from aml_assets.compute.spark_standalone import StandaloneSparkCluster

        self.cluster = cluster
        directory = cluster.directory
        directory.mkdir(parents=True, exist_ok=True)
        self.postgres = PostgresServer(directory / "postgres")
        self.redis = RedisServer(directory / "redis")
        self.spark = StandaloneSparkCluster(
            directory / "spark", master_port=free_port(), webui_port=free_port(),
            worker_cores=cluster.spark_slots, worker_memory=f"{cluster.spark_slots * cluster.spark_app_memory_gb}g",
        )
        project = Path(cluster.workspace).absolute().parent
        binary = azurite_binary(project)
        self.azurite: _Child | None = None
        self.azurite_port = free_port()
        self.cluster_env = self._cluster_env(azurite=binary is not None)
        settings = ServiceSettings(workspace=cluster.workspace, ui_port=cluster.ui_port, extra_env=self.cluster_env)
        super().__init__(settings, cluster.home, out)
        logs = state_dir(self.home) / "logs"
        if binary is not None:
            data = directory / "azurite"
            data.mkdir(exist_ok=True)
            self.azurite = _Child(
                "azurite",
                [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.azurite_port), "--location",
                 str(data), "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
                logs / "azurite.log", cwd=data,
            )  # fmt: skip
        self.workers = [self._worker(i + 1, logs) for i in range(cluster.workers)]
        # Not the HTTP API: a cluster serves runs; `aml-assets up` on the same home adds the API.
        self.children = [self.webserver, self.daemon, *self.workers]

    # --- configuration ---------------------------------------------------------------------
    def _cluster_env(self, azurite: bool) -> dict[str, str]:
        """The environment that selects this cluster: for its processes and for users' runs."""
        env = {
            "DAGSTER_HOME": str(self.cluster.home),
            "AML_CELERY_BROKER": self.redis.url,
            "AML_SPARK_MASTER": f"spark://127.0.0.1:{self.spark.master_port}",
        }
        if azurite:
            env.update(
                AML_DATASTORE="azure",
                AML_AZURE_CONTAINER=self.cluster.container,
                AZURE_STORAGE_CONNECTION_STRING=azurite_connection_string(self.azurite_port),
            )
        else:
            env.update(AML_DATASTORE="local", AML_DATASTORE_ROOT=str(self.cluster.directory / "datastore"))
        return env

    def _worker(self, number: int, logs: Path) -> _Child:
        from aml_assets.compute.celery_worker import worker_command

        name = f"worker{number}"
        folder = self.cluster.directory / "workers" / name
        folder.mkdir(parents=True, exist_ok=True)
        args = worker_command(
            list(self.cluster.targets), concurrency=self.cluster.concurrency, broker=self.redis.url,
            hostname=f"{name}@{socket.gethostname()}",
        )
        # Its own working directory, caches and state, as if on a machine of its own.
        env = {"AML_CACHE_DIR": str(folder / "cache"), "AML_STATE_DIR": str(folder / "state")}
        return _Child(name, args, logs / f"{name}.log", cwd=folder, env=env)

    def instance_config(self) -> Path:
        """The project's dagster.yaml (its run queue, run monitoring) with PostgreSQL storage."""
        project = self.cwd / "dagster.yaml"
        base = project.read_text() if project.is_file() else ""
        # The project's file may choose an event log of its own; PostgreSQL's replaces it.
        kept = _without_blocks(base, ("storage", "event_log_storage", "run_storage", "schedule_storage"))
        kept = "\n".join(line for line in kept.splitlines() if not line.lstrip().startswith("#"))
        path = self.cluster.directory / "dagster.yaml"
        text = (
            "# Written by 'aml-assets up --cluster' on every start (the ports change): the project's\n"
            "# dagster.yaml settings (run queue, run monitoring) with run, event-log and schedule\n"
            "# storage on the cluster's PostgreSQL.\n"
            f"{kept.rstrip()}\n{self.postgres.dagster_yaml()}"
        )
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return path

    def datastore(self) -> Any:
        """The cluster's workspace datastore (what its workers and runs use)."""
        from aml_assets.data.datastore import LocalDatastore

        env = self.cluster_env
        if env["AML_DATASTORE"] == "azure":
            from aml_assets.data.azure import AzureBlobDatastore

            return AzureBlobDatastore(
                name="workspace", container=env["AML_AZURE_CONTAINER"],
                connection_string=env["AZURE_STORAGE_CONNECTION_STRING"],
            )
        return LocalDatastore(name="workspace", root=env["AML_DATASTORE_ROOT"])

    # --- start -----------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        try:
            self._start_servers()
            super().start()  # the webserver, the daemon and the workers; waits until each answers
        except BaseException:
            self.stop()
            raise
        # Watched from now on like the others: a dead server stops the cluster.
        self.children += [
            *([self.azurite] if self.azurite else []),
            _Watched("PostgreSQL server", self.postgres.pid(), lambda: self.postgres.pid() is not None, self.postgres.log),
            _Watched("Redis server", self.redis.pid, self._redis_alive, self.redis.log),
            _Watched("Spark standalone cluster", int(self.spark.pid_file("master").read_text()), self.spark.running,
                     self.spark.log_dir / "worker.log"),
        ]
        self._say_cluster()

    def _start_servers(self) -> None:
        """PostgreSQL, Redis and Azurite here while the Spark JVMs start in a thread."""
        with ThreadPoolExecutor(1) as pool:
            spark = pool.submit(self.spark.start)
            self.postgres.start()
            self.redis.start()
            if self.azurite is not None:
                self.azurite.start(self.env(), self.cwd)
                self._wait_azurite()
                self._create_container()
            else:
                _warn(
                    "Azurite is not installed, so the cluster's datastore is a local folder "
                    f"({self.cluster_env['AML_DATASTORE_ROOT']}): fine on this machine, but a worker on "
                    f"another one could not reach it. Install Azurite ({AZURITE_INSTALL}) and start the "
                    "cluster again for the Azure Blob datastore."
                )
            spark.result()

    def _wait_azurite(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.azurite_port}/{AZURITE_ACCOUNT}?comp=list"
        while time.monotonic() < deadline:
            if not self.azurite.alive():
                raise ServiceError(
                    f"Azurite exited while starting (status {self.azurite.proc.returncode}); its log "
                    f"({self.azurite.log}) ends with:\n{_tail(self.azurite.log)}"
                )
            try:
                urllib.request.urlopen(url, timeout=1).close()
            except urllib.error.HTTPError as exc:  # an answer (e.g. 403 without a signature)
                if exc.headers.get("Server", "").startswith("Azurite-Blob"):
                    return
            except OSError:
                pass
            else:
                return
            time.sleep(0.1)
        raise ServiceError(f"Azurite did not answer on port {self.azurite_port} in {timeout:.0f} s; see {self.azurite.log}")

    def _create_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        cs = self.cluster_env["AZURE_STORAGE_CONNECTION_STRING"]
        with BlobServiceClient.from_connection_string(cs) as client:
            try:
                client.create_container(self.cluster.container)
            except ResourceExistsError:
                pass

    def _redis_alive(self) -> bool:
        # By command line: a killed redis-server is this process's zombie until it is reaped.
        pid = self.redis.pid
        return pid is not None and command_line(pid) is not None

    def _ready(self, name: str, instance: Any) -> bool:
        if name.startswith("worker"):
            return f"{name}@{socket.gethostname()}" in self._answering_workers()
        return super()._ready(name, instance)

    def _answering_workers(self) -> set[str]:
        """Hostnames of the Celery workers that answer a ping on the cluster's broker."""
        from celery import Celery

        app = Celery(broker=self.redis.url)
        try:
            return {host for reply in app.control.ping(timeout=1.0) for host in reply}
        finally:
            app.close()

    def _say_where(self, started: float) -> None:
        """Said once the whole cluster is up (``_say_cluster``)."""

    def _say_cluster(self) -> None:
        env = self.cluster_env
        datastore = (
            f"Azurite                 http://127.0.0.1:{self.azurite_port}/{AZURITE_ACCOUNT}, container "
            f"'{self.cluster.container}' (the Azure Blob datastore)"
            if self.azurite is not None
            else f"datastore               {env['AML_DATASTORE_ROOT']} (a local folder: no Azurite)"
        )
        lines = [
            f"{BANNER} in {time.monotonic() - self.started_at:.1f} s, in {self.cluster.directory}:",
            f"  UI (dagster-webserver)  {self.settings.ui_url}",
            "  dagster-daemon          run queue, schedules, data-change triggers",
            f"  PostgreSQL              {self.postgres.url}  (Dagster's runs, events, schedules)",
            f"  Redis                   {self.redis.url}  (Celery broker; queues: {', '.join(self.cluster.targets)})",
            f"  {datastore}",
            f"  Spark master            {env['AML_SPARK_MASTER']}  (UI {self.spark.web_url})",
        ]
        for worker in self.workers:
            lines.append(
                f"  {worker.name:<23} pid {worker.proc.pid}, queues {', '.join(self.cluster.targets)}, "
                f"{self.cluster.concurrency} slot(s), in {worker.cwd}"
            )
        lines += [
            f"  logs                    {state_dir(self.home) / 'logs'}",
            "Run pipelines on it with this environment (or: eval \"$(aml-assets cluster env)\"):",
            *(f"  export {line}" for line in export_lines(env)),
            "  aml-assets run -f definitions.py -j synapse_pipeline",
            "Stop with Ctrl-C (or 'aml-assets down --cluster').",
        ]
        _say(self.out, "\n".join(lines))

    # --- run and stop ----------------------------------------------------------------------
    def write_state(self) -> None:
        super().write_state()  # the service's state file in the home: `aml-assets down` finds it
        children = [c for c in self.children if isinstance(c, _Child)]
        if self.azurite is not None and self.azurite not in children:
            children.append(self.azurite)
        state = {
            "pid": os.getpid(),
            "directory": str(self.cluster.directory),
            "home": str(self.home),
            "ui_url": self.settings.ui_url,
            "postgres": {"dir": str(self.postgres.base_dir), "port": self.postgres.port},
            "redis": {"dir": str(self.redis.base_dir), "port": self.redis.port},
            "spark": {"dir": str(self.spark.base_dir), "master_url": self.spark.master_url,
                      "web_url": self.spark.web_url},
            "children": {c.name: {"pid": c.proc.pid, "args": c.args} for c in children if c.proc},
            "env": self.cluster_env,
            "started_at": time.time(),
        }  # fmt: skip
        _write_private(self.cluster.directory / STATE_NAME, json.dumps(state, indent=1))

    def _schedules_signature(self) -> str | None:
        from aml_assets.service.schedules import records_signature

        try:
            return records_signature(self.datastore())
        except Exception as exc:  # a datastore hiccup: keep serving, look again later
            _warn(f"could not read the schedule records: {exc}")
            return None

    def stop(self) -> None:
        """The daemon and the UI (no new runs), the workers, then the servers; each is tried
        even when another fails to stop."""
        problems = []
        steps = [
            ("the UI and the daemon", super().stop),
            *((w.name, w.stop) for w in self.workers),
            ("Spark", self.spark.stop),
            ("Azurite", self.azurite.stop if self.azurite else lambda: None),
            ("Redis", self.redis.stop),
            ("PostgreSQL", self.postgres.stop),
        ]
        for what, stop in steps:
            try:
                stop()
            except Exception as exc:
                problems.append(f"{what}: {exc}")
        (self.cluster.directory / STATE_NAME).unlink(missing_ok=True)
        if problems:
            _warn("some parts did not stop cleanly:\n  " + "\n  ".join(problems))


class _Watched:
    """A server its own class started and stops (PostgreSQL, Redis, Spark), watched by the
    supervisor like a child: the bits of ``_Child`` that ``Supervisor.serve_forever`` reads."""

    def __init__(self, name: str, pid: int | None, alive: Callable[[], bool], log: Path):
        self.name, self.alive, self.log = name, alive, log
        self.proc = SimpleNamespace(pid=pid, returncode="unknown: not the supervisor's child")


def _say(out: TextIO, text: str) -> None:
    """A line for the user's terminal (the supervisor's output)."""
    out.write(text + "\n")
    out.flush()


def _warn(text: str) -> None:
    sys.stderr.write(f"warning: {text}\n")


def _without_blocks(yaml_text: str, keys: tuple[str, ...]) -> str:
    """``yaml_text`` without the top-level blocks named ``keys`` (their indented lines too)."""
    out, skipping = [], False
    for line in yaml_text.splitlines():
        top = line[:1] not in ("", " ", "\t", "#")
        if top:
            skipping = line.split(":", 1)[0].strip() in keys
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def export_lines(env: dict[str, str]) -> list[str]:
    """``NAME=value`` lines, quoted for a POSIX shell."""
    return [f"{name}={shlex.quote(value)}" for name, value in env.items()]


# --- the commands ----------------------------------------------------------------------------
def read_cluster_state(directory: Path) -> dict[str, Any] | None:
    """The recorded cluster of ``directory`` (running, or left behind by a killed supervisor)."""
    try:
        return json.loads((Path(directory) / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None


def _supervisor_alive(state: dict[str, Any]) -> bool:
    args = command_line(int(state.get("pid", 0))) or []
    return any("aml" in a for a in args) and "up" in args and "--cluster" in args


def up_cluster(cluster: ClusterSettings, out: TextIO, detach: bool = False) -> int:
    """``aml-assets up --cluster``: in the foreground until stopped, or in the background."""
    from aml_assets.service.up import up, up_detached

    state = read_cluster_state(cluster.directory)
    if state is not None and _supervisor_alive(state):
        running = f"A cluster already runs from {cluster.directory} (pid {state['pid']}, UI {state['ui_url']})"
        if not detach:
            raise ServiceError(f"{running}; stop it with 'aml-assets down --cluster'.")
        _say(out, f"{running}.")
        return 0
    if state is not None:
        _stop_leftovers(state, out)  # a supervisor was killed: its processes must not linger
    if detach:
        command = [
            sys.executable, "-m", "aml_assets.cli", "up", "--cluster", "--cluster-dir", str(cluster.directory),
            "--workspace", str(Path(cluster.workspace).absolute()), "--ui-port", str(cluster.ui_port),
            "--workers", str(cluster.workers), "--concurrency", str(cluster.concurrency),
        ]
        cluster.home.mkdir(parents=True, exist_ok=True)
        settings = ServiceSettings(workspace=cluster.workspace, ui_port=cluster.ui_port)
        return up_detached(settings, cluster.home, out, timeout=420.0, command=command, banner=BANNER)
    supervisor = ClusterSupervisor(cluster, out)
    return up(supervisor.settings, cluster.home, out, supervisor=supervisor)


def down_cluster(directory: Path, out: TextIO, timeout: float = 120.0) -> int:
    """``aml-assets down --cluster``: stop the cluster recorded in ``directory``."""
    directory = Path(directory).absolute()
    state = read_cluster_state(directory)
    if state is None:
        _say(out, f"No aml-assets cluster is running from {directory}.")
        return 0
    pid = int(state["pid"])
    if _supervisor_alive(state):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while command_line(pid) is not None:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"The cluster's supervisor (pid {pid}) did not stop within {timeout:.0f} s; look at "
                    f"{Path(state['home']) / 'aml' / 'logs'}, then run 'aml-assets down --cluster' again."
                )
            time.sleep(0.2)
    _stop_leftovers(state, out)
    _say(out, f"Stopped the cluster in {directory} (supervisor pid {pid}).")
    return 0


def _stop_leftovers(state: dict[str, Any], out: TextIO) -> None:
    """Stop what a cluster's record names and is still running (a killed supervisor's children):
    each pid only while its command line is still the recorded one."""
    from aml_assets.compute.spark_standalone import StandaloneSparkCluster

    stopped = []
    for name, child in state.get("children", {}).items():
        pid = int(child["pid"])
        if _same_command(command_line(pid), child["args"]):
            _Child(name, child["args"], Path(os.devnull), proc=_Adopted(pid)).stop()
            stopped.append(name)
    spark = StandaloneSparkCluster(state["spark"]["dir"])
    if spark.running():
        spark.stop()
        stopped.append("Spark")
    redis = RedisServer(state["redis"]["dir"], port=state["redis"]["port"])
    if redis.pid is not None and "redis-server" in " ".join(command_line(redis.pid) or []):
        redis.stop()
        stopped.append("Redis")
    postgres = PostgresServer(state["postgres"]["dir"], port=state["postgres"]["port"])
    if postgres.pid() is not None:
        postgres.stop()
        stopped.append("PostgreSQL")
    (Path(state["directory"]) / STATE_NAME).unlink(missing_ok=True)
    if stopped:
        _say(out, f"Stopped what the cluster's supervisor left running: {', '.join(stopped)}")


def _same_command(actual: list[str] | None, recorded: list[str]) -> bool:
    """Whether a live process's arguments are the recorded command's (a script started through
    its shebang shows its interpreter first: ``python .../dagster-webserver ...``)."""
    return bool(actual) and actual[-len(recorded):] == recorded


class _Adopted:
    """A process this one did not start, seen through the bits of ``Popen`` ``_Child.stop`` uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if command_line(self.pid) is None:
            self.returncode = 0
        return self.returncode


def cluster_env_lines(directory: Path) -> list[str]:
    """``export`` lines selecting the running cluster of ``directory`` (``aml-assets cluster env``)."""
    from aml_assets.errors import AmlAssetsError

    state = read_cluster_state(directory)
    if state is None or not _supervisor_alive(state):
        raise AmlAssetsError(
            f"No aml-assets cluster is running from {Path(directory).absolute()}; start one with "
            "'aml-assets up --cluster' (or pass --cluster-dir)."
        )
    return [f"export {line}" for line in export_lines(state["env"])]
