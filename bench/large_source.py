"""Deciding a step over a large CSV source: time and peak memory, against DVC on the same change.

    .venv/bin/python bench/large_source.py                   # 1 GB CSV, medians of 3
    .venv/bin/python bench/large_source.py --size-mb 128     # quick smoke run
    .venv/bin/python bench/large_source.py --baseline HEAD --single-line-values
                                            # also the code of a git revision, on a CSV it can read
    .venv/bin/python bench/large_source.py 2>bench.log       # stdout: the final table only

A pipeline of one script step whose input is a generated CSV source (``as_mount``: read in
place); the script only writes a small file, so the step's run costs next to nothing and the
figures are those of deciding. Every measured run is a process of its own (peak memory is per
process: its ``ru_maxrss``): it builds the Definitions, opens a persistent temporary Dagster
instance and executes the job in-process, timing the run and, inside it, our own decisions:
the source's (content hash + statistics) and the step's (fingerprint + reuse decision).

Per repetition, on a fresh datastore, stat cache and instance (the CSV is hard-linked in):
``cold`` (first sighting), ``changed`` (one digit of the CSV changed in place, size unchanged),
``unchanged`` (nothing changed; stat cache and statistics cache warm). After the change the
file's mtime is set an hour back, standing for a file that has sat on disk: the stat cache
rightly re-hashes any file modified less than 2 s before its entry was recorded.

The peer is DVC (its own virtualenv, ``bench/peers.py``): one stage whose dependency is the same
CSV (a hard link: the same bytes, the same change) and whose command is a trivial script;
``dvc repro`` is timed cold, after the change and unchanged, interleaved with our runs so that
machine load hits both alike. Each figure is the median over ``--reps``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # ``bench.peers`` when run as a script

from bench.peers import dvc, dvc_env, dvc_init, dvc_version  # noqa: E402

#: Targets from the issue.
TARGET_RSS_MB = 300
TARGET_CHANGED_OVER_DVC = 1.5
TARGET_UNCHANGED_OWN_S = 0.1

STEP_SCRIPT = """\
import sys
from pathlib import Path

# The dataset is the step's input; deciding whether to run is what is measured, not reading it.
(Path(sys.argv[2]) / "out.txt").write_text(f"input at {sys.argv[1]}\\n")
"""

DVC_SCRIPT = """\
import sys
from pathlib import Path

Path(sys.argv[2]).write_text(f"input at {sys.argv[1]}\\n")
"""

#: One measured run, in a process of its own (argv: work dir). Prints one RESULT line.
DRIVER = r'''
import json, resource, sys, time
started = time.perf_counter()
from pathlib import Path
from dagster import DagsterEventType, DagsterInstance
import aml_assets.pipeline.assets as assets
from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep, TabularDataset
from aml_assets.pipeline.execution import StepExecution

work = Path(sys.argv[1])
source = TabularDataset.from_delimited_files("big", "big/big.csv")
step = PythonScriptStep(name="use", script="use.py", source_directory=work / "code",
                        arguments=[source.as_mount("big_in"), OutputDataset("used")])
defs = Pipeline("large", steps=[step]).to_definitions(
    {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()})
job = defs.resolve_job_def("large")

spent = {"source": 0.0, "step": 0.0, "script": 0.0}
def timing(key, fn):
    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t
    return timed
assets.materialize_source = timing("source", assets.materialize_source)
StepExecution.execute = timing("step", StepExecution.execute)
StepExecution._run_and_publish = timing("script", StepExecution._run_and_publish)

quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
instance = DagsterInstance.local_temp(tempdir=str(work / "dagster"))
ready = time.perf_counter()
result = job.execute_in_process(instance=instance, run_config=quiet, raise_on_error=False)
run_s = time.perf_counter() - ready
if not result.success:
    raise SystemExit("the benchmark's pipeline failed")
meta = {}
for ev in result.all_events:
    if ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
        mat = ev.event_specific_data.materialization
        meta[mat.asset_key.to_user_string()] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
print("RESULT " + json.dumps({
    "run_s": run_s,
    "process_s": time.perf_counter() - started,
    "source_s": spent["source"],
    # The step's own decision: its execute() minus running the script and publishing.
    "step_decision_s": spent["step"] - spent["script"],
    "reused": bool(meta["used"].get("reused")),
    "rows": meta["big"].get("dagster/row_count"),
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "pandas_imported": "pandas" in sys.modules,
}))
'''

#: Where a changed run's memory and time go: one part alone, in a process of its own.
PART = r'''
import json, resource, sys, time
from pathlib import Path
part, path = sys.argv[1], Path(sys.argv[2])
if part == "hash":
    from aml_assets.data.content import StatCache, hash_file
    cache = StatCache(Path(sys.argv[3]) / "stat-cache.sqlite")
    t = time.perf_counter(); hash_file(path, cache); seconds = time.perf_counter() - t
elif part == "stats":
    from aml_assets.data.datasets import tabular_stats
    t = time.perf_counter(); tabular_stats(path, "csv", ",", "big", {}); seconds = time.perf_counter() - t
else:
    import aml_assets.data.datasets, aml_assets.data.content, pyarrow.csv  # imports only
    seconds = 0.0
print("RESULT " + json.dumps({"seconds": seconds, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the final table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_csv(path: Path, size_mb: int, multiline: bool = True) -> int:
    """A CSV of about ``size_mb`` MB with quoted commas, quotes and newlines; returns its rows."""
    lines = []
    for i in range(10_000):
        note = ('"two\nlines"' if multiline else '"one line"', '"with, comma"', '"say ""hi"""', "plain")[i % 4]
        lines.append(f"{i},{(i * 7919) % 100_000 / 7:.4f},name{i % 97},{i % 3 == 0},2021-0{1 + i % 9}-1{i % 10},{note}\n")
    chunk = "".join(lines).encode()
    copies = max(1, size_mb * 2**20 // len(chunk))
    with open(path, "wb") as fh:
        fh.write(b"id,x,name,flag,day,note\n")
        for _ in range(copies):
            fh.write(chunk)
    return copies * len(lines)


def change_one_byte(path: Path, rep: int) -> None:
    """Change one digit of the ``x`` column somewhere in the middle, in place (size unchanged)."""
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2 + rep * 65_537)
        window = fh.read(1 << 16)
        at = window.index(b".") + 1  # the first digit after a decimal point: column x
        offset = fh.tell() - len(window) + at
        fh.seek(offset)
        digit = fh.read(1)
        fh.seek(offset)
        fh.write(str((int(digit) + 1) % 10).encode())
    sit_on_disk(path)


def sit_on_disk(path: Path) -> None:
    """Set the mtime an hour back: a file that has been there a while (see the module doc)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, time.time_ns() - 3600 * 10**9))


class Failed(Exception):
    """A measured command failed; the message is its error output's end."""


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``; (wall seconds, peak RSS in MB of it and its children, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise Failed(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout


def result_line(stdout: str) -> dict:
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise Failed(f"no RESULT line in:\n{stdout[-2000:]}")
    return json.loads(line.removeprefix("RESULT "))


def first_error(failure: Failed) -> str:
    """The root cause's message in a failed run's output (the last ``...Error: ...`` line)."""
    lines = [x.strip() for x in str(failure).splitlines() if "Error: " in x or "Invalid: " in x]
    return (lines[-1] if lines else str(failure).splitlines()[0])[:160]


class Ours:
    """Our pipeline on a fresh datastore, stat cache and instance, run by the code at ``source``."""

    def __init__(self, source: Path, work: Path, csv: Path):
        self.source, self.work = source, work
        (work / "code").mkdir(parents=True)
        (work / "code" / "use.py").write_text(STEP_SCRIPT)
        (work / "dagster").mkdir()
        target = work / "datastore" / "big" / "big.csv"
        target.parent.mkdir(parents=True)
        os.link(csv, target)  # the same inode: the same bytes, the same change
        (work / "driver.py").write_text(DRIVER)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]),
            "AML_DATASTORE_ROOT": str(work / "datastore"),
            "AML_CACHE_DIR": str(work / "cache"),
        }
        self.env.pop("DAGSTER_HOME", None)

    def run(self) -> dict:
        _, _, stdout = run_measured([sys.executable, str(self.work / "driver.py"), str(self.work)],
                                    self.work, self.env)
        return result_line(stdout)


class Dvc:
    """A DVC project with one stage over the same CSV (hard-linked)."""

    def __init__(self, work: Path, csv: Path):
        self.work = work
        dvc_init(work)
        os.link(csv, work / "big.csv")
        (work / "use.py").write_text(DVC_SCRIPT)
        (work / "dvc.yaml").write_text(
            "stages:\n  use:\n"
            f"    cmd: {sys.executable} use.py big.csv out.txt\n"
            "    deps:\n      - big.csv\n      - use.py\n"
            "    outs:\n      - out.txt\n"
        )

    def repro(self) -> dict:
        seconds, rss, _ = run_measured([str(dvc()), "repro", "-q"], self.work, dvc_env())
        return {"run_s": seconds, "maxrss_mb": rss}


def measure_part(part: str, csv: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    _, _, stdout = run_measured([sys.executable, "-c", PART, part, str(csv), str(work)], work, env)
    return result_line(stdout)


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the CSV (default 1024)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported")
    parser.add_argument("--baseline", default=None, help="also measure the code of this git revision")
    parser.add_argument("--single-line-values", action="store_true",
                        help="no quoted newlines in the CSV (code before streaming fails on them past 1 MB)")
    args = parser.parse_args(argv)

    wall, load_start = time.perf_counter(), os.getloadavg()
    log(f"DVC: {dvc_version()}")
    tmp = Path(tempfile.mkdtemp(prefix="aml-bench-large-"))
    try:
        csv = tmp / "big.csv"
        log(f"writing a {args.size_mb} MB CSV")
        rows = write_csv(csv, args.size_mb, multiline=not args.single_line_values)
        sit_on_disk(csv)
        sources = {"this checkout": REPO}
        if args.baseline:
            old = tmp / "baseline-src"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline, "aml_assets", "amlrun"],
                                     cwd=REPO, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            sources[f"baseline {args.baseline}"] = old

        runs: dict[str, dict[str, list[dict]]] = {name: {} for name in [*sources, "dvc"]}
        failures: dict[str, str] = {}
        for rep in range(args.reps):
            ours = {name: Ours(src, tmp / f"rep{rep}" / name.replace(" ", "-"), csv) for name, src in sources.items()}
            peer = Dvc(tmp / f"rep{rep}" / "dvc", csv)
            for case in ("cold", "changed", "unchanged"):
                if case == "changed":
                    change_one_byte(csv, rep)
                for name, o in ours.items():
                    try:
                        r = o.run()
                    except Failed as failure:
                        if name == "this checkout":
                            raise
                        failures[name] = first_error(failure)  # the baseline cannot read the CSV
                        log(f"rep {rep + 1} {case:9} {name}: FAILED: {failures[name]}")
                        continue
                    runs[name].setdefault(case, []).append(r)
                    if r["rows"] != rows or r["reused"] != (case == "unchanged"):
                        raise SystemExit(f"{name} {case}: unexpected result {r} (rows should be {rows})")
                    log(f"rep {rep + 1} {case:9} {name}: run {r['run_s']:.2f} s, source {r['source_s']:.3f} s, "
                        f"step decision {r['step_decision_s']:.3f} s, peak {r['maxrss_mb']:.0f} MB")
                runs["dvc"].setdefault(case, []).append(d := peer.repro())
                log(f"rep {rep + 1} {case:9} dvc repro: {d['run_s']:.2f} s, peak {d['maxrss_mb']:.0f} MB")
            shutil.rmtree(tmp / f"rep{rep}", ignore_errors=True)

        log("parts of a changed run, each alone: hashing the CSV, its statistics, the imports")
        parts = {p: measure_part(p, csv, tmp / f"part-{p}") for p in ("imports", "hash", "stats")}
        size_mb = csv.stat().st_size / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print_table(args, runs, failures, parts, rows, size_mb, load_start, time.perf_counter() - wall)
    return 0


def print_table(args, runs, failures, parts, rows, size_mb, load_start, seconds) -> None:
    ours, peer = runs["this checkout"], runs["dvc"]
    load_end = os.getloadavg()

    def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("OK" if ok else "MISSED")
        print(f"  {label:<52} {value:>22}  {target:<16} {verdict}".rstrip())

    print(f"load average: {' '.join(f'{x:.2f}' for x in load_start)} at start, "
          f"{' '.join(f'{x:.2f}' for x in load_end)} at end; {os.cpu_count()} CPUs")
    print(f"CSV source: {size_mb:.0f} MB, {rows:,} rows; {dvc_version()}; medians of {args.reps}; "
          f"measured in {seconds:.0f} s")
    for case in ("cold", "changed", "unchanged"):
        print(f"\n{case}" + (" (one byte of the CSV changed in place)" if case == "changed" else ""))
        run, d = median(ours[case], "run_s"), median(peer[case], "run_s")
        ratio = run / d
        target = case == "changed"
        row("run, in-process (aml-assets) / dvc repro", f"{run:.2f} s / {d:.2f} s = {ratio:.2f}x",
            f"<= {TARGET_CHANGED_OVER_DVC}x" if target else "", ratio <= TARGET_CHANGED_OVER_DVC if target else None)
        proc = median(ours[case], "process_s")
        row("  whole process incl. Python start, imports (info)", f"{proc:.2f} s = {proc / d:.2f}x")
        own = median(ours[case], "source_s") + median(ours[case], "step_decision_s")
        row("our decisions: source (hash + stats) + step", f"{median(ours[case], 'source_s'):.3f} + "
            f"{median(ours[case], 'step_decision_s'):.3f} s",
            f"<= {TARGET_UNCHANGED_OWN_S} s" if case == "unchanged" else "",
            own <= TARGET_UNCHANGED_OWN_S if case == "unchanged" else None)
        rss = median(ours[case], "maxrss_mb")
        row("peak RSS of the deciding process / of dvc repro", f"{rss:.0f} MB / {median(peer[case], 'maxrss_mb'):.0f} MB",
            f"<= {TARGET_RSS_MB} MB", rss <= TARGET_RSS_MB)
        row("pandas imported by the run", str(any(r["pandas_imported"] for r in ours[case])))
        for name in runs:
            if name.startswith("baseline") and runs[name].get(case):
                b = runs[name][case]
                row(f"{name}: run; source decision; peak RSS",
                    f"{median(b, 'run_s'):.2f} s; {median(b, 'source_s'):.2f} s; {median(b, 'maxrss_mb'):.0f} MB")
    for name, error in failures.items():
        print(f"\n{name} FAILED on this CSV: {error}")
    print("\nparts of a changed run, each alone in a process (this checkout)")
    base = parts["imports"]["maxrss_mb"]
    row("imports only (aml_assets.data, pyarrow.csv): peak RSS", f"{base:.0f} MB")
    row("content hash of the CSV (no stat-cache entry)",
        f"{parts['hash']['seconds']:.2f} s, {parts['hash']['maxrss_mb']:.0f} MB")
    row("statistics (streaming): time, peak RSS", f"{parts['stats']['seconds']:.2f} s, {parts['stats']['maxrss_mb']:.0f} MB",
        f"+{parts['stats']['maxrss_mb'] - base:.0f} MB")
    if parts["hash"]["maxrss_mb"] > TARGET_RSS_MB:
        print("\nnote: hashing maps the whole file into memory (blake3 update_mmap in "
              "aml_assets/data/content.py); the mapped pages count in the process's peak RSS")


if __name__ == "__main__":
    sys.exit(main())
