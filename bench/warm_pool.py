"""Benchmark of warm Spark pools: a cold reference run attached to a warm pool vs starting a JVM.

    .venv/bin/python bench/warm_pool.py                  # 7 runs of each (medians)
    .venv/bin/python bench/warm_pool.py --runs 3         # quicker
    .venv/bin/python bench/warm_pool.py 2>bench.log      # stdout: the final table only

Every run is ``dagster job execute -f definitions.py -j synapse_pipeline`` (what ``make run``
does) in a fresh process, with a fresh ``DAGSTER_HOME`` (initialised like ``make run`` does,
untimed), datastore (``AML_DATASTORE_ROOT``) and cache (``AML_CACHE_DIR``): a cold run, nothing
is reused. The two kinds differ only in ``AML_STATE_DIR``:

* **own JVM** (the baseline): an empty state folder, so ``spark01`` starts its own SparkSession
  in the run's process, as before warm pools;
* **warm**: the state folder of a warm pool started once for ``spark01``
  (``aml-assets pool start spark01 -f definitions.py``; its start time is reported, not part of
  the runs), so ``dataprep`` attaches to it.

``--via warm-runner`` runs both kinds through ``aml-assets run`` on a warm runner started (untimed)
in each fresh home instead: the same command for both again, with Python's imports paid once.

One untimed run of each kind first (page cache, the server's first queries), then the timed
runs, interleaved (warm, own JVM, warm, ...) so that drift hits both alike. Each run's log is
checked for the line that says how ``dataprep`` got its session, so a figure never silently
measures the other kind. The project (definitions, resources, code, data) is a private copy:
edits to the repo during the benchmark do not change what runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

#: Target from the brief: a warm cold run takes at most this fraction of an own-JVM one.
TARGET_WARM_OVER_COLD = 0.4

_STEP_TIME = re.compile(r'Finished execution of step "dataprep" in ([\d.]+)(ms|s)')


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the final table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def copy_project(dest: Path) -> Path:
    """A private copy of the reference project (what `make run` runs)."""
    dest.mkdir()
    shutil.copy(REPO / "definitions.py", dest)
    shutil.copy(REPO / "dagster.yaml", dest)
    for folder in ("resources", "code", "data"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def start_pool(project: Path, state: Path) -> float:
    """Start the warm pool for spark01; returns how long it took."""
    started = time.perf_counter()
    out = subprocess.run(
        [str(BIN / "aml-assets"), "pool", "start", "spark01", "-f", "definitions.py"],
        cwd=project, env={**os.environ, "AML_STATE_DIR": str(state)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"aml-assets pool start failed:\n{out.stdout}{out.stderr}")
    log(f"  {out.stdout.strip()}")
    return time.perf_counter() - started


def stop_pool(project: Path, state: Path) -> None:
    out = subprocess.run(
        [str(BIN / "aml-assets"), "pool", "stop", "spark01"],
        cwd=project, env={**os.environ, "AML_STATE_DIR": str(state)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    log(f"  {(out.stdout + out.stderr).strip()}")


def cold_run(
    project: Path, work: Path, state: Path, kind: str, via: str = "dagster"
) -> tuple[float, float]:
    """One cold run in a fresh process; returns (wall seconds, dataprep step seconds)."""
    work.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(work / "dagster_home"),
        "AML_DATASTORE_ROOT": str(work / "datastore"),
        "AML_CACHE_DIR": str(work / "cache"),
        "AML_STATE_DIR": str(state),
    }
    subprocess.run(
        [sys.executable, "-m", "aml_assets.service.instance", env["DAGSTER_HOME"],
         "--default-config", str(project / "dagster.yaml")],
        env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    if via == "warm-runner":
        command = [str(BIN / "aml-assets"), "run", "-f", "definitions.py", "-j", "synapse_pipeline",
                   "--log-level", "debug"]  # fmt: skip
        subprocess.run([str(BIN / "aml-assets"), "runner", "start"], env=env, check=True,
                       capture_output=True, timeout=300)  # fmt: skip
    else:
        command = [str(BIN / "dagster"), "job", "execute", "-f", "definitions.py", "-j", "synapse_pipeline"]
    try:
        started = time.perf_counter()
        out = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - started
    finally:
        if via == "warm-runner":
            subprocess.run([str(BIN / "aml-assets"), "runner", "stop"], env=env, capture_output=True)
    text = out.stdout + out.stderr
    if via == "warm-runner" and "on the warm runner" not in text:
        raise SystemExit(f"{kind} run did not run on the warm runner:\n{text[-4000:]}")
    expected = "attached to warm Spark pool 'spark01'" if kind == "warm" else "started a SparkSession"
    if out.returncode != 0 or "RUN_SUCCESS" not in text or expected not in text:
        raise SystemExit(f"{kind} run did not do what it measures ({expected!r}):\n{text[-4000:]}")
    match = _STEP_TIME.search(text)
    step = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1) if match else float("nan")
    shutil.rmtree(work, ignore_errors=True)
    return seconds, step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each kind (default 7)")
    parser.add_argument("--via", choices=["dagster", "warm-runner"], default="dagster",
                        help="dagster job execute (default), or aml-assets run on a warm runner")
    args = parser.parse_args(argv)

    wall = time.perf_counter()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="aml-bench-warm-"))
    project = copy_project(tmp / "project")
    warm_state, no_state = tmp / "state", tmp / "no-state"
    runs: dict[str, list[tuple[float, float]]] = {"warm": [], "own JVM": []}
    try:
        log("starting the warm pool for spark01")
        start_seconds = start_pool(project, warm_state)
        log("untimed first runs")
        first_warm = cold_run(project, tmp / "first-warm", warm_state, "warm", args.via)
        first_cold = cold_run(project, tmp / "first-cold", no_state, "own JVM", args.via)
        log(f"  warm {first_warm[0]:.2f} s, own JVM {first_cold[0]:.2f} s")
        for i in range(args.runs):
            for kind, state in (("warm", warm_state), ("own JVM", no_state)):
                runs[kind].append(
                    cold_run(project, tmp / f"run-{i}-{kind.replace(' ', '')}", state, kind, args.via)
                )
            log(
                f"  run {i + 1}/{args.runs}: warm {runs['warm'][-1][0]:.2f} s, own JVM "
                f"{runs['own JVM'][-1][0]:.2f} s (dataprep {runs['warm'][-1][1]:.2f} / "
                f"{runs['own JVM'][-1][1]:.2f} s)"
            )
    finally:
        stop_pool(project, warm_state)
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    def med(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in runs[kind])

    def spread(kind: str) -> str:
        xs = [r[0] for r in runs[kind]]
        return f"(min {min(xs):.2f} / max {max(xs):.2f} s, n={len(xs)})"

    ratio = med("warm", 0) / med("own JVM", 0)
    fastest = min(r[0] for r in runs["warm"]) / min(r[0] for r in runs["own JVM"])
    back_to_back = zip(runs["warm"], runs["own JVM"], strict=True)
    pairs = statistics.median(warm[0] / cold[0] for warm, cold in back_to_back)
    rows = [
        ("cold run of synapse_pipeline, own JVM, median", f"{med('own JVM', 0):.2f} s", spread("own JVM")),
        ("cold run of synapse_pipeline, warm pool, median", f"{med('warm', 0):.2f} s", spread("warm")),
        ("warm / own JVM", f"{ratio:.2f}x",
         f"target <= {TARGET_WARM_OVER_COLD}x  {'OK' if ratio <= TARGET_WARM_OVER_COLD else 'MISSED'}"),
        ("same ratio on the fastest runs (noise check)", f"{fastest:.2f}x", ""),
        ("median of the ratios of back-to-back pairs (noise check)", f"{pairs:.2f}x", ""),
        ("dataprep step alone, own JVM / warm, median",
         f"{med('own JVM', 1):.2f} / {med('warm', 1):.2f} s", ""),
        ("first run after pool start (untimed), warm / own JVM",
         f"{first_warm[0]:.2f} / {first_cold[0]:.2f} s", ""),
        ("aml-assets pool start spark01 (once)", f"{start_seconds:.1f} s", ""),
    ]  # fmt: skip
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(
        "Warm Spark pool: a cold run of the reference pipeline (fresh datastore and instance), "
        + ("dagster job execute" if args.via == "dagster" else "aml-assets run on a warm runner")
    )
    print("-" * 83)
    for label, value, note in rows:
        print(f"  {label:<{w0}}  {value:>{w1}}  {note}".rstrip())
    print()
    print(
        f"  {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; whole benchmark "
        f"{time.perf_counter() - wall:.0f} s; load average (1/5/15 min) "
        f"{' '.join(f'{x:.2f}' for x in load_before)} at start, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} at end"
    )
    if max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1):
        print(
            "  WARNING: the machine was busy (load average above half the CPUs): other processes "
            "inflate and scatter every figure; rerun on a quiet machine"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
