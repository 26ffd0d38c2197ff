"""Process faults: a killed run takes its step processes down and is marked failed by the next
run; saved data is read-only to steps even as root; secrets never reach Dagster's records;
steps stop at their timeout."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._serdes import serialize_value

from aml_assets import (
    DatasetRegistry,
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PythonScriptStep,
    SynapseSparkStep,
)
from aml_assets.compute import isolation
from aml_assets.compute.launch import launcher_path
from aml_assets.pipeline import orphans
from aml_assets.reuse.ledger import StepLedger
from aml_assets.service.instance import ensure_instance
from tests.support.faults import (
    DagsterRun,
    alive,
    grep_tree,
    kill_quietly,
    read_pid,
    run_to_end,
    wait_for,
    wait_for_pids,
)
from tests.support.runs import materializations, run_job, step_failure_messages

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.fault,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process faults are tested on Linux"),
]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with the project's instance settings."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    ensure_instance(home, default_config=REPO / "dagster.yaml")  # as `make run` installs it
    return home


def _failure_messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [
        r.dagster_event.message or ""
        for r in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    ]


# --- the supervisor --------------------------------------------------------------------------------
def _launch(script: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-S", launcher_path(), str(script), *args],
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONSAFEPATH": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("sys.exit(7)", 7),
        ("raise SystemExit(0)", 0),
        ("os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
        ("os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
        ("raise ValueError('boom')", 1),
    ],
)
def test_supervisor_exits_like_its_script(tmp_path, body, expected):
    script = _write(tmp_path / "s.py", f"import os, signal, sys\n{body}\n")
    proc = _launch(script)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == expected, err.decode()[-2000:]


def test_supervisor_kills_the_script_and_its_children_when_the_runner_dies(tmp_path):
    """The runner (here a stand-in process) is killed with SIGKILL: within a second the script,
    a child of the script and a child that left the group (setsid) are gone."""
    script = _write(
        tmp_path / "s.py",
        f"""
        import os, subprocess, time
        from pathlib import Path
        state = Path({str(tmp_path)!r})
        child = subprocess.Popen(["sleep", "300"])
        escaped = subprocess.Popen(["sleep", "300"], start_new_session=True)
        (state / "child.pid").write_text(str(child.pid))
        (state / "escaped.pid").write_text(str(escaped.pid))
        (state / "supervisor.pid").write_text(str(os.getppid()))
        (state / "script.pid").write_text(str(os.getpid()))
        time.sleep(300)
        """,
    )
    runner = _write(
        tmp_path / "runner.py",
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-S", {launcher_path()!r}, {str(script)!r}], start_new_session=True)
        time.sleep(300)
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, str(runner)],
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONSAFEPATH": "1"},
        start_new_session=True,
    )
    pids: dict[str, int] = {}
    try:
        pids = wait_for_pids(
            [tmp_path / f"{n}.pid" for n in ("child", "escaped", "supervisor", "script")], 60
        )
        time.sleep(0.3)  # past the supervisor's first wait: its parent-death signal is armed
        assert all(alive(p) for p in pids.values())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: not any(alive(p) for p in pids.values()), 5, "the step's processes to die")
    finally:
        kill_quietly([proc.pid, *pids.values()])


def test_supervisor_kills_what_the_script_left_behind(tmp_path):
    script = _write(
        tmp_path / "s.py",
        f"""
        import subprocess, time
        from pathlib import Path
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        Path({str(tmp_path)!r}, "left.pid").write_text(str(child.pid))
        time.sleep(0.3)
        """,
    )
    proc = _launch(script)
    try:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
        pid = read_pid(tmp_path / "left.pid")
        assert pid and not alive(pid), "a process the script left behind outlived its step"
    finally:
        kill_quietly([read_pid(tmp_path / "left.pid") or 0])


def test_script_in_a_subfolder_imports_modules_of_the_source_directory(tmp_path, instance, datastore):
    code = tmp_path / "code"
    _write(code / "helpers.py", "ANSWER = 42\n")
    _write(
        code / "jobs" / "main.py",
        """
        import sys
        from pathlib import Path
        import helpers
        Path(sys.argv[1], "answer.txt").write_text(str(helpers.ANSWER))
        """,
    )
    out = OutputDataset("answer_out")
    step = PythonScriptStep("answer", "jobs/main.py", code, arguments=[out])
    defs = Pipeline("sub", [step]).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()}
    )
    result = run_job(defs, instance, job="sub")
    assert result.success, step_failure_messages(result)
    path = datastore.local_path(result.output_for_node("answer", "answer_out").path)
    assert (path / "answer.txt").read_text() == "42"


# --- runs whose process is gone ------------------------------------------------------------------
def test_runs_whose_process_is_gone_are_marked_failed(instance):
    from dagster._core.test_utils import create_run_for_test

    ended = subprocess.Popen(["true"])
    ended.wait()
    me = orphans.identity(os.getpid())

    def started(tags):
        return create_run_for_test(instance, job_name="j", status=DagsterRunStatus.STARTED, tags=tags)

    dead = started(orphans.identity(os.getpid()) | {orphans.PID_TAG: str(ended.pid)})
    reused = started(me | {orphans.START_TAG: "1"})  # our pid, but another process's start time
    rebooted = started(me | {orphans.BOOT_TAG: "another-boot"})
    living = started(me)
    elsewhere = started(me | {orphans.PID_TAG: str(ended.pid), orphans.PIDNS_TAG: "pid:[1]"})
    untagged = started({})
    current = started(me)
    marked = orphans.mark_orphans_failed(instance, current.run_id)
    assert sorted(marked) == sorted([dead.run_id, reused.run_id, rebooted.run_id])
    status = {r.run_id: instance.get_run_by_id(r.run_id).status for r in (dead, reused, rebooted, living, elsewhere, untagged, current)}
    assert sorted(r for r, s in status.items() if s == DagsterRunStatus.FAILURE) == sorted(marked)
    assert _failure_messages(instance, dead.run_id) == [
        f"Run {dead.run_id}'s process (pid {ended.pid}) is gone: it was killed or crashed; "
        f"marked failed by run {current.run_id}."
    ]
    assert "now belongs to another process" in _failure_messages(instance, reused.run_id)[0]
    assert "the machine was restarted" in _failure_messages(instance, rebooted.run_id)[0]
    assert orphans.mark_orphans_failed(instance, current.run_id) == []  # once


def test_orphan_check_is_cheap(instance):
    from dagster._core.test_utils import create_run_for_test

    for _ in range(10):
        create_run_for_test(instance, job_name="j", status=DagsterRunStatus.STARTED, tags=orphans.identity(os.getpid()))
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        orphans.mark_orphans_failed(instance, "current")
        times.append(time.perf_counter() - t0)
    assert sorted(times)[len(times) // 2] < 0.05, times  # ~2 ms here: it runs on every step


# --- kill -9 of a whole run -----------------------------------------------------------------------
SCRIPT_DEFS = """
from pathlib import Path
from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep

here = Path(__file__).parent
out = OutputDataset("slow_out")
step = PythonScriptStep("slow", "slow.py", here / "code", arguments=[str(here), out])
defs = Pipeline("faulty", [step]).to_definitions(
    {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()}
)
"""

SLOW_SCRIPT = """
import os, subprocess, sys, time
from pathlib import Path
state, out = Path(sys.argv[1]), Path(sys.argv[2])
if not (state / "fast").exists():
    child = subprocess.Popen(["sleep", "300"])
    escaped = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (state / "grandchild.pid").write_text(str(child.pid))
    (state / "escaped.pid").write_text(str(escaped.pid))
    (state / "supervisor.pid").write_text(str(os.getppid()))
    time.sleep(0.5)
    (state / "script.pid").write_text(str(os.getpid()))
    while True:
        with open(out / "progress.txt", "a") as fh:
            fh.write("x")
        time.sleep(0.05)
(out / "done.txt").write_text("done")
print("done")
"""


def _assert_killed_run_failed_and_rerun_succeeds(tmp_path, home, env, defs, job, first, asset):
    code, output = run_to_end(defs, job, home, env, tmp_path / "second.log", timeout=300)
    assert code == 0, output[-4000:]
    instance = DagsterInstance.from_config(str(home))
    try:
        runs = {r.run_id: r for r in instance.get_runs()}
        assert len(runs) == 2
        [killed] = [r for r in runs.values() if r.tags.get(orphans.PID_TAG) == str(first.pgid)]
        [second] = [r for r in runs.values() if r.run_id != killed.run_id]
        assert killed.status == DagsterRunStatus.FAILURE
        assert second.status == DagsterRunStatus.SUCCESS
        [message] = _failure_messages(instance, killed.run_id)
        assert message == (
            f"Run {killed.run_id}'s process (pid {first.pgid}) is gone: it was killed or crashed; "
            f"marked failed by run {second.run_id}."
        )
        event = instance.get_latest_materialization_event(AssetKey(asset))
        assert event is not None and event.run_id == second.run_id
        meta = event.asset_materialization.metadata
        assert meta["reused"].value is False
    finally:
        instance.dispose()


@pytest.mark.slow
def test_kill9_of_the_run_during_a_script_step(tmp_path):
    _write(tmp_path / "code" / "slow.py", SLOW_SCRIPT)
    defs = _write(tmp_path / "defs.py", SCRIPT_DEFS)
    home = _home(tmp_path)
    env = dict(os.environ)
    first = DagsterRun(defs, "faulty", home, env, tmp_path / "first.log")
    pids: dict[str, int] = {}
    try:
        pids = wait_for_pids(
            [tmp_path / f"{n}.pid" for n in ("grandchild", "escaped", "supervisor", "script")], 120
        )
        assert all(alive(p) for p in pids.values())
        first.killpg()
        wait_for(
            lambda: not any(alive(p) for p in pids.values()),
            5,
            f"the step's processes {pids} to die with their run",
        )
    finally:
        first.cleanup()
        kill_quietly(pids.values())
    (tmp_path / "fast").touch()
    _assert_killed_run_failed_and_rerun_succeeds(tmp_path, home, env, defs, "faulty", first, "slow_out")


SPARK_DEFS = """
from pathlib import Path
from aml_assets import LocalDatastore, OutputDataset, Pipeline, SparkPool, SynapseSparkStep

here = Path(__file__).parent
out = OutputDataset("spark_out")
step = SynapseSparkStep("sparky", "sparky.py", here / "code", arguments=[str(here), out])
pool = SparkPool(
    master="local[1]",
    driver_memory="1g",
    executor_memory="1g",
    conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1"},
)
defs = Pipeline("sparkfaulty", [step]).to_definitions({"workspace": LocalDatastore(), "spark01": pool})
"""

SPARK_SCRIPT = """
import os, sys
from pathlib import Path
from pyspark.sql import SparkSession
state, out = sys.argv[1], Path(sys.argv[2])
spark = SparkSession.builder.getOrCreate()
if not Path(state, "fast").exists():
    jvm = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    Path(state, "jvm.pid").write_text(jvm.getName().split("@")[0])
    Path(state, "driver.pid").write_text(str(os.getpid()))

    def slow(x):
        import os, time
        from pathlib import Path
        Path(state, "daemon.pid").write_text(str(os.getppid()))  # pyspark's worker daemon
        Path(state, "worker.pid").write_text(str(os.getpid()))
        time.sleep(300)
        return x

    spark.sparkContext.parallelize([1], 1).map(slow).collect()
spark.range(3).write.parquet(str(out / "data"))
"""


@pytest.mark.slow
@pytest.mark.spark
def test_kill9_of_the_run_during_a_spark_step(tmp_path):
    _write(tmp_path / "code" / "sparky.py", SPARK_SCRIPT)
    defs = _write(tmp_path / "defs.py", SPARK_DEFS)
    home = _home(tmp_path)
    env = dict(os.environ)
    first = DagsterRun(defs, "sparkfaulty", home, env, tmp_path / "first.log")
    pids: dict[str, int] = {}
    try:
        pids = wait_for_pids([tmp_path / f"{n}.pid" for n in ("jvm", "driver", "daemon", "worker")], 240)
        assert pids["driver.pid"] == first.pgid
        assert all(alive(p) for p in pids.values())
        first.killpg()
        wait_for(
            lambda: not any(alive(p) for p in pids.values()),
            10,
            f"the run's JVM and Python workers {pids} to die with it",
        )
    finally:
        first.cleanup()
        kill_quietly(pids.values())
    (tmp_path / "fast").touch()
    _assert_killed_run_failed_and_rerun_succeeds(
        tmp_path, home, env, defs, "sparkfaulty", first, "spark_out"
    )


# --- saved data is read-only to steps -------------------------------------------------------------
MAKE_SCRIPT = """
import sys
from pathlib import Path
Path(sys.argv[1], "a.txt").write_text("alpha")
Path(sys.argv[1], "sub").mkdir()
Path(sys.argv[1], "sub", "b.txt").write_text("beta")
"""

TAMPER_SCRIPT = """
import errno, json, os, sys
from pathlib import Path
mnt, dl, out = (Path(a) for a in sys.argv[1:4])

def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def append(path):
    with open(path, "a") as fh:
        fh.write("tampered")

report = {
    "mount": str(mnt),
    "append": attempt(lambda: append(mnt / "a.txt")),
    "append_nested": attempt(lambda: append(mnt / "sub" / "b.txt")),
    "create": attempt(lambda: (mnt / "new.txt").write_text("new")),
    "chmod": attempt(lambda: os.chmod(mnt / "a.txt", 0o666)),
    "unlink": attempt(lambda: (mnt / "sub" / "b.txt").unlink()),
    "download_write": attempt(lambda: append(dl / "a.txt")),
    "shell_append": attempt(lambda: os.system(f"echo x >> {mnt / 'a.txt'} 2>/dev/null") == 0 or (_ for _ in ()).throw(OSError(errno.EROFS, "shell"))),
}
(out / "report.json").write_text(json.dumps(report))
"""


def _tamper_pipeline(tmp_path: Path, spark: bool = False) -> Pipeline:
    code = tmp_path / "ro_code"
    _write(code / "make.py", MAKE_SCRIPT)
    _write(code / "tamper.py", TAMPER_SCRIPT)
    docs = OutputDataset("docs").register(description="saved data")
    report = OutputDataset("report")
    make = PythonScriptStep("make", "make.py", code, arguments=[docs])
    kind = SynapseSparkStep if spark else PythonScriptStep
    tamper = kind(
        "tamper", "tamper.py", code,
        arguments=[docs.as_mount("mnt"), docs.as_download("dl"), report],
    )
    return Pipeline("ro", [make, tamper])


def _tree(root: Path) -> dict[str, tuple[bytes | None, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mode & 0o777)
        for p in sorted([root, *root.rglob("*")])
    }


SAVED = {
    ".": (None, 0o555),
    "a.txt": (b"alpha", 0o444),
    "sub": (None, 0o555),
    "sub/b.txt": (b"beta", 0o444),
}


def _run_tamper(tmp_path, instance, datastore) -> tuple[dict, Path]:
    defs = _tamper_pipeline(tmp_path).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()}
    )
    result = run_job(defs, instance, job="ro")
    assert result.success, step_failure_messages(result)
    saved = datastore.local_path(result.output_for_node("make", "docs").path)
    report = datastore.local_path(result.output_for_node("tamper", "report").path)
    # The registered version's files are exactly what the producing step wrote.
    [version] = DatasetRegistry(datastore).versions("docs")
    assert version == 1
    assert _tree(saved) == SAVED
    return json.loads((report / "report.json").read_text()), saved


@pytest.mark.skipif(os.geteuid() != 0, reason="the read-only view matters for root (others are stopped by 0444)")
def test_script_step_cannot_change_its_mounted_input_even_as_root(tmp_path, instance, datastore):
    if not isolation.can_isolate():
        pytest.skip("no mount namespace here (the private-copy fallback is tested below)")
    seen, saved = _run_tamper(tmp_path, instance, datastore)
    assert seen["mount"] == str(saved), "the input is read in place"
    for action in ("append", "append_nested", "create", "chmod", "unlink", "shell_append"):
        assert seen[action] == "EROFS", (action, seen)
    assert seen["download_write"] == "ok", "a downloaded input is the step's own copy"


@pytest.mark.skipif(os.geteuid() != 0, reason="private copies are for root without a read-only view")
def test_root_without_a_read_only_view_gets_private_copies(tmp_path, instance, datastore, monkeypatch):
    monkeypatch.setenv(isolation.MODE_ENV, "copy")
    seen, saved = _run_tamper(tmp_path, instance, datastore)
    assert seen["mount"] != str(saved), "the script was given a copy"
    assert seen["append"] == seen["create"] == seen["download_write"] == "ok"


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.skipif(os.geteuid() != 0, reason="as non-root the permission bits refuse the write")
def test_spark_step_that_changes_its_input_fails(tmp_path, instance, datastore, spark_pool):
    code = tmp_path / "ro_code"
    _write(code / "make.py", MAKE_SCRIPT)
    _write(
        code / "spark_tamper.py",
        """
        import sys
        from pathlib import Path
        with open(Path(sys.argv[1], "a.txt"), "a") as fh:
            fh.write("tampered")
        Path(sys.argv[2], "done.txt").write_text("done")
        """,
    )
    docs = OutputDataset("docs").register(description="saved data")
    make = PythonScriptStep("make", "make.py", code, arguments=[docs])
    tamper = SynapseSparkStep(
        "tamper", "spark_tamper.py", code, arguments=[docs.as_mount("mnt"), OutputDataset("report")]
    )
    defs = Pipeline("ro", [make, tamper]).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(), "spark01": spark_pool}
    )
    result = run_job(defs, instance, job="ro")
    assert not result.success
    saved = datastore.local_path(result.output_for_node("make", "docs").path)
    [message] = step_failure_messages(result)
    assert (
        f"Step 'tamper' failed: script ro_code/spark_tamper.py modified its input 'mnt' at {saved} "
        "(1 changes: changed a.txt); saved data must not be changed: write to an output instead. "
        "Nothing was published."
    ) in message
    assert StepLedger(datastore, "tamper").run_records()[-1].status == "failed"


# --- timeouts ----------------------------------------------------------------------------------
SLEEPY_SCRIPT = """
import signal, subprocess, sys, time
from pathlib import Path
state, out, stubborn = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "stubborn"
if stubborn:  # ignores SIGTERM, and so does its child: only SIGKILL stops them
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "300"])
(state / "child.pid").write_text(str(child.pid))
(out / "partial.txt").write_text("partial")
print("sleeping", flush=True)
time.sleep(60)
"""

TIMEOUT_MESSAGE = (
    "Step 'sleepy' exceeded its 2 s timeout and was stopped; nothing was published. If it needs "
    "longer, raise timeout_seconds on the step (or default_timeout_seconds on its compute target)."
)


def _assert_nothing_published(datastore, instance, result, step: str, output: str) -> None:
    assert not result.success
    assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.FAILURE
    steps = datastore.local_path(f"steps/{step}")
    assert list(steps.rglob("commits/*.json")) == [] if steps.exists() else True
    assert DatasetRegistry(datastore).versions(output) == []
    tmp = datastore.local_path("_tmp")
    assert not tmp.exists() or list(tmp.iterdir()) == [], "scratch cleaned up"
    [record] = StepLedger(datastore, step).run_records()
    assert record.status == "failed" and "timeout" in (record.error or "")


@pytest.mark.slow
@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "ignores-sigterm"])
def test_script_step_stops_at_its_timeout(tmp_path, instance, datastore, stubborn):
    code = tmp_path / "code"
    _write(code / "sleepy.py", SLEEPY_SCRIPT)
    out = OutputDataset("sleepy_out").register()
    step = PythonScriptStep(
        "sleepy", "sleepy.py", code,
        arguments=[str(tmp_path), out, "stubborn" if stubborn else "plain"],
        timeout_seconds=2,
    )
    defs = Pipeline("sleepy", [step]).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()}
    )
    child = None
    try:
        t0 = time.monotonic()
        result = run_job(defs, instance, job="sleepy")
        elapsed = time.monotonic() - t0
        child = read_pid(tmp_path / "child.pid")
        [message] = step_failure_messages(result)
        assert TIMEOUT_MESSAGE in message
        # 2 s, then SIGTERM (and SIGKILL after a 10 s grace for a script that ignores it).
        assert elapsed < (25 if stubborn else 12), elapsed
        assert child and not alive(child), "the script's child was stopped with it"
        _assert_nothing_published(datastore, instance, result, "sleepy", "sleepy_out")
    finally:
        kill_quietly([child or 0])


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("how", ["python-loop", "spark-job", "caught"])
def test_spark_step_stops_at_its_timeout(tmp_path, instance, datastore, spark_pool, how):
    code = tmp_path / "code"
    _write(
        code / "sleepy.py",
        """
        import sys, time
        from pyspark.sql import SparkSession
        spark = SparkSession.builder.getOrCreate()
        if sys.argv[2] == "python-loop":
            n = 0
            while True:
                n += 1
        elif sys.argv[2] == "caught":  # a script that swallows every exception, then goes on
            try:
                while True:
                    pass
            except Exception:
                pass
            time.sleep(3)
        else:
            spark.sparkContext.parallelize(range(2), 2).map(lambda x: time.sleep(120) or x).collect()
        """,
    )
    out = OutputDataset("sleepy_out").register()
    step = SynapseSparkStep("sleepy", "sleepy.py", code, arguments=[out, how], timeout_seconds=2)
    defs = Pipeline("sleepy", [step]).to_definitions({"workspace": LocalDatastore(), "spark01": spark_pool})
    t0 = time.monotonic()
    result = run_job(defs, instance, job="sleepy")
    elapsed = time.monotonic() - t0
    [message] = step_failure_messages(result)
    assert TIMEOUT_MESSAGE in message
    assert elapsed < 60, elapsed
    _assert_nothing_published(datastore, instance, result, "sleepy", "sleepy_out")
    # The shared session is usable, and nothing of the step still runs on it.
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    assert spark.range(10).count() == 10
    wait_for(lambda: not spark.sparkContext.statusTracker().getActiveJobsIds(), 30, "no active Spark job")


# --- secrets ------------------------------------------------------------------------------------
SECRETS_DEFS = """
from pathlib import Path
from aml_assets import LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep, TabularDataset
from aml_assets.data.workspace import workspace_datastore
from aml_assets.service.instance import ensure_instance

here = Path(__file__).parent
code = here / "code"
numbers = TabularDataset.from_delimited_files("numbers", "numbers/numbers.csv", seed=here / "seed.csv")
steps = [
    PythonScriptStep("leaky", "leaky.py", code, arguments=[numbers.as_download("numbers_in"), OutputDataset("leaky_out")]),
    PythonScriptStep("creds", "creds.py", code, arguments=[OutputDataset("creds_out")], datastore_credentials=True),
    PythonScriptStep("boom", "boom.py", code, arguments=[OutputDataset("boom_out")]),
]
defs = Pipeline("secrets", steps).to_definitions(
    {"workspace": workspace_datastore("workspace"), "cpucluster": LocalProcessCluster()}
)
"""

# Each script tries to leak the account key it was handed through a file (LEAK_FILE) in every
# way a script's output reaches Dagster, and reports what its environment holds.
LEAKY_SCRIPT = """
import json, os, sys
from pathlib import Path
from amlrun import Run
from dagster_pipes import PipesContext
inp, out = sys.argv[1:3]
key = Path(os.environ["LEAK_FILE"]).read_text()
print("ENV:", dict(os.environ))
print("CS:", os.environ.get("AZURE_STORAGE_CONNECTION_STRING"))
print("KEY:", key)
print("KEY on stderr:", key, file=sys.stderr)
print(f"pattern AccountKey={key[:12]}and-more")
sys.stdout.write("split " + key[:20]); sys.stdout.write(key[20:] + "\\n")
run = Run.get_context()
run.log("leak", f"key={key}")
run.log("has_credentials", any(key in v for v in os.environ.values()))
PipesContext.get().log.info(f"pipes log {key}")
Path(out, "env.json").write_text(json.dumps(dict(os.environ)))
"""

CREDS_SCRIPT = """
import hashlib, os, sys
from pathlib import Path
from amlrun import Run
cs = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
Run.get_context().log("cs_sha", hashlib.sha256(cs.encode()).hexdigest())
print("CS:", cs)
Path(sys.argv[1], "ok.txt").write_text("ok")
"""

BOOM_SCRIPT = """
import os, sys
from pathlib import Path
key = Path(os.environ["LEAK_FILE"]).read_text()
print("about to fail with", key, file=sys.stderr)
raise RuntimeError(f"cannot connect with AccountKey={key} ({key})")
"""


def _secret_variants(key: str, cs: str) -> list[str]:
    return [key, cs, key[:24], key[-24:]]


@pytest.mark.slow
@pytest.mark.azurite
def test_secrets_stay_out_of_dagster_and_the_container(tmp_path, azurite):
    import uuid

    code = tmp_path / "code"
    _write(code / "leaky.py", LEAKY_SCRIPT)
    _write(code / "creds.py", CREDS_SCRIPT)
    _write(code / "boom.py", BOOM_SCRIPT)
    (tmp_path / "seed.csv").write_text("id,value\n1,1\n2,4\n")
    leak = tmp_path / "leak.txt"
    leak.write_text(azurite.account_key)
    defs = _write(tmp_path / "defs.py", SECRETS_DEFS)
    home = _home(tmp_path)
    container = f"t{uuid.uuid4().hex[:16]}"
    azurite.create_container(container)
    env = {
        **os.environ,
        "AML_DATASTORE": "azure",
        "AML_AZURE_CONTAINER": container,
        "AML_AZURE_PREFIX": "aml",
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "LEAK_FILE": str(leak),
    }
    code_, output = run_to_end(defs, "secrets", home, env, tmp_path / "run.log", timeout=300)
    assert code_ != 0, "the boom step fails the run"
    secrets = _secret_variants(azurite.account_key, azurite.connection_string)

    instance = DagsterInstance.from_config(str(home))
    try:
        [run] = instance.get_runs()
        records = instance.all_logs(run.run_id)
        texts = [serialize_value(r) for r in records]
        mats = {}
        for r in records:
            if r.dagster_event and r.dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                m = r.dagster_event.event_specific_data.materialization
                mats[m.asset_key.to_user_string()] = {k: v.value for k, v in m.metadata.items()}
    finally:
        instance.dispose()
    # What Dagster recorded, nothing leaked: events, the run database, the compute logs.
    for secret in secrets:
        assert not any(secret in t for t in texts)
    assert grep_tree(home, secrets) == []
    assert secrets[0] not in output
    captured = "".join(
        p.read_text(errors="replace") for p in home.rglob("*") if p.suffix in (".out", ".err")
    )
    assert "KEY: ***" in captured and "KEY on stderr: ***" in captured, "output was captured, redacted"
    assert "pattern AccountKey=***" in captured
    assert mats["leaky_out"]["leak"] == "key=***"
    assert mats["leaky_out"]["has_credentials"] is False, "the script saw no credential"
    # A step that asks for credentials gets them (and its output is still redacted).
    assert mats["creds_out"]["cs_sha"] == hashlib.sha256(azurite.connection_string.encode()).hexdigest()
    failure = "\n".join(t for t in texts if "cannot connect with" in t)
    assert "cannot connect with AccountKey=*** (***)" in failure

    # Nothing in the container holds it either (the scripts' outputs, records, the ledger).
    with azurite.blob_service_client() as client:
        box = client.get_container_client(container)
        names = [b.name for b in box.list_blobs()]
        assert any(n.endswith("env.json") for n in names)
        for name in names:
            data = box.download_blob(name).readall()
            for secret in secrets:
                assert secret.encode() not in data, f"credential in blob {name}"


SPARK_LEAKY = """
import json, os, sys
from pathlib import Path
from amlrun import Run
from pyspark.sql import SparkSession
out = Path(sys.argv[1])
key = Path(os.environ.get("LEAK_FILE") or sys.argv[2]).read_text()
SparkSession.builder.getOrCreate().range(2).count()
print("ENV:", dict(os.environ))
print("KEY:", key, flush=True)
print("KEY on stderr:", key, file=sys.stderr)
Run.get_context().log("leak", key)
(out / "env.json").write_text(json.dumps({"has_cs": "AZURE_STORAGE_CONNECTION_STRING" in os.environ}))
if sys.argv[3] == "boom":
    raise RuntimeError(f"cannot connect with AccountKey={key} ({key})")
"""


@pytest.mark.slow
@pytest.mark.spark
def test_spark_step_secrets_are_scrubbed_and_redacted(tmp_path, instance, datastore, spark_pool, monkeypatch):
    key = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY3ODkw"
    cs = f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};BlobEndpoint=http://127.0.0.1:1/acct;"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", cs)
    leak = tmp_path / "leak.txt"
    leak.write_text(key)
    code = tmp_path / "code"
    _write(code / "leaky.py", SPARK_LEAKY)
    steps = [
        SynapseSparkStep("leaky", "leaky.py", code, arguments=[OutputDataset("leaky_out"), str(leak), "ok"]),
        SynapseSparkStep("boom", "leaky.py", code, arguments=[OutputDataset("boom_out"), str(leak), "boom"]),
    ]
    defs = Pipeline("sparksecrets", steps).to_definitions({"workspace": LocalDatastore(), "spark01": spark_pool})
    result = run_job(defs, instance, job="sparksecrets")
    assert not result.success
    assert os.environ["AZURE_STORAGE_CONNECTION_STRING"] == cs, "the environment is restored"
    mats = materializations(result)
    assert mats["leaky_out"]["leak"] == "***"
    seen = json.loads((datastore.local_path(result.output_for_node("leaky", "leaky_out").path) / "env.json").read_text())
    assert seen == {"has_cs": False}
    [failure] = step_failure_messages(result)
    assert "raised RuntimeError: cannot connect with AccountKey=*** (***)" in failure
    assert "--- traceback ---" in failure
    texts = [serialize_value(r) for r in instance.all_logs(result.run_id)]
    for secret in _secret_variants(key, cs):
        assert not any(secret in t for t in texts)
    assert grep_tree(Path(instance.root_directory), _secret_variants(key, cs)) == []
    captured = "".join(
        p.read_text(errors="replace") for p in Path(instance.root_directory).rglob("*") if p.suffix in (".out", ".err")
    )
    assert "KEY: ***" in captured and "KEY on stderr: ***" in captured


def test_redaction_and_step_environment():
    from aml_assets.compute.secrets import RedactingWriter, Redactor, collect_secrets, step_env

    class Store:
        def _secrets(self):
            return ["s3cr3t-key-value", "tiny"]

    cs = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=QUJDREVGR0g=;EndpointSuffix=x"
    env = {
        "PATH": "/bin",
        "AZURE_STORAGE_CONNECTION_STRING": cs,
        "AZURE_CLIENT_SECRET": "whatever-it-is",
        "MY_COPY": "prefix s3cr3t-key-value suffix",
        "SAS_URL": "https://a.blob.core.windows.net/c?sv=2020&sig=abcdef123",
    }
    secrets = collect_secrets([Store(), object()])
    assert "s3cr3t-key-value" in secrets and "tiny" not in secrets, "short values are not secrets"
    assert step_env(env, secrets, credentials=False) == {"PATH": "/bin"}
    assert step_env(env, secrets, credentials=True) == env
    redact = Redactor(secrets)
    assert redact(f"{cs} and s3cr3t-key-value") == (
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=***;EndpointSuffix=x and ***"
    )
    assert redact(env["SAS_URL"]) == "https://a.blob.core.windows.net/c?sv=2020&sig=***"
    assert redact.value({"a": ["s3cr3t-key-value", 1]}) == {"a": ["***", 1]}

    import io

    sink = io.StringIO()
    writer = RedactingWriter(sink, redact)
    writer.write("half s3cr3t-")
    writer.write("key-value\nnext s3cr3t-key-value")
    writer.flush()
    assert sink.getvalue() == "half ***\nnext ***"
