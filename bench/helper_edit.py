"""How many steps rerun after a helper edit: this checkout against the previous release's rule.

A 22-step pipeline (one prep step, a fan-out of 20 script steps sharing one source directory
with a helper module that half of them import, one aggregator). After a comment-only edit of
the helper and after a real edit, count the steps that reran and time the run. The baseline is
the code of ``--baseline REV`` (default: the last commit before the import-closure change),
extracted with ``git archive`` and run the same way in the same session, so both figures come
from one machine at one time.

    python bench/helper_edit.py [--baseline f11576f] [--steps 20] [--reps 3]

Each figure is the median of ``--reps`` repetitions (fresh datastore and instance each time),
baseline and this checkout interleaved so that machine load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DRIVER = r'''
import json, sys, time
from pathlib import Path
from dagster import DagsterEventType, instance_for_test
from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep

root = Path(sys.argv[1]); n = int(sys.argv[2])
code = root / "fan"; code.mkdir(parents=True)
(code / "helpers.py").write_text("# shared helper\nVALUE = 1\n")
(code / "prep.py").write_text("import sys\nfrom pathlib import Path\n(Path(sys.argv[1]) / 'p.txt').write_text('prep')\n")
body = ("import sys\nfrom pathlib import Path\n{imp}\n"
        "prep = next(Path(sys.argv[1]).iterdir()).read_text()\n"
        "(Path(sys.argv[2]) / 'v.txt').write_text(f'{{prep}}-{i}-{{VALUE}}')\n")
prepared = OutputDataset("prepared")
steps = [PythonScriptStep(name="prep", script="prep.py", source_directory=code, arguments=[prepared])]
outs = []
for i in range(n):
    (code / f"s{i}.py").write_text(body.format(imp="from helpers import VALUE" if i % 2 == 0 else "VALUE = 1", i=i))
    outs.append(OutputDataset(f"o{i}"))
    steps.append(PythonScriptStep(name=f"s{i}", script=f"s{i}.py", source_directory=code,
                                  arguments=[prepared.as_download(f"p{i}"), outs[-1]]))
(code / "aggregate.py").write_text("import sys\nfrom pathlib import Path\n*ins, out = sys.argv[1:]\n"
    "(Path(out) / 'all.txt').write_text(''.join(next(Path(p).iterdir()).read_text() for p in ins))\n")
steps.append(PythonScriptStep(name="aggregate", script="aggregate.py", source_directory=code,
                              arguments=[*(o.as_download() for o in outs), OutputDataset("total")]))
defs = Pipeline("fan", steps=steps).to_definitions(
    {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=2)})
job = defs.resolve_job_def("fan")

def run(instance):
    started = time.perf_counter()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    seconds = time.perf_counter() - started
    assert result.success
    reran = 0
    for ev in result.all_events:
        if ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            meta = ev.event_specific_data.materialization.metadata
            if "reused" in meta and not meta["reused"].value:
                reran += 1
    return {"reran": reran, "seconds": round(seconds, 2)}

with instance_for_test() as instance:
    out = {"cold": run(instance)}
    (code / "helpers.py").write_text("# shared helper, reworded\n\nVALUE  =  1  # same value\n")
    out["comment_edit"] = run(instance)
    (code / "helpers.py").write_text("VALUE = 2\n")
    out["helper_edit"] = run(instance)
print("RESULT " + json.dumps(out))
'''


def measure(source_root: Path, steps: int, work: Path) -> dict:
    """Run the driver against the aml_assets package found at ``source_root``."""
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(source_root), os.environ.get("PYTHONPATH", "")]),
        "AML_DATASTORE_ROOT": str(work / "datastore"),
        "AML_CACHE_DIR": str(work / "cache"),
    }
    env.pop("DAGSTER_HOME", None)
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    out = subprocess.run(
        [sys.executable, str(driver), str(work / "project"), str(steps)],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"driver failed under {source_root}:\n{out.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def _medians(results: list[dict]) -> dict:
    return {
        case: {
            key: statistics.median(r[case][key] for r in results) for key in ("reran", "seconds")
        }
        for case in results[0]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="f11576f", help="git revision to compare with")
    parser.add_argument("--steps", type=int, default=20, help="fan-out width (default 20)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aml-bench-helper-") as tmp:
        tmp = Path(tmp)
        old = tmp / "baseline-src"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline, "aml_assets", "amlrun"],
                                 cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        started = time.perf_counter()
        befores, afters = [], []
        for rep in range(args.reps):
            befores.append(measure(old, args.steps, tmp / f"before{rep}"))
            afters.append(measure(REPO, args.steps, tmp / f"after{rep}"))
        before, after = _medians(befores), _medians(afters)
        total = args.steps + 2
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (medians of {args.reps})")
        print(f"{total}-step pipeline, helper imported by {args.steps // 2} of {args.steps} fan-out steps")
        print(f"{'':26}{'baseline ' + args.baseline:>22}{'this checkout':>18}")
        for case in ("cold", "comment_edit", "helper_edit"):
            b, a = before[case], after[case]
            print(f"{case + ': steps rerun':26}{b['reran']:>22g}{a['reran']:>18g}")
            ratio = a["seconds"] / b["seconds"] if b["seconds"] else float("nan")
            print(f"{case + ': seconds':26}{b['seconds']:>22.2f}{a['seconds']:>18.2f}   ratio {ratio:.2f}")
        print(f"(measured in {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
