"""parallel=True: independent steps run at once, at most max_concurrent_steps per CPU cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

DEFS = """
import os
from pathlib import Path
from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep

code = Path(__file__).parent / "code"
timeline = os.environ["TIMELINE"]
steps = [
    PythonScriptStep(name, "work.py", code, arguments=[name, timeline, OutputDataset(f"{name}_out")], allow_reuse=False)
    for name in ("left", "right")
]
defs = Pipeline("wide", steps).to_definitions(
    {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=int(os.environ["LIMIT"]))},
    parallel=True,
)
"""

WORK = """
import sys, time
from pathlib import Path
name, timeline, out = sys.argv[1:4]
with open(timeline, "a") as fh:
    fh.write(f"{name} start {time.time()}\\n")
time.sleep(2.0)
Path(out, "done.txt").write_text(name)
with open(timeline, "a") as fh:
    fh.write(f"{name} end {time.time()}\\n")
"""


def _run(tmp_path: Path, limit: int) -> dict[str, tuple[float, float]]:
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "work.py").write_text(WORK)
    (tmp_path / "wide_defs.py").write_text(DEFS)
    home = tmp_path / f"home{limit}"
    home.mkdir()
    timeline = tmp_path / f"timeline{limit}.txt"
    env = {**os.environ, "DAGSTER_HOME": str(home), "LIMIT": str(limit), "TIMELINE": str(timeline)}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-f", str(tmp_path / "wide_defs.py"), "-j", "wide"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    spans: dict[str, list[float]] = {}
    for line in timeline.read_text().splitlines():
        name, _, t = line.split()
        spans.setdefault(name, []).append(float(t))
    return {k: (v[0], v[1]) for k, v in spans.items()}


def _overlap(spans) -> bool:
    (a0, a1), (b0, b1) = spans["left"], spans["right"]
    return a0 < b1 and b0 < a1


def test_cpu_cluster_limits_how_many_steps_run_at_once(tmp_path):
    assert _overlap(_run(tmp_path, limit=2)), "two slots: the independent steps run together"
    assert not _overlap(_run(tmp_path, limit=1)), "one slot: they take turns"


# --- the threaded executor: reused steps cost no process, failures and interrupts stay contained ---

FAN = """
import os
from pathlib import Path
from aml_assets import (LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep,
                        SparkPool, SynapseSparkStep)

code = Path(__file__).parent / "code"
spec = os.environ["SPEC"]  # "name:script[:upstream]" separated by commas
steps, outputs = [], {}
for item in spec.split(","):
    name, script, *up = item.split(":")
    args = [outputs[u].as_input(u) for u in up] + [OutputDataset(f"{name}_out")]
    outputs[name] = args[-1]
    cls = SynapseSparkStep if script.startswith("spark") else PythonScriptStep
    kwargs = {"compute_target": "spark01"} if cls is SynapseSparkStep else {}
    steps.append(cls(name, script, code, arguments=[os.environ["MARKS"], *args], **kwargs))
defs = Pipeline("fan", steps).to_definitions(
    {"workspace": LocalDatastore(),
     "cpucluster": LocalProcessCluster(max_concurrent_steps=int(os.environ.get("LIMIT", "2"))),
     "spark01": SparkPool(master="local[2]", driver_memory="1g", executor_memory="1g",
                          conf={"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false"})},
    parallel=True,
)
"""

SCRIPTS = {
    # Writes its pid to the marks folder, then its output.
    "quick.py": "import os, sys\nfrom pathlib import Path\nPath(sys.argv[1], f'{os.getpid()}.pid').write_text(sys.argv[-1])\nPath(sys.argv[-1], 'x.txt').write_text('x')\n",
    "slow.py": "import os, sys, time\nfrom pathlib import Path\nPath(sys.argv[1], f'{os.getpid()}.pid').write_text(sys.argv[-1])\ntime.sleep(120)\nPath(sys.argv[-1], 'x.txt').write_text('x')\n",
    "fail.py": "import sys\nsys.exit('left broke on purpose')\n",
    "late.py": "import sys, time\nfrom pathlib import Path\ntime.sleep(1.5)\nPath(sys.argv[-1], 'x.txt').write_text('late')\n",
    # A Spark step: records which JVM application it ran in.
    "spark_probe.py": "import sys\nfrom pathlib import Path\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\nPath(sys.argv[1], 'app-' + sys.argv[-1].replace('/', '_')).write_text(spark.sparkContext.applicationId)\nspark.range(3).write.mode('overwrite').parquet(sys.argv[-1] + '/p')\n",
}


def _fan_project(tmp_path: Path, spec: str, limit: int = 2) -> dict[str, str]:
    (tmp_path / "code").mkdir(exist_ok=True)
    for name, body in SCRIPTS.items():
        (tmp_path / "code" / name).write_text(body)
    (tmp_path / "fan_defs.py").write_text(FAN)
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "DAGSTER_HOME": str(home), "SPEC": spec, "MARKS": str(marks), "LIMIT": str(limit)}


def _execute(tmp_path: Path, env: dict[str, str]):
    """Run the fan job in this process (the threaded executor, not execute_in_process's)."""
    from dagster import DagsterInstance, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        job = ReconstructableRepository.for_file(str(tmp_path / "fan_defs.py"), "defs").get_reconstructable_job("fan")
        instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
        result = execute_job(job, instance=instance, raise_on_error=False)
        return result, instance
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _reused(instance, run_id: str) -> dict[str, bool]:
    from dagster import DagsterEventType

    out = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        mat = record.dagster_event.event_specific_data.materialization
        out[mat.asset_key.to_user_string()] = mat.metadata["reused"].value
    return out


def test_parallel_steps_run_in_threads_of_the_run_process_and_reuse(tmp_path):
    from dagster import DagsterEventType

    spec = ",".join(f"s{i}:quick.py" for i in range(6)) + ",join:quick.py:s0:s5"
    env = _fan_project(tmp_path, spec)
    first, instance = _execute(tmp_path, env)
    assert first.success
    assert set(_reused(instance, first.run_id).values()) == {False}
    second, instance = _execute(tmp_path, env)
    assert second.success
    assert _reused(instance, second.run_id) == {f"s{i}_out": True for i in range(6)} | {"join_out": True}
    # Each step's reuse tag survives steps finishing together in threads (a tag write rewrites
    # the whole run record: unordered, one step's tag could overwrite another's).
    names = [f"s{i}" for i in range(6)] + ["join"]
    for run, word in ((first, "computed"), (second, "reused")):
        tags = instance.get_run_by_id(run.run_id).tags
        assert {n: tags.get(f"aml/reuse/{n}") for n in names} == dict.fromkeys(names, word)
    # Every step of both runs executed in the run's own process: no worker process per step.
    for run in (first, second):
        logs = instance.all_logs(run.run_id)
        starts = [r for r in logs if r.dagster_event and r.dagster_event.event_type == DagsterEventType.STEP_START]
        assert len(starts) == 7
        assert {r.dagster_event.pid for r in starts} == {os.getpid()}
        assert not any("Launching subprocess" in (r.user_message or "") for r in logs)


def test_a_failing_step_leaves_its_independent_neighbours_running(tmp_path):
    from dagster import DagsterEventType

    env = _fan_project(tmp_path, "left:fail.py,right:late.py,down:quick.py:left")
    result, instance = _execute(tmp_path, env)
    assert not result.success
    statuses = {}
    for record in instance.all_logs(result.run_id):
        event = record.dagster_event
        if event and event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            statuses[event.step_key] = event.event_type
    assert statuses == {"left": DagsterEventType.STEP_FAILURE, "right": DagsterEventType.STEP_SUCCESS}
    assert _reused(instance, result.run_id) == {"right_out": False}  # down never ran
    failure = next(
        r.dagster_event.event_specific_data.error.to_string()
        for r in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    )
    assert "left broke on purpose" in failure


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_parallel_run_stops_every_running_step(tmp_path, signum):
    from dagster import DagsterInstance, DagsterRunStatus

    from aml_assets import LocalDatastore
    from aml_assets.reuse.ledger import StepLedger

    env = _fan_project(tmp_path, "a:slow.py,b:slow.py,c:quick.py:a")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-f", str(tmp_path / "fan_defs.py"), "-j", "fan"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    marks = Path(env["MARKS"])
    try:
        deadline = time.monotonic() + 90
        while len(list(marks.glob("*.pid"))) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the two slow steps never started together"
            time.sleep(0.2)
        scripts = [int(p.stem) for p in marks.glob("*.pid")]
        os.kill(proc.pid, signum)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    for pid in scripts:
        assert not _alive(pid), f"step process {pid} outlived the interrupted run"
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    (run,) = instance.get_runs()
    assert run.status in (DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE)
    store = LocalDatastore()
    for step in ("a", "b"):
        record = StepLedger(store, step).latest_record()
        assert record is not None and record.status == "failed", record
        assert "interrupted" in (record.error or "")
        assert not StepLedger(store, step).fingerprints(), "an interrupted step committed an output"
    assert StepLedger(store, "c").latest_record() is None, "a step after the interrupt started"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent, the supervisor, may not have reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_parallel_spark_steps_share_the_pools_session_beside_script_steps(tmp_path):
    env = _fan_project(tmp_path, "p1:spark_probe.py,p2:spark_probe.py,q:late.py")
    result, instance = _execute(tmp_path, env)
    assert result.success
    apps = {p.read_text() for p in Path(env["MARKS"]).glob("app-*")}
    assert len(list(Path(env["MARKS"]).glob("app-*"))) == 2
    assert len(apps) == 1, f"the two Spark steps ran in different Spark applications: {apps}"


def test_script_steps_get_the_users_spark_connect_settings_not_a_spark_steps(tmp_path, monkeypatch):
    """A Spark step sets SPARK_REMOTE (a warm pool's URL, with its token) in this process while
    its script runs; a script step started meanwhile by another thread must not inherit it."""
    import aml_assets.compute.launch  # noqa: F401 - loaded with the pipeline, before any step

    SCRIPTS["env_probe.py"] = (
        "import os, sys\nfrom pathlib import Path\n"
        "Path(sys.argv[-1], 'env.txt').write_text(repr(os.environ.get('SPARK_REMOTE')))\n"
    )
    env = _fan_project(tmp_path, "probe:env_probe.py")
    env["SPARK_REMOTE"] = "sc://127.0.0.1:1/;token=not-for-scripts"  # as a Spark step sets it
    result, instance = _execute(tmp_path, env)
    assert result.success
    seen = next(Path(os.environ["AML_DATASTORE_ROOT"], "steps", "probe").rglob("env.txt"))
    assert seen.read_text() == "None"
