"""``aml-assets run``: a pipeline run from the command line, in its own process or on the warm
runner, with a summary; the warm runner is exact (fresh definitions, the client's environment,
refuses work once its own code changed) and Ctrl-C reaches the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

AML = str(Path(sys.executable).with_name("aml-assets"))

DEFS = """
import os
from pathlib import Path
from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PipelineParameter, PythonScriptStep

code = Path(__file__).parent / "code"
size = PipelineParameter("size", default_value=3, min=1, max=100)
made = OutputDataset("made")
# The first step's name comes from the environment: a warm run must see the client's.
make = PythonScriptStep(os.environ.get("FIRST_STEP", "make"), os.environ.get("MAKE_SCRIPT", "make.py"), code,
                        arguments=[size, made])
count = PythonScriptStep("count", "count.py", code, arguments=[made.as_input("made"), OutputDataset("counted")])
defs = Pipeline("demo", [make, count]).to_definitions({"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()})
"""

SCRIPTS = {
    "make.py": "import sys\nfrom pathlib import Path\nn = int(sys.argv[1])\n(Path(sys.argv[2]) / 'rows.txt').write_text('x\\n' * n)\n",
    "count.py": (
        "import sys\nfrom pathlib import Path\nfrom amlrun import Run\n"
        "n = len((Path(sys.argv[1]) / 'rows.txt').read_text().splitlines())\n"
        "Run.get_context().log('rows', n)\n(Path(sys.argv[2]) / 'n.txt').write_text(str(n))\n"
    ),
    "slow.py": "import os, sys, time\nfrom pathlib import Path\nPath(os.environ['PID_FILE']).write_text(str(os.getpid()))\ntime.sleep(120)\n",
    "broken.py": "raise SystemExit('make broke on purpose')\n",
}


@pytest.fixture
def proj(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "code").mkdir()
    for name, body in SCRIPTS.items():
        (tmp_path / "code" / name).write_text(body)
    (tmp_path / "definitions.py").write_text(DEFS)
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "DAGSTER_HOME": str(home)}


def _run(tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([AML, "run", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def _runs(env: dict[str, str]) -> int:
    from dagster import DagsterInstance

    return len(DagsterInstance.from_config(env["DAGSTER_HOME"]).get_runs())


def test_run_prints_what_each_step_did_and_records_a_dagster_run(tmp_path, proj):
    first = _run(tmp_path, proj)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "of demo: succeeded" in first.stdout
    assert "make   ran: no previous run" in first.stdout or "make   ran:" in first.stdout
    assert "rows=3" in first.stdout  # the metric count logged
    second = _run(tmp_path, proj)
    assert second.returncode == 0
    assert "make   reused outputs of run" in second.stdout
    assert "count  reused outputs of run" in second.stdout
    third = _run(tmp_path, proj, "--param", "size=5")
    assert "make   ran: parameter size changed (3 -> 5)" in third.stdout, third.stdout
    assert "rows=5" in third.stdout
    assert _runs(proj) == 3  # ordinary Dagster runs: the UI lists them
    # Later, the same summary from the run history: the latest run, or one by its id's start.
    latest = subprocess.run([AML, "runs", "show"], cwd=tmp_path, env=proj, capture_output=True, text=True)
    assert latest.returncode == 0 and "rows=5" in latest.stdout
    run_id = first.stdout.split("(Dagster run ")[1].split(")")[0]
    earlier = subprocess.run([AML, "runs", "show", run_id[:8]], cwd=tmp_path, env=proj, capture_output=True, text=True)
    assert f"(Dagster run {run_id})" in earlier.stdout and "rows=3" in earlier.stdout
    unknown = subprocess.run([AML, "runs", "show", "zzzz"], cwd=tmp_path, env=proj, capture_output=True, text=True)
    assert unknown.returncode == 2 and "No run zzzz" in unknown.stderr


def test_run_refuses_bad_requests_clearly(tmp_path, proj):
    wrong_job = _run(tmp_path, proj, "-j", "dmeo")
    assert wrong_job.returncode == 2
    assert "has no job 'dmeo'; did you mean 'demo'?" in wrong_job.stderr
    bad_param = _run(tmp_path, proj, "--param", "size")
    assert bad_param.returncode == 2 and "is not name=value" in bad_param.stderr
    missing = _run(tmp_path, proj, "-f", "nope.py")
    assert missing.returncode == 2 and "Definitions file 'nope.py' not found" in missing.stderr
    # Refused before any run exists, naming the parameter and what it allows.
    out_of_range = _run(tmp_path, proj, "--param", "size=1000")
    assert out_of_range.returncode == 2
    assert "Pipeline parameter 'size' = 1000 is out of range" in out_of_range.stderr


def test_a_failed_step_fails_the_command_and_says_why(tmp_path, proj):
    failed = _run(tmp_path, {**proj, "MAKE_SCRIPT": "broken.py"})
    assert failed.returncode == 1
    assert "of demo: FAILED" in failed.stdout
    assert "make broke on purpose" in failed.stdout
    assert "count  skipped" in failed.stdout or "count  not run" in failed.stdout


@pytest.fixture
def warm(proj):
    start = subprocess.run([AML, "runner", "start"], env=proj, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    yield proj
    subprocess.run([AML, "runner", "stop"], env=proj, capture_output=True, text=True, timeout=60)


def test_warm_runner_runs_exactly_what_a_cold_run_would(tmp_path, warm):
    status = subprocess.run([AML, "runner", "status"], env=warm, capture_output=True, text=True)
    assert "listening on" in status.stdout
    first = _run(tmp_path, warm)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "on the warm runner" in first.stdout
    # Definitions are loaded anew in each run, with the client's environment: renaming the
    # step through an environment variable is seen at once.
    renamed = _run(tmp_path, {**warm, "FIRST_STEP": "build"})
    assert "build  ran: no previous run" in renamed.stdout or "build  ran:" in renamed.stdout, renamed.stdout
    # An edit of the step's script between two warm runs reruns it.
    (tmp_path / "code" / "make.py").write_text(SCRIPTS["make.py"] + "edited = True\n")
    edited = _run(tmp_path, warm)
    assert "make   ran: script code/make.py changed" in edited.stdout, edited.stdout
    for result in (renamed, edited):
        assert "on the warm runner" in result.stdout, result.stderr[-2000:]
    assert _runs(warm) == 3


def test_a_runner_whose_code_changed_refuses_work_and_the_run_still_happens(tmp_path, warm):
    import aml_assets.service.runs as runs_module

    module_file = Path(runs_module.__file__)
    before = module_file.stat()
    os.utime(module_file, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    try:
        result = _run(tmp_path, warm)
    finally:
        os.utime(module_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warm runner not used" in result.stderr and "changed since it started" in result.stderr
    assert "on the warm runner" not in result.stdout
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (Path(warm["DAGSTER_HOME"]) / "aml-runner.sock").exists():
        time.sleep(0.2)
    assert not (Path(warm["DAGSTER_HOME"]) / "aml-runner.sock").exists(), "a stale runner kept serving"


def test_ctrl_c_of_a_warm_run_stops_its_step(tmp_path, warm):
    pid_file = tmp_path / "step.pid"
    env = {**warm, "MAKE_SCRIPT": "slow.py", "PID_FILE": str(pid_file)}
    client = subprocess.Popen([AML, "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert client.poll() is None, client.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the slow step never started"
        time.sleep(0.2)
    step_pid = int(pid_file.read_text())
    client.send_signal(signal.SIGINT)
    out, _ = client.communicate(timeout=60)
    assert client.returncode != 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(step_pid):
        time.sleep(0.2)
    assert not _alive(step_pid), "the step's process outlived the interrupted warm run"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def test_runner_stop_leaves_nothing_behind(proj):
    home = Path(proj["DAGSTER_HOME"])
    subprocess.run([AML, "runner", "start"], env=proj, check=True, capture_output=True, timeout=120)
    again = subprocess.run([AML, "runner", "start"], env=proj, capture_output=True, text=True, timeout=60)
    assert "already running" in again.stdout
    import json

    pid = json.loads((home / "aml-runner.json").read_text())["pid"]
    stop = subprocess.run([AML, "runner", "stop"], env=proj, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not _alive(pid)
    assert not (home / "aml-runner.sock").exists() and not (home / "aml-runner.json").exists()
    none = subprocess.run([AML, "runner", "status"], env=proj, capture_output=True, text=True)
    assert "no warm runner" in none.stdout


def test_run_without_dagster_home_keeps_history_in_the_project(tmp_path, proj):
    env = {k: v for k, v in proj.items() if k != "DAGSTER_HOME"}
    first = _run(tmp_path, env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"run history goes to {tmp_path / '.dagster_home'}" in first.stderr
    second = _run(tmp_path, env)
    assert "make   reused outputs of run" in second.stdout
    assert _runs({"DAGSTER_HOME": str(tmp_path / ".dagster_home")}) == 2


def test_a_runner_record_whose_pid_is_now_another_process_is_stale(tmp_path, warm):
    """The pid in a runner record may since belong to another process, even to another home's
    runner: status treats the record as stale and stop signals nothing."""
    import json

    from aml_assets.service import runner

    other = json.loads((Path(warm["DAGSTER_HOME"]) / runner.PID_NAME).read_text())["pid"]
    home = tmp_path / "second-home"
    home.mkdir()
    # Another home's runner, a live process that is no runner, no process at all.
    for pid in (other, os.getpid(), 999_999_999):
        (home / runner.PID_NAME).write_text(json.dumps({"pid": pid, "socket": "x"}))
        (home / runner.SOCKET_NAME).write_text("")
        assert runner.status(home) is None
        assert not (home / runner.PID_NAME).exists() and not (home / runner.SOCKET_NAME).exists()
        assert runner.stop(home) is False
    assert _alive(other), "stopping one home's runner must not touch another's"
