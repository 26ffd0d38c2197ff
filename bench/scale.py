"""Benchmark of fan-out width: N trivial script steps, against DVC and Dagster's floor, one run.

    python bench/scale.py                      # N = 5, 20, 50; medians of 5
    python bench/scale.py --quick              # N = 5, 20; medians of 2; 8 sleeping steps
    python bench/scale.py --sizes 5,50 --reps 3 2>scale.log   # stdout: the final table only

Every figure is the wall-clock time of one whole command, as a user types it (interpreter start,
imports, instance, steps), the median of ``--reps`` repetitions; the series compared with each
other are interleaved run by run so that machine drift hits them alike:

- aml-assets: a pipeline of N independent ``PythonScriptStep``s (each writes a tiny file to its
  ``OutputDataset``) through ``dagster job execute -f defs.py -j fan``, sequential
  (``to_definitions(resources)``) and ``parallel=True`` (``LocalProcessCluster(
  max_concurrent_steps=2)``): a cold run (fresh datastore, caches and Dagster home: nothing to
  reuse), then a fully reused rerun;
- DVC: a ``dvc.yaml`` of the same N stages running the same script, ``dvc repro`` cold, then
  again (nothing changed: a no-op);
- aml-assets on the warm runner: the sequential pipeline through ``aml-assets run`` on a home set
  up as ``make run`` sets it up (the project's dagster.yaml: its faster event log) with
  ``aml-assets runner start`` done before the figures;
- Dagster's floor: a job of N no-op assets (no aml-assets) through the same CLI and the same
  in-process executor as the sequential job;
- the cost of one more reused step: the slope of the reused figures between the smallest and the
  largest N (the sequential one is issue 12's "marginal reused step", target <= 30 ms);
- 20 steps that each sleep 1 s (``allow_reuse=False``): ``parallel=True`` with
  ``max_concurrent_steps=4`` against sequential.

Everything lives in a temporary directory, deleted at the end. DVC is installed on first use
into the benchmarks' own environment (bench/peers.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Report,
    WarmRunner,
    aml_run_logged,
    bench_session,
    dagster_execute,
    dagster_execute_logged,
    dvc_project,
    dvc_repro,
    fresh_dir,
    home_template,
    isolated_env,
    log,
    median,
    reused_steps,
    spread,
    write_floor,
)

#: Targets from the brief (issue 12).
TARGET_PARALLEL_OVER_SEQUENTIAL = 1.2
TARGET_SEQUENTIAL_OVER_DVC = 2.0
TARGET_SLEEP_SPEEDUP = 3.0
TARGET_REUSED_STEP_S = 0.030

SLEEP_STEPS, SLEEP_SECONDS, SLEEP_LIMIT = 20, 1.0, 4

#: One script for every step (aml-assets) and stage (DVC): ``write.py I SLEEP OUT_DIR``.
WRITE_SCRIPT = """\
import sys, time
from pathlib import Path

i, sleep, out = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
time.sleep(sleep)
out.mkdir(parents=True, exist_ok=True)
(out / "value.txt").write_text(i + "\\n")
"""

#: The aml-assets project; the shape comes from the environment so one file serves every variant.
DEFS = """\
import os
from pathlib import Path

from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep

code = Path(__file__).resolve().parent / "code"
n, sleep = int(os.environ["BENCH_STEPS"]), float(os.environ["BENCH_SLEEP"])
steps = [
    PythonScriptStep(
        f"s{i}", "write.py", code, arguments=[str(i), str(sleep), OutputDataset(f"out_{i}")],
        allow_reuse=sleep == 0,
    )
    for i in range(n)
]
defs = Pipeline("fan", steps).to_definitions(
    {
        "workspace": LocalDatastore(),
        "cpucluster": LocalProcessCluster(max_concurrent_steps=int(os.environ["BENCH_LIMIT"])),
    },
    parallel=os.environ["BENCH_PARALLEL"] == "1",
)
"""


def aml_project(
    folder: Path,
    template: Path,
    n: int,
    parallel: bool,
    limit: int = 2,
    sleep: float = 0.0,
    project_config: bool = False,
) -> tuple[Path, dict[str, str]]:
    """A fresh aml-assets project of ``n`` steps: definitions file and isolated environment."""
    fresh_dir(folder)
    (folder / "code").mkdir()
    (folder / "code" / "write.py").write_text(WRITE_SCRIPT)
    (folder / "defs.py").write_text(DEFS)
    env = isolated_env(
        folder,
        template,
        {
            "BENCH_STEPS": str(n),
            "BENCH_SLEEP": str(sleep),
            "BENCH_LIMIT": str(limit),
            "BENCH_PARALLEL": "1" if parallel else "0",
        },
        project_config=project_config,
    )
    return folder / "defs.py", env


def dvc_fanout(folder: Path, n: int) -> Path:
    """A fresh DVC project of ``n`` independent stages running the same script."""
    fresh_dir(folder)
    (folder / "write.py").write_text(WRITE_SCRIPT)
    stages = "".join(
        f"  s{i}:\n    cmd: {sys.executable} write.py {i} 0 out/s{i}\n"
        f"    deps: [write.py]\n    outs: [out/s{i}]\n"
        for i in range(n)
    )
    return dvc_project(folder, "stages:\n" + stages)


def reused_run(
    defs: Path, env: dict[str, str], n: int, what: str, report: Report, warm: bool = False
) -> float:
    """A rerun that should reuse all ``n`` steps, timed; a note in the table if it did not."""
    run = aml_run_logged if warm else dagster_execute_logged
    seconds, console = run(defs, "fan", env, what)
    if warm and "on the warm runner" not in console:
        report.notes.append(f"WARNING: {what}: did not run on the warm runner")
    if reused_steps(console) != n:
        report.notes.append(
            f"WARNING: {what}: {reused_steps(console)} of {n} steps said they were reused"
        )
    return seconds


def bench_size(
    report: Report, tmp: Path, template: Path, n: int, reps: int
) -> dict[str, list[float]]:
    """Cold and fully reused runs of N steps: aml sequential, aml parallel, DVC; the floor."""
    series: dict[str, list[float]] = {
        k: []
        for k in ("seq_cold", "par_cold", "warm_cold", "dvc_cold", "seq", "par", "warm", "dvc", "floor")
    }
    floor_defs, floor_env = write_floor(tmp / f"n{n}" / "floor", n, "fan", template)
    dagster_execute(floor_defs, "floor", floor_env, f"floor N={n} (warm-up)")
    for rep in range(reps):
        seq_defs, seq_env = aml_project(tmp / f"n{n}" / "seq", template, n, parallel=False)
        par_defs, par_env = aml_project(tmp / f"n{n}" / "par", template, n, parallel=True)
        warm_defs, warm_env = aml_project(
            tmp / f"n{n}" / "warm", template, n, parallel=False, project_config=True
        )
        dvc_dir = dvc_fanout(tmp / f"n{n}" / "dvc", n)
        with WarmRunner(warm_env):
            series["seq_cold"].append(dagster_execute(seq_defs, "fan", seq_env, f"sequential N={n}"))
            series["par_cold"].append(dagster_execute(par_defs, "fan", par_env, f"parallel N={n}"))
            series["warm_cold"].append(
                aml_run_logged(warm_defs, "fan", warm_env, f"warm runner N={n}")[0]
            )
            series["dvc_cold"].append(dvc_repro(dvc_dir, f"dvc repro N={n}"))
            series["floor"].append(dagster_execute(floor_defs, "floor", floor_env, f"floor N={n}"))
            series["seq"].append(reused_run(seq_defs, seq_env, n, f"sequential rerun N={n}", report))
            series["par"].append(reused_run(par_defs, par_env, n, f"parallel rerun N={n}", report))
            series["warm"].append(
                reused_run(warm_defs, warm_env, n, f"warm runner rerun N={n}", report, warm=True)
            )
            series["dvc"].append(dvc_repro(dvc_dir, f"dvc repro (no-op) N={n}"))
        log(
            f"  N={n} rep {rep + 1}: cold seq {series['seq_cold'][-1]:.2f} par "
            f"{series['par_cold'][-1]:.2f} dvc {series['dvc_cold'][-1]:.2f} | reused seq "
            f"{series['seq'][-1]:.2f} par {series['par'][-1]:.2f} warm {series['warm'][-1]:.2f} "
            f"dvc {series['dvc'][-1]:.2f} "
            f"| floor {series['floor'][-1]:.2f} s"
        )
    return series


def report_size(report: Report, n: int, s: dict[str, list[float]]) -> None:
    sec = f"N = {n} independent trivial steps (whole command, median of {len(s['seq'])})"
    m = {k: median(v) for k, v in s.items()}
    report.add(sec, "cold: aml sequential", f"{m['seq_cold']:.2f} s", f"({spread(s['seq_cold'])})")
    report.add(
        sec,
        "cold: aml parallel (2 at once)",
        f"{m['par_cold']:.2f} s",
        f"({spread(s['par_cold'])})",
    )
    report.add(
        sec, "cold: aml run, warm runner", f"{m['warm_cold']:.2f} s", f"({spread(s['warm_cold'])})"
    )
    report.add(sec, "cold: dvc repro", f"{m['dvc_cold']:.2f} s", f"({spread(s['dvc_cold'])})")
    report.add(sec, "reused: aml sequential", f"{m['seq']:.2f} s", f"({spread(s['seq'])})")
    report.add(sec, "reused: aml parallel", f"{m['par']:.2f} s", f"({spread(s['par'])})")
    report.add(sec, "reused: aml run, warm runner", f"{m['warm']:.2f} s", f"({spread(s['warm'])})")
    report.add(sec, "reused: dvc repro (no-op)", f"{m['dvc']:.2f} s", f"({spread(s['dvc'])})")
    report.add(sec, "floor: no-op N-asset job", f"{m['floor']:.2f} s", f"({spread(s['floor'])})")
    report.add(
        sec,
        "reused parallel / reused sequential",
        f"{m['par'] / m['seq']:.2f}x",
        f"target <= {TARGET_PARALLEL_OVER_SEQUENTIAL}x",
        m["par"] / m["seq"] <= TARGET_PARALLEL_OVER_SEQUENTIAL,
    )
    report.add(
        sec,
        "reused sequential / dvc no-op",
        f"{m['seq'] / m['dvc']:.2f}x",
        f"target <= {TARGET_SEQUENTIAL_OVER_DVC}x",
        m["seq"] / m["dvc"] <= TARGET_SEQUENTIAL_OVER_DVC,
    )
    report.add(
        sec,
        "reused warm runner / dvc no-op",
        f"{m['warm'] / m['dvc']:.2f}x",
        f"target <= {TARGET_SEQUENTIAL_OVER_DVC}x",
        m["warm"] / m["dvc"] <= TARGET_SEQUENTIAL_OVER_DVC,
    )
    report.add(sec, "reused sequential / floor", f"{m['seq'] / m['floor']:.2f}x")
    report.add(sec, "cold sequential / dvc cold", f"{m['seq_cold'] / m['dvc_cold']:.2f}x")


def report_slopes(report: Report, by_size: dict[int, dict[str, list[float]]]) -> None:
    small, large = min(by_size), max(by_size)
    sec = f"one more fully reused step (slope of medians, N = {small} -> {large})"

    def slope(key: str, stat=median) -> float:
        return (stat(by_size[large][key]) - stat(by_size[small][key])) / (large - small)

    report.add(
        sec,
        "aml sequential",
        f"{slope('seq') * 1000:.1f} ms",
        f"target <= {TARGET_REUSED_STEP_S * 1000:.0f} ms",
        slope("seq") <= TARGET_REUSED_STEP_S,
    )
    report.add(
        sec,
        "aml run, warm runner (sequential)",
        f"{slope('warm') * 1000:.1f} ms",
        f"target <= {TARGET_REUSED_STEP_S * 1000:.0f} ms",
        slope("warm") <= TARGET_REUSED_STEP_S,
    )
    for key, label in (
        ("par", "aml parallel"),
        ("dvc", "dvc repro"),
        ("floor", "floor (no-op asset)"),
    ):
        report.add(sec, label, f"{slope(key) * 1000:.1f} ms")
    report.add(
        sec,
        "aml sequential - floor (aml's own share)",
        f"{(slope('seq') - slope('floor')) * 1000:.1f} ms",
    )
    report.add(
        sec,
        "aml sequential, fastest runs (noise check)",
        f"{slope('seq', min) * 1000:.1f} ms",
        f"(floor {slope('floor', min) * 1000:.1f} ms)",
    )


def bench_sleep(report: Report, tmp: Path, template: Path, reps: int, steps: int) -> None:
    """``steps`` steps sleeping 1 s, never reused: parallel (4 at once) against sequential."""
    seq_defs, seq_env = aml_project(tmp / "sleep-seq", template, steps, False, 1, SLEEP_SECONDS)
    par_defs, par_env = aml_project(
        tmp / "sleep-par", template, steps, True, SLEEP_LIMIT, SLEEP_SECONDS
    )
    seqs, pars = [], []
    for rep in range(reps):
        seqs.append(dagster_execute(seq_defs, "fan", seq_env, "sleep fan-out, sequential"))
        pars.append(dagster_execute(par_defs, "fan", par_env, "sleep fan-out, parallel"))
        log(
            f"  sleep fan-out rep {rep + 1}: sequential {seqs[-1]:.2f} s, parallel {pars[-1]:.2f} s"
        )
    sec = f"{steps} steps sleeping {SLEEP_SECONDS:g} s each, allow_reuse=False (median of {reps})"
    speedup = median(seqs) / median(pars)
    report.add(sec, "sequential", f"{median(seqs):.2f} s", f"({spread(seqs)})")
    report.add(
        sec,
        f"parallel, max_concurrent_steps={SLEEP_LIMIT}",
        f"{median(pars):.2f} s",
        f"({spread(pars)})",
    )
    report.add(
        sec,
        "speed-up parallel over sequential",
        f"{speedup:.2f}x",
        f"target >= {TARGET_SLEEP_SPEEDUP}x",
        speedup >= TARGET_SLEEP_SPEEDUP,
    )
    report.add(
        sec,
        "ideal",
        f"{steps / SLEEP_LIMIT * SLEEP_SECONDS:.0f} s of sleep",
        f"({steps * SLEEP_SECONDS:.0f} s sequential)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="fan-out widths (default 5,20,50)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per median (default 5)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: sizes 5,20, 2 repetitions, 8 sleeping steps",
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in (args.sizes or ("5,20" if args.quick else "5,20,50")).split(",")]
    reps = args.reps or (2 if args.quick else 5)
    sleep_steps = 8 if args.quick else SLEEP_STEPS

    from bench.peers import dvc_version

    report = Report()
    with bench_session(report, "aml-bench-scale-", f"sizes {sizes}, {reps} repetitions") as tmp:
        template = home_template(tmp)
        by_size = {}
        for n in sizes:
            log(f"N = {n}")
            by_size[n] = bench_size(report, tmp, template, n, reps)
            report_size(report, n, by_size[n])
        if len(sizes) > 1:
            report_slopes(report, by_size)
        log(f"sleep fan-out: {sleep_steps} steps")
        bench_sleep(report, tmp, template, reps, sleep_steps)
        report.notes.append(
            f"DVC {dvc_version()}; aml parallel = to_definitions(..., parallel=True) with "
            "LocalProcessCluster(max_concurrent_steps=2); floor = Dagster asset job of N no-op "
            "assets, in-process executor"
        )
        report.notes.append(
            "cold: fresh datastore, stat cache and Dagster home (its storage created beforehand); "
            "reused: the same command again with nothing changed"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
