"""A Spark standalone cluster on loopback runs the reference pipeline's Spark step for real.

The cluster (``StandaloneSparkCluster``: a Master and a Worker from pyspark's own Spark) is
started once for the module. The reference pipeline's ``dataprep`` runs with its ``spark01``
pool pointed at that master, in a process of its own: a JVM holds one SparkContext, and this
test process already has the local one of the shared reference run. What is checked is what a
user of a Synapse pool would look at: the application's environment shows the step's sizing
(the Synapse settings), its tasks ran in executors the Worker launched (not in a local-mode
driver), and its output has the same content hash as the single-machine run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aml_assets import SparkPool
from aml_assets.compute.processes import command_line
from aml_assets.compute.spark_standalone import StandaloneSparkCluster
from aml_assets.errors import ComputeTargetError
from tests.support.runs import materializations

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent

#: Runs ``dataprep`` (and its source dataset) on the pool ``spark01`` = the cluster's master, then
#: asks the live application what it runs with: the driver's REST API (environment, executors)
#: and the Master's JSON. Prints one JSON line starting with RESULT.
DRIVER = """
import json, sys, urllib.request
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from dagster import AssetKey, DagsterEventType, instance_for_test
from pyspark import SparkContext
from aml_assets import LocalDatastore, SparkPool
import definitions

project, master, _, web_url = sys.argv[1:5]

def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)

# The pool's own sizing is smaller than dataprep's: what the application shows is the step's.
pool = SparkPool(master=master, app_name="dataprep on standalone", driver_memory="1g",
                 executor_memory="1g", ui_enabled=True, conf={"spark.sql.shuffle.partitions": "2"})
defs = definitions.build_definitions(
    Path(project), resources={"spark01": pool, "workspace": LocalDatastore(name="workspace")})
with instance_for_test() as instance:
    result = defs.resolve_job_def("synapse_pipeline").execute_in_process(
        instance=instance, raise_on_error=False,
        asset_selection=[AssetKey("titanic"), AssetKey("titanic_prepared")])
mats = {}
for event in result.all_events:
    if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
        m = event.event_specific_data.materialization
        mats[m.asset_key.to_user_string()] = {
            k: getattr(v, "value", v) for k, v in m.metadata.items() if k in ("content_hash", "reused")}
sc = SparkContext._active_spark_context
app = sc.applicationId
api = f"{sc.uiWebUrl}/api/v1/applications/{app}"
out = {
    "success": result.success,
    "materializations": mats,
    "app_id": app,
    "ui": sc.uiWebUrl,
    "environment": dict(get(f"{api}/environment")["sparkProperties"]),
    "executors": get(f"{api}/allexecutors"),
    "master": get(f"{web_url}/json"),
}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One standalone cluster for the module: 1 core, and memory for one 2g executor (dataprep's)."""
    started = time.perf_counter()
    spark = StandaloneSparkCluster(
        tmp_path_factory.mktemp("spark-standalone"), worker_cores=1, worker_memory="2g"
    ).start()
    print(f"standalone cluster up in {time.perf_counter() - started:.1f} s: {spark.master_url}")
    yield spark
    spark.stop()


def _run_dataprep_on(cluster: StandaloneSparkCluster, project: Path) -> dict:
    command = [sys.executable, "-c", DRIVER, str(project), cluster.master_url, str(REPO),
               cluster.web_url]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-6000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_dataprep_runs_on_the_standalone_cluster_with_its_synapse_settings(
    cluster, reference_cold_run, project
):
    out = _run_dataprep_on(cluster, project)
    assert out["success"]
    app = out["app_id"]
    assert app.startswith("app-"), f"{app}: not a standalone application (local mode is local-...)"

    # The Synapse settings of the step (driver/executor memory and cores, executors) are the
    # application's, over the pool's smaller defaults; num_executors becomes the core cap.
    env = out["environment"]
    assert env["spark.master"] == cluster.master_url
    sizing = {k: env.get(k) for k in ("spark.executor.memory", "spark.driver.memory")}
    assert sizing == {"spark.executor.memory": "2g", "spark.driver.memory": "2g"}, (
        f"dataprep's Synapse sizing (2g) did not reach its session: {sizing} is the pool's. The "
        "step's launch must carry step.spark_overrides() (sizing included), not step.spark_conf()"
    )
    assert env["spark.executor.cores"] == "1" and env["spark.driver.cores"] == "1"
    assert env["spark.executor.instances"] == "1" and env["spark.cores.max"] == "1"
    # A loopback cluster's driver listens on loopback only, its UI included.
    assert env["spark.driver.bindAddress"] == "127.0.0.1" == env["spark.driver.host"]
    assert out["ui"].startswith("http://127.0.0.1:")

    # The Master gave it one executor of 1 core and 2 GiB.
    (entry,) = [a for a in out["master"]["activeapps"] if a["id"] == app]
    assert entry["cores"] == 1 and entry["memoryperexecutor"] == 2048

    # Its tasks ran in an executor the Worker launched (local mode has only the driver), whose
    # logs are in the cluster's work folder.
    executors = [e for e in out["executors"] if e["id"] != "driver"]
    assert executors, out["executors"]
    assert all(e["hostPort"].startswith("127.0.0.1:") for e in executors)
    assert sum(e["totalTasks"] for e in executors) > 0
    assert all(e["totalTasks"] == 0 for e in out["executors"] if e["id"] == "driver")
    assert (cluster.work_dir / app / executors[0]["id"] / "stderr").is_file()

    # Same rows as the single-machine (local pool) run: the same content hash.
    mats = out["materializations"]
    assert mats["titanic_prepared"]["reused"] is False
    _, local_run = reference_cold_run
    local = materializations(local_run)["titanic_prepared"]["content_hash"]
    assert mats["titanic_prepared"]["content_hash"] == local

    # The application ended with its driver process; the cluster is free for the next one (the
    # Master notices the driver's exit within moments).
    deadline = time.monotonic() + 30
    state = cluster.state()
    while app not in [a["id"] for a in state["completedapps"]] and time.monotonic() < deadline:
        time.sleep(0.5)
        state = cluster.state()
    assert app in [a["id"] for a in state["completedapps"]], state
    assert state["aliveworkers"] == 1 and state["coresused"] == 0


def test_a_loopback_cluster_pool_binds_the_driver_to_loopback_and_caps_executors():
    conf = SparkPool(
        master="spark://127.0.0.1:7077", num_executors=3, executor_cores=2
    ).spark_conf()
    assert conf["spark.driver.bindAddress"] == "127.0.0.1" == conf["spark.driver.host"]
    assert conf["spark.cores.max"] == "6"
    # A step's sizing wins, and so does an explicit cap on the pool.
    step = {"spark.executor.instances": "2", "spark.executor.cores": "1"}
    assert SparkPool(master="spark://localhost:7077").spark_conf(step)["spark.cores.max"] == "2"
    capped = SparkPool(master="spark://127.0.0.1:7077", conf={"spark.cores.max": "8"})
    assert capped.spark_conf(step)["spark.cores.max"] == "8"
    # A cluster on other machines keeps Spark's network defaults (its executors must reach us).
    remote = SparkPool(master="spark://head:7077").spark_conf()
    assert "spark.driver.bindAddress" not in remote
    assert "spark.cores.max" not in SparkPool(master="local[2]").spark_conf()


def test_a_taken_port_is_refused_with_the_fix(cluster, tmp_path):
    other = StandaloneSparkCluster(
        tmp_path / "other", master_port=int(cluster.master_url.rsplit(":", 1)[1])
    )
    with pytest.raises(
        ComputeTargetError,
        match=r"cannot listen on 127\.0\.0\.1:\d+ \(master_port\).*choose another master_port",
    ):
        other.start()
    assert not (tmp_path / "other" / "master.pid").exists()


def test_missing_java_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ComputeTargetError, match="Java was not found.*openjdk-17-jre-headless"):
        StandaloneSparkCluster(tmp_path / "cluster").start()


def test_stop_ends_exactly_the_clusters_processes(cluster):
    """Last in the module: stops the module's cluster (the fixture's stop is then a no-op)."""
    pids = {role: int(cluster.pid_file(role).read_text()) for role in ("master", "worker")}
    groups = {os.getpgid(pid) for pid in pids.values()}
    assert groups == set(pids.values()), "each daemon leads its own process group"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ports = [int(cluster.master_url.rsplit(":", 1)[1]), int(cluster.web_url.rsplit(":", 1)[1])]
        cluster.stop()
        assert not cluster.running()
        assert all(command_line(pid) is None for pid in pids.values())
        assert not any(cluster.pid_file(role).exists() for role in pids)
        assert not cluster.state_file.exists()
        for port in ports:
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
        assert bystander.poll() is None, "a process the cluster did not start was stopped"
        cluster.stop()  # twice is fine
    finally:
        bystander.kill()
        bystander.wait()
