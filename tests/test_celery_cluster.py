"""A CPU cluster on Celery: real redis-server, real ``aml-assets worker`` processes (own working
directories, own process groups), pipelines run by ``dagster job execute`` as a user would.

- a 20-step fan-out on two workers gives the in-process run's content hashes, and a rerun
  reuses every step from whichever worker picks it up; a step on another compute target goes
  to that target's queue (a third worker serving only it);
- two pipelines submitted at once never run more than ``max_nodes`` steps together (Dagster's
  step start/end times);
- a worker killed mid-step (SIGKILL of its process group): the orchestrator fails the step with
  a message naming the worker (failed, not retried), nothing of it is published, the killed
  step's script dies too, the run is never marked failed by the orphan watch for the worker's
  death, a redelivered copy of the message does nothing, and the next run completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aml_assets.compute.celery_worker import celery_app
from aml_assets.service.servers import RedisServer
from tests.support.celery_workers import celery_workers, start_worker, stop_all, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

DAGSTER = str(Path(sys.executable).with_name("dagster"))

WORK = """
import argparse, os, time
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--input"); p.add_argument("--out"); p.add_argument("--i", type=int)
p.add_argument("--tag"); p.add_argument("--sleep", type=float)
a = p.parse_args()
def note(what):
    with open(os.environ["TIMELINE"], "a") as fh:
        fh.write(f"{a.tag} s{a.i:02d} {what} {time.time():.3f} {os.environ.get('AML_WORKER_NAME', 'local')} {os.getpid()}\\n")
note("start")
out = Path(a.out) / "part.csv"
out.write_text(f"partial-{a.tag}-{a.i}\\n")  # what a half-done step leaves in its output folder
time.sleep(a.sleep)
rows = Path(a.input).read_text().splitlines()
out.write_text("\\n".join(f"{r},{a.i}" for r in rows) + "\\n")
note("end")
"""

#: The pipeline; the same file runs in-process (no $AML_CELERY_BROKER) or on the workers, which
#: load it from its code pointer too: everything that shapes it is a constant of the file.
DEFS = """
import os
from pathlib import Path
from dagster import EnvVar
from aml_assets import (CeleryCpuCluster, LocalDatastore, LocalProcessCluster, OutputDataset,
                        Pipeline, PythonScriptStep, TabularDataset)

HERE = Path(__file__).resolve().parent
numbers = TabularDataset.from_delimited_files("numbers", "numbers/numbers.csv", seed=HERE / "seed.csv")
TARGETS = {targets!r}
steps = [
    PythonScriptStep(
        f"s{{i:02d}}", "work.py", HERE / "code",
        arguments=["--input", numbers.as_download("inp"), "--out", OutputDataset(f"{tag}_o{{i:02d}}"),
                   "--i", str(i), "--tag", "{tag}", "--sleep", "{sleep}"],
        compute_target=TARGETS.get(i, "cpucluster"),
    )
    for i in range({n})
]
def cluster():
    if os.environ.get("AML_CELERY_BROKER"):
        return CeleryCpuCluster(broker=EnvVar("AML_CELERY_BROKER"), max_nodes=2)
    return LocalProcessCluster(max_concurrent_steps=2)
defs = Pipeline("{tag}", steps).to_definitions(
    {{"workspace": LocalDatastore(), **{{t: cluster() for t in {{"cpucluster", *TARGETS.values()}}}}}}
)
"""


def _project(root: Path, tag: str, n: int, sleep: float = 0.0, targets: dict | None = None) -> Path:
    (root / "code").mkdir(parents=True, exist_ok=True)
    (root / "code" / "work.py").write_text(WORK)
    (root / "seed.csv").write_text("id,value\n" + "".join(f"{i},{i * i}\n" for i in range(10)))
    defs = root / f"{tag}_defs.py"
    defs.write_text(DEFS.format(tag=tag, n=n, sleep=sleep, targets=targets or {}))
    return defs


def _home(path: Path) -> Path:
    """A Dagster home whose SQLite storage exists before any process uses it: two ``dagster job
    execute`` (and their steps' workers) opening a fresh home at once race on creating it
    ("alembic_version has more than one head"), as ``make run`` avoids with the same call."""
    from aml_assets.service.instance import ensure_instance

    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    ensure_instance(path)
    return path


def _execute(defs: Path, tag: str, env: dict, check: bool = True, background: bool = False):
    cmd = [DAGSTER, "job", "execute", "-f", str(defs), "-j", tag]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


def _instance(home: Path):
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _content_hashes(home: Path, names: list[str]) -> dict[str, str]:
    from dagster import AssetKey

    with _instance(home) as instance:
        found = {}
        for name in names:
            event = instance.get_latest_materialization_event(AssetKey(name))
            found[name] = event.asset_materialization.metadata["content_hash"].value if event else None
        return found


def _latest_run(home: Path):
    with _instance(home) as instance:
        return instance.get_runs(limit=1)[0]


def _step_spans(home: Path) -> list[tuple[float, float, str]]:
    """(start, end, step) of every step that ended, from Dagster's event logs of all runs."""
    from dagster import DagsterEventType

    spans = []
    with _instance(home) as instance:
        for run in instance.get_runs():
            starts = {}
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None or not event.step_key:
                    continue
                if event.event_type == DagsterEventType.STEP_START:
                    starts[event.step_key] = entry.timestamp
                elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                    spans.append((starts[event.step_key], entry.timestamp, f"{run.job_name}.{event.step_key}"))
    return spans


def _max_overlap(spans: list[tuple[float, float, str]]) -> int:
    edges = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


def _timeline(path: Path, tag: str) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.startswith(f"{tag} ")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Redis, and workers w1 + w2 on ``cpucluster`` and w3 on ``bigcpu`` only."""
    root = tmp_path_factory.mktemp("celery")
    timeline = root / "timeline.txt"
    timeline.touch()
    redis = RedisServer(root / "redis").start()
    env = {
        "AML_CELERY_BROKER": redis.url,
        "AML_DATASTORE_ROOT": str(root / "datastore"),
        "TIMELINE": str(timeline),
    }
    try:
        with celery_workers(root / "workers", redis.url, 2, env=env) as workers:
            other = start_worker(root / "workers", "w3", redis.url, ("bigcpu",), env=env)
            try:
                wait_ready(redis.url, [other])
                yield {"root": root, "redis": redis, "env": {**os.environ, **env}, "timeline": timeline,
                       "workers": [*workers, other]}
            finally:
                other.stop()
    finally:
        redis.stop()


def test_fan_out_on_two_workers_matches_in_process_and_rerun_reuses_everything(cluster):
    root, timeline = cluster["root"], cluster["timeline"]
    defs = _project(root / "fan", "fan", 20, targets={19: "bigcpu"})
    outputs = [f"fan_o{i:02d}" for i in range(20)]

    local_env = {**cluster["env"], "AML_DATASTORE_ROOT": str(root / "local-datastore"),
                 "DAGSTER_HOME": str(_home(root / "local-home"))}
    local_env.pop("AML_CELERY_BROKER")
    started = time.monotonic()
    _execute(defs, "fan", local_env)
    local_seconds = time.monotonic() - started
    expected = _content_hashes(root / "local-home", outputs)
    assert all(expected.values()), expected

    env = {**cluster["env"], "DAGSTER_HOME": str(_home(root / "home"))}
    started = time.monotonic()
    out = _execute(defs, "fan", env)
    cluster_seconds = time.monotonic() - started
    assert "aml_celery" in out.stderr or "Celery" in out.stderr
    assert _content_hashes(root / "home", outputs) == expected

    ran = [f for f in _timeline(timeline, "fan") if f[2] == "start" and f[4] != "local"]
    workers_of = {f[1]: f[4] for f in ran}
    assert len(workers_of) == 20
    # Steps on cpucluster spread over both of its workers; the bigcpu step went to its queue.
    assert {workers_of[f"s{i:02d}"] for i in range(19)} == {"w1", "w2"}
    assert workers_of["s19"] == "w3"
    run = _latest_run(root / "home")
    # The orchestrator watches the run (orphans): its pid is the run's, never a worker's.
    worker_pids = {w.proc.pid for w in cluster["workers"]}
    assert int(run.tags["aml/pid"]) not in worker_pids

    before = len(timeline.read_text().splitlines())
    started = time.monotonic()
    _execute(defs, "fan", env)
    rerun_seconds = time.monotonic() - started
    run = _latest_run(root / "home")
    assert {run.tags.get(f"aml/reuse/s{i:02d}") for i in range(20)} == {"reused"}
    assert len(timeline.read_text().splitlines()) == before  # no script ran again
    assert _content_hashes(root / "home", outputs) == expected
    print(f"20 steps: in-process {local_seconds:.1f} s, 2 workers {cluster_seconds:.1f} s, "
          f"reused rerun {rerun_seconds:.1f} s")


def test_two_pipelines_at_once_stay_within_max_nodes(cluster):
    root = cluster["root"]
    env = {**cluster["env"], "DAGSTER_HOME": str(_home(root / "shared-home"))}
    runs = []
    for tag in ("left", "right"):
        defs = _project(root / tag, tag, 6, sleep=1.0)
        runs.append(_execute(defs, tag, env, background=True))
    for proc in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
    spans = [s for s in _step_spans(root / "shared-home") if ".s0" in s[2]]
    assert len(spans) == 12, spans
    # max_nodes = 2 (two worker slots): never more than two steps at once, and the runs shared
    # the cluster (each one's steps ran while the other's were running too).
    assert _max_overlap(spans) == 2, sorted(spans)
    left = [s for s in spans if s[2].startswith("left.")]
    right = [s for s in spans if s[2].startswith("right.")]
    assert min(s for s, _, _ in right) < max(e for _, e, _ in left), sorted(spans)
    assert min(s for s, _, _ in left) < max(e for _, e, _ in right), sorted(spans)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_fails_its_step_cleanly_and_the_next_run_completes(cluster):
    from dagster import AssetKey, DagsterEventType, DagsterRunStatus

    root, timeline, redis = cluster["root"], cluster["timeline"], cluster["redis"]
    env = {**cluster["env"], "DAGSTER_HOME": str(_home(root / "kill-home"))}
    worker_env = {k: env[k] for k in ("AML_CELERY_BROKER", "AML_DATASTORE_ROOT", "TIMELINE")}
    # Two workers of their own on a queue of their own, so the module's workers are untouched.
    victims = [start_worker(root / "kill-workers", n, redis.url, ("killq",), env=worker_env) for n in ("k1", "k2")]
    try:
        wait_ready(redis.url, victims)
        defs = _project(root / "kill", "kill", 2, sleep=6.0, targets={0: "killq", 1: "killq"})
        run_proc = _execute(defs, "kill", env, background=True)
        begun = _wait_for(
            lambda: [f for f in _timeline(timeline, "kill") if f[2] == "start" and f[4] == "k1"], 90, "a step on k1"
        )
        step, script_pid = begun[0][1], int(begun[0][5])
        victims[0].kill()
        _, err = run_proc.communicate(timeout=120)
        assert run_proc.returncode != 0

        with _instance(root / "kill-home") as instance:
            run = instance.get_runs(limit=1)[0]
            assert run.status == DagsterRunStatus.FAILURE
            # Failed by the orchestrator for the lost worker; not by the orphan watch.
            assert int(run.tags["aml/pid"]) == run_proc.pid
            failures = [
                e.dagster_event for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
            ]
            assert [f.step_key for f in failures] == [step]
            message = failures[0].event_specific_data.error.message
            assert "Celery worker 'k1@" in message and "Nothing the step wrote was published" in message
            assert instance.get_latest_materialization_event(AssetKey(f"kill_o{step[1:]}")) is None
            other = "s01" if step == "s00" else "s00"
            assert instance.get_latest_materialization_event(AssetKey(f"kill_o{other[1:]}")) is not None
        # Nothing of the killed step was published: its half-written output is only in its
        # scratch folder (datastore _tmp/, which `aml-assets gc` collects); its script died
        # with the worker.
        partial = [p for p in (root / "datastore").rglob("*") if p.is_file() and b"partial-kill" in p.read_bytes()]
        assert all(p.relative_to(root / "datastore").parts[0] == "_tmp" for p in partial), partial
        _wait_for(lambda: not Path(f"/proc/{script_pid}").exists(), 15, f"the killed step's script {script_pid}")

        # Redis hands the killed worker's unacked message out again (here at once: a 1 s
        # visibility timeout, kombu's own restore). k2 heard the orchestrator revoke the task
        # and would discard it; a worker started since (k3) has not: its claim check drops it.
        victims[1].stop()
        victims.append(start_worker(root / "kill-workers", "k3", redis.url, ("killq",), env=worker_env))
        wait_ready(redis.url, victims[2:])
        app = celery_app(redis.url, visibility_timeout=1)
        time.sleep(1.5)
        with app.connection_for_write() as conn:
            conn.default_channel.qos.restore_visible(num=100)
        _wait_for(lambda: "a redelivered message; it does nothing" in victims[2].log_text(), 30, "k3 to drop it")

        _execute(defs, "kill", env)
        run = _latest_run(root / "kill-home")
        assert run.tags[f"aml/reuse/{step}"] == "computed"
        assert run.tags[f"aml/reuse/{other}"] == "reused"
    finally:
        stop_all(victims)


def test_worker_without_a_broker_says_how_to_name_one(monkeypatch, capsys):
    from aml_assets.cli import main

    monkeypatch.delenv("AML_CELERY_BROKER", raising=False)
    assert main(["worker", "cpucluster", "--concurrency", "1"]) == 2
    assert "no broker. Pass --broker redis://HOST:PORT/0 or set $AML_CELERY_BROKER" in capsys.readouterr().err


def test_worker_command_and_backend_defaults():
    from aml_assets.compute.celery_worker import default_backend, worker_command

    assert default_backend("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/1"
    assert default_backend("redis://:secret@h:1") == "redis://:secret@h:1/1"
    command = worker_command(["cpucluster", "spark01"], 2, "redis://h:1/0", hostname="w1@%h")
    assert command[1:] == ["-m", "aml_assets.cli", "worker", "cpucluster", "spark01", "--concurrency", "2",
                           "--broker", "redis://h:1/0", "--hostname", "w1@%h", "--loglevel", "INFO"]


def test_worker_reads_its_clusters_settings_from_the_definitions_file(tmp_path, monkeypatch):
    """``aml-assets worker -f definitions.py`` imports the project (its folder importable, as
    Dagster does) and takes the broker and Redis's redelivery timeout from the clusters it
    serves: above their longest step timeout. A file that is not there names the fix."""
    from aml_assets.compute.celery_worker import VISIBILITY_MARGIN_SECONDS, _visibility_from
    from aml_assets.errors import AmlAssetsError

    (tmp_path / "targets.py").write_text(
        "from dagster import EnvVar\n"
        "from aml_assets import CeleryCpuCluster, LocalProcessCluster\n"
        "TARGETS = {'cpucluster': CeleryCpuCluster(broker=EnvVar('TEST_BROKER'), default_timeout_seconds=100),\n"
        "           'bigcpu': CeleryCpuCluster(broker=EnvVar('TEST_BROKER'), default_timeout_seconds=900),\n"
        "           'local': LocalProcessCluster()}\n"
    )
    (tmp_path / "definitions.py").write_text(
        "from dagster import Definitions\nfrom targets import TARGETS\ndefs = Definitions(resources=TARGETS)\n"
    )
    monkeypatch.setenv("TEST_BROKER", "redis://127.0.0.1:6390/0")
    monkeypatch.syspath_prepend(str(tmp_path))  # undone after the test (the worker adds it too)
    defs = tmp_path / "definitions.py"
    assert _visibility_from(defs, ["cpucluster"]) == (100 + VISIBILITY_MARGIN_SECONDS, "redis://127.0.0.1:6390/0")
    assert _visibility_from(defs, ["cpucluster", "bigcpu"])[0] == 900 + VISIBILITY_MARGIN_SECONDS
    assert _visibility_from(defs, ["local", "spark01"]) == (None, None)
    with pytest.raises(AmlAssetsError, match="Definitions file .* not found; pass the project's with -f"):
        _visibility_from(tmp_path / "missing.py", ["cpucluster"])
