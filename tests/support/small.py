"""A small, Spark-free pipeline for step-runner tests: one script step writing one output.

The script is deliberately named ``copy.py``, like a stdlib module: the launcher must still work.
"""

from __future__ import annotations

from pathlib import Path

from dagster import Definitions

from aml_assets import (
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineParameter,
    PythonScriptStep,
    TabularDataset,
)

WRITE_SCRIPT = """
import argparse, os, sys, time
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--input"); p.add_argument("--out"); p.add_argument("--mode", default="ok")
p.add_argument("--pidfile", default=""); p.add_argument("--sleep", type=float, default=0.0)
a = p.parse_args()
if a.pidfile:
    Path(a.pidfile).write_text(str(os.getpid()))
rows = Path(a.input).read_text().splitlines()
out = Path(a.out) / "data.csv"
with open(out, "w") as fh:
    fh.write(rows[0] + "\\n")
    for i, row in enumerate(rows[1:]):
        fh.write(row + "\\n")
        fh.flush()
        if a.mode == "fail" and i == 1:
            print("boom: bad row 2", file=sys.stderr)
            sys.exit(3)
        if a.sleep:
            time.sleep(a.sleep / len(rows))
print(f"copied {len(rows) - 1} rows")
"""


def write_project(root: Path) -> Path:
    """Create the small project's script and seed CSV under ``root``."""
    code = root / "small_code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "copy.py").write_text(WRITE_SCRIPT)
    (root / "seed.csv").write_text("id,value\n" + "".join(f"{i},{i * i}\n" for i in range(20)))
    return code


def small_pipeline(
    root: Path,
    mode: str = "ok",
    pidfile: str = "",
    sleep: float = 0.0,
    allow_reuse: bool = True,
    seed: bool = True,
    source_path: str = "numbers/numbers.csv",
    checks: list | None = None,
    source_checks: list | None = None,
) -> Pipeline:
    """source CSV -> copy step -> registered 'copied' dataset."""
    code = write_project(root) if not (root / "small_code").exists() else root / "small_code"
    source = TabularDataset.from_delimited_files(
        "numbers", source_path, seed=root / "seed.csv" if seed else None, checks=source_checks
    )
    copied = OutputDataset("copied", format="csv").register(description="copy of numbers", checks=checks)
    step = PythonScriptStep(
        name="copy",
        script="copy.py",
        source_directory=code,
        arguments=[
            "--input", source.as_download("numbers_in"), "--out", copied,
            "--mode", PipelineParameter("mode", mode), "--pidfile", pidfile, "--sleep", str(sleep),
        ],
        allow_reuse=allow_reuse,
    )
    return Pipeline("small", steps=[step])


def small_defs(root: Path, **kw) -> Definitions:
    """Definitions of the small pipeline on the default local datastore."""
    return small_pipeline(root, **kw).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=2)}
    )
