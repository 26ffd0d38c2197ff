"""Benchmark of per-step environments (uv, content-addressed) against plain venv + pip, one run.

    python bench/environments.py              # medians of 3
    python bench/environments.py --quick      # medians of 1
    python bench/environments.py --reps 5 2>env.log   # stdout: the final table only

Three situations, each against the same packages installed the plain way in the same run
(``python -m venv`` then ``pip install -r`` the very lock aml-assets resolved), tools
interleaved rep by rep:

- a small environment (six + attrs), first build of its key: ``resolve`` (uv pip compile,
  recorded) + ``ensure_built`` (uv venv + uv pip sync, published) into an empty environments
  folder, uv's cache warm; against venv + pip with pip's cache warm;
- the same key again (a cached rebuild: what every later step and run pays): ``resolve`` from the
  recorded lock + ``ensure_built`` of an existing key, in process (our own time; target <= 50 ms);
  against ``pip install -r`` into the already complete venv (pip's "already satisfied" check);
- scikit-learn + pandas, first build of the key from a warm uv cache (target <= 5 s), the lock
  already recorded (as on every run after the first); against venv + pip with pip's cache warm.

Before the figures, one warm-up of each fills uv's and pip's caches (the network is not part of
any figure). Everything lives in a temporary directory, deleted at the end; uv's and pip's caches
are the user's own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aml_assets.compute.environments import (  # noqa: E402
    Environment,
    ResolvedEnvironment,
    ensure_built,
    resolve,
)
from bench.common import (  # noqa: E402
    Report,
    bench_session,
    fresh_dir,
    log,
    median,
    spread,
)

SMALL = Environment(pip=("six", "attrs"))
LARGE = Environment(pip=("scikit-learn", "pandas"))
TARGET_CACHED_MS = 50.0
TARGET_LARGE_S = 5.0
CACHED_CALLS = 200


def set_env_dir(folder: Path) -> Path:
    """A fresh, empty environments folder (``AML_ENV_DIR``) and lock records beside it."""
    os.environ["AML_ENV_DIR"] = str(fresh_dir(folder))
    return folder


def ours_first_build(env: Environment, folder: Path, resolve_too: bool) -> tuple[float, ResolvedEnvironment]:
    """Seconds to resolve (or read the recorded lock) and build a key not built yet."""
    set_env_dir(folder)
    if not resolve_too:
        resolve(env)  # records the lock: the build below is what a later run pays
        for built in folder.iterdir():
            if built.name != "locks":
                shutil.rmtree(built)
    start = time.perf_counter()
    resolved = resolve(env)
    python = ensure_built(resolved)
    seconds = time.perf_counter() - start
    if not python.is_file():
        raise SystemExit(f"no interpreter at {python}")
    return seconds, resolved


def ours_cached(env: Environment) -> float:
    """Median seconds of ``resolve`` (recorded lock) + ``ensure_built`` (key exists), in process."""
    times = []
    for _ in range(CACHED_CALLS):
        start = time.perf_counter()
        ensure_built(resolve(env))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pip_venv(folder: Path, lock: str, compile_pyc: bool = True) -> float:
    """``python -m venv`` + ``pip install -r lock`` (plus dagster-pipes, as ours), timed.
    ``compile_pyc=False``: ``--no-compile`` (uv does not compile bytecode at install either)."""
    fresh_dir(folder)
    (folder / "requirements.txt").write_text(lock)
    start = time.perf_counter()
    run([sys.executable, "-m", "venv", str(folder / "venv")])
    pip_install(folder, compile_pyc)
    return time.perf_counter() - start


def pip_install(folder: Path, compile_pyc: bool = True) -> float:
    start = time.perf_counter()
    run([str(folder / "venv" / "bin" / "python"), "-m", "pip", "install", "-q",
         *([] if compile_pyc else ["--no-compile"]),
         "--disable-pip-version-check", "-r", str(folder / "requirements.txt")])
    return time.perf_counter() - start


def run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def with_runtime(resolved: ResolvedEnvironment) -> str:
    return resolved.lock.rstrip("\n") + "\n" + "".join(f"{r}\n" for r in resolved.runtime)


def bench(tmp: Path, reps: int) -> dict[str, list[float]]:
    s: dict[str, list[float]] = {k: [] for k in (
        "small/ours", "small/pip", "cached/ours", "cached/pip", "large/ours", "large/pip",
        "large/ours+resolve", "large/pip-no-compile",
    )}
    log("warm-up: filling uv's and pip's caches (six, attrs, scikit-learn, pandas)")
    _, small = ours_first_build(SMALL, tmp / "envs", resolve_too=True)
    _, large = ours_first_build(LARGE, tmp / "envs", resolve_too=True)
    pip_venv(tmp / "pip", with_runtime(small))
    pip_venv(tmp / "pip", with_runtime(large))
    for rep in range(reps):
        seconds, _ = ours_first_build(SMALL, tmp / "envs", resolve_too=True)
        s["small/ours"].append(seconds)
        s["small/pip"].append(pip_venv(tmp / "pip", with_runtime(small)))
        s["cached/ours"].append(ours_cached(SMALL))
        s["cached/pip"].append(pip_install(tmp / "pip"))
        seconds, _ = ours_first_build(LARGE, tmp / "envs", resolve_too=False)
        s["large/ours"].append(seconds)
        seconds, _ = ours_first_build(LARGE, tmp / "envs", resolve_too=True)
        s["large/ours+resolve"].append(seconds)
        s["large/pip"].append(pip_venv(tmp / "pip", with_runtime(large)))
        s["large/pip-no-compile"].append(pip_venv(tmp / "pip", with_runtime(large), compile_pyc=False))
        log(f"  rep {rep + 1}: " + "; ".join(f"{k} {v[-1]:.3f}" for k, v in s.items()) + " s")
    return s


def report_series(report: Report, s: dict[str, list[float]], reps: int) -> None:
    m = {k: median(v) for k, v in s.items()}
    sec = f"small environment (six + attrs), first build of its key, median of {reps}"
    report.add(sec, "aml-assets: resolve + uv build + publish", f"{m['small/ours']:.2f} s", f"({spread(s['small/ours'])})")
    report.add(sec, "python -m venv + pip install", f"{m['small/pip']:.2f} s", f"({spread(s['small/pip'])})")
    report.add(sec, "aml-assets / venv+pip", f"{m['small/ours'] / m['small/pip']:.3f}x")

    sec = f"cached rebuild of the same key (median of {CACHED_CALLS} calls per rep, median of {reps})"
    ours_ms = m["cached/ours"] * 1000
    report.add(sec, "aml-assets: resolve (recorded lock) + ensure_built", f"{ours_ms:.2f} ms",
               f"target <= {TARGET_CACHED_MS:.0f} ms", ours_ms <= TARGET_CACHED_MS)
    report.add(sec, "pip install -r into the complete venv (all satisfied)", f"{m['cached/pip'] * 1000:.0f} ms",
               f"({spread(s['cached/pip'])})")
    report.add(sec, "aml-assets / pip", f"{m['cached/ours'] / m['cached/pip']:.4f}x")

    sec = f"scikit-learn + pandas from a warm cache, median of {reps}"
    report.add(sec, "aml-assets: build from the recorded lock", f"{m['large/ours']:.2f} s",
               f"target <= {TARGET_LARGE_S:.0f} s", m["large/ours"] <= TARGET_LARGE_S)
    report.add(sec, "aml-assets: resolve (uv) + build", f"{m['large/ours+resolve']:.2f} s",
               f"({spread(s['large/ours+resolve'])})")
    report.add(sec, "python -m venv + pip install", f"{m['large/pip']:.2f} s", f"({spread(s['large/pip'])})")
    report.add(sec, "python -m venv + pip install --no-compile", f"{m['large/pip-no-compile']:.2f} s",
               f"({spread(s['large/pip-no-compile'])})")
    report.add(sec, "aml-assets (recorded lock) / venv+pip", f"{m['large/ours'] / m['large/pip']:.3f}x")
    report.add(sec, "aml-assets (recorded lock) / venv+pip --no-compile",
               f"{m['large/ours'] / m['large/pip-no-compile']:.3f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="repetitions per median (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)

    from importlib.metadata import version

    report = Report()
    with bench_session(report, "aml-bench-envs-", f"{reps} repetitions") as tmp:
        report_series(report, bench(tmp, reps), reps)
        report.notes.append(
            f"uv {version('uv')}, pip {version('pip')}; both install the same pinned lock plus "
            "dagster-pipes; uv hard-links from its cache, pip copies from its wheel cache; "
            "venv+pip includes ensurepip (what `python -m venv` costs) and pip's index queries; pip "
            "compiles bytecode by default, uv does not (first imports compile it, once per environment)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
