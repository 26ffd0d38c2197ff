"""Warm Spark pools: ``aml-assets pool start/status/stop`` and local pools that attach to them.

One server for the module, started and stopped through the real CLI on a temporary state folder
and a free port. Pipeline runs happen in fresh processes (PySpark cannot hold a Connect session
beside the local session the other tests share), each on its own datastore folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import build_resources

from aml_assets import DatasetRegistry, LocalDatastore, SparkPool
from aml_assets.compute import warm_pool
from tests.support.spark_connect import free_port

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("test_warm_pool")

#: The pool the server is started for (sized like the reference project's spark01).
POOL = {
    "master": "local[2]",
    "driver_memory": "2g",
    "executor_memory": "2g",
    "conf": {"spark.sql.shuffle.partitions": "2"},
}

DEFS = """
import json, os, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
import definitions
from aml_assets import LocalDatastore, SparkPool

POOL = {{**{pool!r}, **json.loads(os.environ.get("WARM_TEST_POOL", "{{}}"))}}
defs = definitions.build_definitions(
    Path({project!r}),
    resources={{"spark01": SparkPool(**POOL), "workspace": LocalDatastore(name="workspace")}},
)
"""

PROBE = """
import sys
from pathlib import Path
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
try:
    spark.sql("SELECT CAST('abc' AS INT) AS v").first()
    ansi = "lenient"
except Exception:
    ansi = "strict"
partitions = spark.conf.get("spark.sql.shuffle.partitions")
(Path(sys.argv[1]) / "seen.txt").write_text(f"{ansi} {partitions} {type(spark).__module__}")
"""

RUNNER = """
import json, os, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {folder!r})
from pathlib import Path
from dagster import DagsterInstance
from aml_assets import LocalDatastore, OutputDataset, Pipeline, SparkPool, SynapseSparkStep
from tests.support.runs import log_messages, materializations
import defs

def run(definitions, job):
    instance = DagsterInstance.ephemeral()
    result = definitions.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False)
    return result, [m for m in log_messages(instance, result.run_id) if "Spark" in m]

class Log:
    def info(self, message): messages.append(message)
    warning = info

if {warm_first!r}:
    # A pool of this process attaches to the warm pool before the run starts a local JVM.
    from dagster import build_resources
    messages = []
    resources = build_resources({{"spark01": SparkPool(**{warm_pool!r})}}).__enter__()
    before = resources.spark01.session(Log())
result, run_messages = run(defs.defs, "synapse_pipeline")
mats = materializations(result)
out = {{
    "success": result.success,
    "fingerprints": {{k: v.get("fingerprint") for k, v in mats.items() if "fingerprint" in v}},
    "reused": {{k: v.get("reused") for k, v in mats.items() if "reused" in v}},
    "messages": run_messages,
}}
if {warm_first!r}:
    after = resources.spark01.session(Log())
    out["sessions"] = [type(before).__module__, type(after).__module__]
    out["pool_messages"] = messages
if {probe!r}:
    # Two Spark steps with their own settings on a pool whose result setting differs from the
    # server's (shuffle partitions 3, the server has 2): each step sees exactly its own.
    code = Path({folder!r}) / "probe"; code.mkdir(exist_ok=True)
    (code / "probe.py").write_text({probe_script!r})
    steps = [SynapseSparkStep(name=n, script="probe.py", source_directory=code,
                              arguments=[OutputDataset(n + "_out")],
                              conf={{"spark.sql.ansi.enabled": a}})
             for n, a in (("strict", "true"), ("lenient", "false"))]
    pool = SparkPool(**{{**defs.POOL, "conf": {{"spark.sql.shuffle.partitions": "3"}}}})
    probe = Pipeline("probe", steps=steps).to_definitions({{"workspace": LocalDatastore(), "spark01": pool}})
    presult, pmessages = run(probe, "probe")
    store = LocalDatastore()
    out["probe"] = {{n: (store.local_path(presult.output_for_node(n, n + "_out").path) / "seen.txt").read_text()
                    for n in ("strict", "lenient")}} if presult.success else None
    out["messages"] += pmessages
out["connect_env_leaked"] = any(k in os.environ for k in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE"))
print("RESULT " + json.dumps(out))
"""


class Project:
    """A project copy with a Definitions file, and how to run the CLI and pipelines on it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state = folder / "state"
        self.port = free_port()
        project = folder / "project"
        shutil.copytree(REPO / "code", project / "code", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "data", project / "data")
        self.defs = folder / "defs.py"
        self.defs.write_text(DEFS.format(repo=str(REPO), pool=POOL, project=str(project)))

    def env(self, state: Path | None = None, **extra: str) -> dict[str, str]:
        env = {**os.environ, "AML_STATE_DIR": str(state or self.state), **extra}
        env.pop("DAGSTER_HOME", None)
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, "-m", "aml_assets.cli", "pool", *args],
            capture_output=True, text=True, timeout=240, env=self.env(), cwd=self.folder,
        )  # fmt: skip
        if check:
            assert out.returncode == 0, out.stdout + out.stderr
        return out

    def run(self, datastore: str, state: Path | None = None, pool: dict | None = None,
            probe: bool = False, warm_first: bool = False) -> dict:
        script = self.folder / "runner.py"
        script.write_text(RUNNER.format(repo=str(REPO), folder=str(self.folder), probe=probe,
                                        probe_script=PROBE, warm_first=warm_first, warm_pool=POOL))
        env = self.env(state, AML_DATASTORE_ROOT=str(self.folder / datastore),
                       AML_CACHE_DIR=str(self.folder / "cache"), WARM_TEST_POOL=json.dumps(pool or {}))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=300, env=env)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        assert lines, out.stderr[-3000:]
        result = json.loads(lines[0].removeprefix("RESULT "))
        assert result["success"], out.stderr[-3000:]
        assert result["connect_env_leaked"] is False, "Connect mode must not leak into later processes"
        return result

    def prepared(self, datastore: str):
        store = LocalDatastore(name="workspace", root=str(self.folder / datastore))
        df = DatasetRegistry(store).get("titanic_prepared").to_pandas_dataframe()
        return df.sort_values("PassengerId").reset_index(drop=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project, with its warm pool started through the CLI (stopped at the end)."""
    project = Project(tmp_path_factory.mktemp("warm"))
    out = project.cli("start", "spark01", "-f", str(project.defs), "--port", str(project.port))
    assert f"Warm Spark pool 'spark01' started at sc://127.0.0.1:{project.port}" in out.stdout
    yield project
    project.cli("stop", "spark01", check=False)


def test_start_is_idempotent_and_status_says_where_it_listens(project):
    state = json.loads((project.state / "pools" / "spark01.json").read_text())
    assert state["port"] == project.port and state["url"] == f"sc://127.0.0.1:{project.port}"
    assert state["conf"]["spark.master"] == "local[2]" and state["spark_version"]
    assert oct((project.state / "pools" / "spark01.json").stat().st_mode & 0o777) == "0o600"

    again = project.cli("start", "spark01", "-f", str(project.defs))
    assert f"already running at sc://127.0.0.1:{project.port} (pid {state['pid']})" in again.stdout

    status = project.cli("status").stdout
    assert f"spark01  running  sc://127.0.0.1:{project.port}  pid {state['pid']}" in status
    # Loopback only: the port does not answer on the machine's other addresses.
    with socket.socket() as sock:
        sock.settimeout(1)
        other = socket.gethostbyname(socket.gethostname())
        if other != "127.0.0.1":
            assert sock.connect_ex((other, project.port)) != 0


def test_warm_run_matches_a_cold_run_and_reuses_it(project):
    # Cold: a state folder without the server, so the pool starts its own SparkSession.
    cold = project.run("cold", state=project.folder / "no-state")
    assert any("started a SparkSession" in m for m in cold["messages"])
    assert not any("warm Spark pool" in m for m in cold["messages"])

    warm = project.run("warm", probe=True)
    url = f"sc://127.0.0.1:{project.port}"
    assert any(f"attached to warm Spark pool 'spark01' at {url}" in m for m in warm["messages"])
    assert not any("started a SparkSession" in m for m in warm["messages"])
    assert warm["fingerprints"] == cold["fingerprints"] and len(cold["fingerprints"]) == 2
    assert warm["reused"] == cold["reused"] == {"titanic_prepared": False, "titanic_model": False}
    assert project.prepared("warm").equals(project.prepared("cold"))
    assert len(project.prepared("warm")) == 891
    # Each step on the warm pool ran with the pool's result setting and its own, nothing else.
    connect = "pyspark.sql.connect.session"
    assert warm["probe"] == {"strict": f"strict 3 {connect}", "lenient": f"lenient 3 {connect}"}

    # The cold run's outputs are reused by a warm run: same fingerprints, warm or cold.
    again = project.run("cold")
    assert again["reused"] == {"titanic_prepared": True, "titanic_model": True}
    assert again["fingerprints"] == cold["fingerprints"]


def test_a_pool_with_other_static_settings_does_not_use_the_warm_pool(project):
    result = project.run("other", pool={"master": "local[1]"}, warm_first=True)
    [why] = [m for m in result["messages"] if "not used" in m]
    assert f"Warm Spark pool 'spark01' at sc://127.0.0.1:{project.port} not used" in why
    assert "spark.master=local[1] is wanted, the server runs with local[2]" in why
    assert "aml-assets pool stop spark01; aml-assets pool start spark01" in why
    assert any("started a SparkSession on local[1]" in m for m in result["messages"])

    # A pool of that process that was on the warm pool moved to the local JVM once one ran
    # (a step's script would get that one from getOrCreate()), and said so.
    assert result["sessions"] == ["pyspark.sql.connect.session", "pyspark.sql.session"]
    assert any("attached to warm Spark pool" in m for m in result["pool_messages"])
    assert any("not used: a local SparkContext already runs" in m for m in result["pool_messages"])


def test_a_process_with_a_local_spark_context_keeps_using_it(project, spark_pool, monkeypatch, caplog):
    monkeypatch.setenv("AML_STATE_DIR", str(project.state))
    spark_pool.model_copy().session(LOG)  # a local SparkContext now runs in this process
    with build_resources({"spark01": SparkPool(**POOL)}) as resources, caplog.at_level(logging.INFO):
        session = resources.spark01.session(LOG)
    assert not type(session).__module__.startswith("pyspark.sql.connect")
    assert "Warm Spark pool 'spark01' not used: a local SparkContext already runs" in caplog.text


def test_a_stale_state_file_is_detected_and_removed(tmp_path):
    project = Project(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    folder = project.state / "pools"
    folder.mkdir(parents=True)
    stale = {"name": "old", "pid": gone.pid, "port": free_port(), "spark_version": "4.3.0",
             "conf": {}, "token": "x", "started_at": 0.0, "log_file": "", "url": ""}
    (folder / "old.json").write_text(json.dumps(stale))

    status = project.cli("status", "old", check=False)
    assert status.returncode == 1
    assert f"old  not running (its server (pid {gone.pid}) is no longer running; the stale state " \
           "file was removed)" in status.stdout
    assert not (folder / "old.json").exists()

    (folder / "old.json").write_text(json.dumps(stale))
    stopped = project.cli("stop", "old").stdout
    assert f"was not running (pid {gone.pid} is gone); removed its stale state file" in stopped
    assert project.cli("status").stdout.startswith("No warm Spark pools")


def test_stop_leaves_no_process_behind(project):
    state = json.loads((project.state / "pools" / "spark01.json").read_text())
    out = project.cli("stop", "spark01").stdout
    assert f"Stopped warm Spark pool 'spark01' (sc://127.0.0.1:{project.port}, pid {state['pid']})" in out
    assert not (project.state / "pools" / "spark01.json").exists()
    assert _processes_in_group(state["pid"]) == []
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", project.port)) != 0
    assert "No warm Spark pool 'spark01' is running" in project.cli("stop", "spark01").stdout


def _processes_in_group(group: int) -> list[str]:
    """Live processes of a process group (the server led its own)."""
    alive = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(proc.name)
    if alive:  # leave nothing behind for the next test either
        os.killpg(group, signal.SIGKILL)
    return alive


def test_pool_names_cannot_escape_the_state_folder():
    with pytest.raises(Exception, match="is not a Spark pool name"):
        warm_pool.read_state("../etc")
