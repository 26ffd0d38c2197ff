"""Benchmark of the Celery CPU cluster: a 20-step fan-out on 1, 2 and 4 workers.

    python bench/cluster.py                 # 20 steps sleeping 1 s; medians of 3
    python bench/cluster.py --quick         # medians of 1
    python bench/cluster.py --workers 1,2 --reps 5 2>cluster.log   # stdout: the final table only

Every step is a ``PythonScriptStep`` that sleeps ``--sleep`` seconds and writes a tiny output
(``allow_reuse=False``: every run computes every step) on a ``CeleryCpuCluster`` whose
``max_nodes`` is the number of workers; each worker is a real ``aml-assets worker cpucluster
--concurrency 1`` process in its own folder, on a private redis-server. The runs of a repetition
go 1, 2, 4 workers in turn (workers started fresh for each), so machine drift hits all alike.

Two figures per run, both medians:

- the whole command (``dagster job execute``: interpreter start, imports, orchestration, steps);
- the step phase: from the first step's start to the last step's end (Dagster's event log), the
  part more workers can shorten.

Scaling efficiency with W workers = T(1) / (W x T(W)); 1.0 is linear. The issue's target is
>= 0.8 x linear up to 4 workers on this machine's cores: each step also costs the worker CPU
(Dagster's step machinery, the script's interpreter), so on fewer cores than workers the CPU,
not the cluster, caps the figure; the notes give the machine's load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Report,
    bench_session,
    fresh_dir,
    home_template,
    isolated_env,
    log,
    median,
    run_timed,
    spread,
)

TARGET_EFFICIENCY = 0.8
DAGSTER = str(Path(sys.executable).with_name("dagster"))

WRITE_SCRIPT = """\
import sys, time
from pathlib import Path

i, sleep, out = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
time.sleep(sleep)
(out / "value.txt").write_text(i + "\\n")
"""

#: Workers load this file too: everything that shapes the steps is the same on every process.
DEFS = """\
import os
from pathlib import Path

from dagster import EnvVar

from aml_assets import CeleryCpuCluster, LocalDatastore, OutputDataset, Pipeline, PythonScriptStep

code = Path(__file__).resolve().parent / "code"
n, sleep = int(os.environ["BENCH_STEPS"]), float(os.environ["BENCH_SLEEP"])
steps = [
    PythonScriptStep(f"s{i}", "write.py", code, arguments=[str(i), str(sleep), OutputDataset(f"out_{i}")],
                     allow_reuse=False)
    for i in range(n)
]
defs = Pipeline("fan", steps).to_definitions(
    {
        "workspace": LocalDatastore(),
        "cpucluster": CeleryCpuCluster(
            broker=EnvVar("AML_CELERY_BROKER"), max_nodes=int(os.environ.get("BENCH_NODES", "1"))
        ),
    }
)
"""


def step_phase(home: Path) -> float:
    """Seconds from the first step's start to the last step's end in the latest run."""
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        run = instance.get_runs(limit=1)[0]
        starts, ends = [], []
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None or not event.step_key:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                starts.append(entry.timestamp)
            elif event.event_type == DagsterEventType.STEP_SUCCESS:
                ends.append(entry.timestamp)
    return max(ends) - min(starts)


def run_once(folder: Path, env: dict[str, str], workers: int) -> tuple[float, float]:
    """(whole command, step phase) seconds of one run on ``workers`` fresh workers."""
    from tests.support.celery_workers import celery_workers

    run_env = {**env, "BENCH_NODES": str(workers)}
    with celery_workers(folder / "workers", env["AML_CELERY_BROKER"], workers, env=run_env):
        seconds = run_timed(
            [DAGSTER, "job", "execute", "-f", str(folder / "defs.py"), "-j", "fan"],
            folder,
            run_env,
            f"fan-out on {workers} worker(s)",
        )
    return seconds, step_phase(Path(env["DAGSTER_HOME"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=1.0)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated (first: the baseline)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    reps = 1 if args.quick else args.reps
    report = Report()
    what = f"{args.steps} steps sleeping {args.sleep:g} s on {counts} Celery workers, medians of {reps}"
    with bench_session(report, "aml-bench-cluster-", what) as tmp:
        from aml_assets.service.servers import RedisServer

        redis = RedisServer(tmp / "redis").start()
        try:
            folder = fresh_dir(tmp / "project")
            (folder / "code").mkdir()
            (folder / "code" / "write.py").write_text(WRITE_SCRIPT)
            (folder / "defs.py").write_text(DEFS)
            env = isolated_env(
                folder,
                home_template(tmp),
                {"BENCH_STEPS": str(args.steps), "BENCH_SLEEP": str(args.sleep), "AML_CELERY_BROKER": redis.url},
            )
            # A first run warms what every later one reuses (OS caches, compiled modules, the
            # Dagster home's schemas): it is not counted.
            log(f"warm-up run on {max(counts)} worker(s) (not counted)")
            run_once(folder, env, max(counts))
            whole: dict[int, list[float]] = {w: [] for w in counts}
            phase: dict[int, list[float]] = {w: [] for w in counts}
            for rep in range(reps):
                for w in counts:
                    seconds, steps = run_once(folder, env, w)
                    whole[w].append(seconds)
                    phase[w].append(steps)
                    log(f"rep {rep + 1}/{reps}, {w} worker(s): {seconds:.1f} s, step phase {steps:.1f} s")
        finally:
            redis.stop()
        base = counts[0]
        sec = f"{args.steps} steps x {args.sleep:g} s sleep, Celery workers of concurrency 1 (medians of {reps})"
        for w in counts:
            mw, mp = median(whole[w]), median(phase[w])
            report.add(sec, f"{w} worker(s): whole command", f"{mw:.2f} s", f"({spread(whole[w])})")
            report.add(sec, f"{w} worker(s): step phase", f"{mp:.2f} s", f"({spread(phase[w])}; "
                       f"sleep alone {args.steps * args.sleep / w:.1f} s)")
        for w in counts[1:]:
            for label, series in (("whole command", whole), ("step phase", phase)):
                ratio = median(series[base]) / median(series[w])
                efficiency = ratio * base / w
                report.add(
                    sec,
                    f"{w} vs {base}: {label} speedup, efficiency",
                    f"{ratio:.2f}x, {efficiency:.2f}",
                    f"(target >= {TARGET_EFFICIENCY:.1f} x linear)",
                    efficiency >= TARGET_EFFICIENCY if label == "step phase" else None,
                )
        report.notes.append(
            "efficiency = T(base) / (W/base x T(W)); the verdict is on the step phase (the whole "
            "command adds a fixed ~3-5 s of interpreter start and orchestration that no worker "
            "count shortens)"
        )
        report.notes.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')}; redis-server and workers on 127.0.0.1")


if __name__ == "__main__":
    main()
