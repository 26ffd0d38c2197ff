"""A small two-step project (no Spark) written into a test's folder, and a real
``dagster-daemon run`` on a temporary home: shared by the run-API, queue and PostgreSQL tests.

    numbers (source) -> prep (--factor) -> doubled -> total (--offset) -> summed
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import textwrap
import time
from pathlib import Path

from dagster import DagsterInstance

from aml_assets.compute.processes import stop_group
from aml_assets.service.experiment import PipelineRun

REPO = Path(__file__).resolve().parent.parent.parent
DAEMON = REPO / ".venv" / "bin" / "dagster-daemon"

PIPELINE_PY = '''
from pathlib import Path

from aml_assets import (
    LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PipelineParameter,
    PythonScriptStep, TabularDataset,
)

HERE = Path(__file__).resolve().parent


def build_pipeline() -> Pipeline:
    numbers = TabularDataset.from_delimited_files("numbers", "numbers/numbers.csv", seed=HERE / "seed.csv")
    doubled = OutputDataset("doubled", format="csv")
    summed = OutputDataset("summed", format="files").register(description="the total")
    factor = PipelineParameter("factor", 2, min=1, max=100)
    offset = PipelineParameter("offset", 0)
    prep = PythonScriptStep(
        name="prep", script="prep.py", source_directory=HERE / "code", compute_target="cpu",
        arguments=["--input", numbers.as_download("numbers_in"), "--factor", factor, "--out", doubled],
    )
    total = PythonScriptStep(
        name="total", script="total.py", source_directory=HERE / "code", compute_target="cpu",
        arguments=["--input", doubled.as_download("doubled_in"), "--offset", offset, "--out", summed],
    )
    return Pipeline("two_steps", steps=[prep, total])


RESOURCES = {"workspace": LocalDatastore(), "cpu": LocalProcessCluster(max_concurrent_steps=1)}
'''

DEFINITIONS_PY = '''
from two_steps import RESOURCES, build_pipeline

defs = build_pipeline().to_definitions(RESOURCES)
'''

PREP_PY = '''
import argparse, sys
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--input"); p.add_argument("--factor", type=int); p.add_argument("--out")
a = p.parse_args()
rows = Path(a.input).read_text().splitlines()[1:]
with open(Path(a.out) / "data.csv", "w") as fh:
    fh.write("id,value\\n" + "".join(f"{r.split(',')[0]},{int(r.split(',')[1]) * a.factor}\\n" for r in rows))
print(f"prep: multiplied {len(rows)} rows by {a.factor}")
print("prep: note on stderr", file=sys.stderr)
'''

TOTAL_PY = '''
import argparse, sys
from pathlib import Path
from amlrun import Run
p = argparse.ArgumentParser()
p.add_argument("--input"); p.add_argument("--offset", type=int); p.add_argument("--out")
a = p.parse_args()
src = Path(a.input)
rows = ((src / "data.csv") if src.is_dir() else src).read_text().splitlines()[1:]
total = sum(int(r.split(",")[1]) for r in rows) + a.offset
if a.offset == 13:
    sys.exit("total: unlucky offset 13")
(Path(a.out) / "total.txt").write_text(str(total))
Run.get_context().log("total", total)
print(f"total: the sum is {total}")
'''


def write_project(root: Path) -> Path:
    """The two-step project: its pipeline module, definitions, scripts, seed and workspace."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "code").mkdir(exist_ok=True)
    (root / "two_steps.py").write_text(textwrap.dedent(PIPELINE_PY))
    (root / "definitions.py").write_text(textwrap.dedent(DEFINITIONS_PY))
    (root / "code" / "prep.py").write_text(textwrap.dedent(PREP_PY))
    (root / "code" / "total.py").write_text(textwrap.dedent(TOTAL_PY))
    (root / "seed.csv").write_text("id,value\n1,1\n2,2\n3,3\n")
    (root / "workspace.yaml").write_text(
        "load_from:\n  - python_file:\n      relative_path: definitions.py\n      working_directory: .\n"
    )
    return root


def load_pipeline(root: Path):
    """The project's Pipeline object, as a user's script or notebook would build it."""
    spec = importlib.util.spec_from_file_location(f"two_steps_{abs(hash(root))}", root / "two_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_pipeline()


class Daemon:
    """``dagster-daemon run`` on a home, in its own process group (it starts a code server)."""

    def __init__(self, workspace: Path, home: Path):
        self.workspace, self.home = workspace, home
        self.log = home / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def start(self, instance: DagsterInstance, timeout: float = 60.0) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(DAEMON), "run", "-w", str(self.workspace)],
                cwd=self.workspace.parent,
                env={**os.environ, "DAGSTER_HOME": str(self.home)},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited:\n{self.log.read_text()[-3000:]}")
            if "QUEUED_RUN_COORDINATOR" in instance.get_daemon_heartbeats():
                return
            time.sleep(0.25)
        raise RuntimeError(f"dagster-daemon sent no heartbeat in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


def steps_of(run: PipelineRun) -> dict[str, tuple[str, bool | None]]:
    """Each step's (status, reused) of a run."""
    return {s.name: (s.get_status(), s.reused) for s in run.get_steps()}
