"""parallel=True: independent steps run at once, at most max_concurrent_steps per CPU cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

DEFS = """
import os
from pathlib import Path
from aml_assets import LocalDatastore, LocalProcessCluster, OutputDataset, Pipeline, PythonScriptStep

code = Path(__file__).parent / "code"
timeline = os.environ["TIMELINE"]
steps = [
    PythonScriptStep(name, "work.py", code, arguments=[name, timeline, OutputDataset(f"{name}_out")], allow_reuse=False)
    for name in ("left", "right")
]
defs = Pipeline("wide", steps).to_definitions(
    {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=int(os.environ["LIMIT"]))},
    parallel=True,
)
"""

WORK = """
import sys, time
from pathlib import Path
name, timeline, out = sys.argv[1:4]
with open(timeline, "a") as fh:
    fh.write(f"{name} start {time.time()}\\n")
time.sleep(2.0)
Path(out, "done.txt").write_text(name)
with open(timeline, "a") as fh:
    fh.write(f"{name} end {time.time()}\\n")
"""


def _run(tmp_path: Path, limit: int) -> dict[str, tuple[float, float]]:
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "work.py").write_text(WORK)
    (tmp_path / "wide_defs.py").write_text(DEFS)
    home = tmp_path / f"home{limit}"
    home.mkdir()
    timeline = tmp_path / f"timeline{limit}.txt"
    env = {**os.environ, "DAGSTER_HOME": str(home), "LIMIT": str(limit), "TIMELINE": str(timeline)}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-f", str(tmp_path / "wide_defs.py"), "-j", "wide"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    spans: dict[str, list[float]] = {}
    for line in timeline.read_text().splitlines():
        name, _, t = line.split()
        spans.setdefault(name, []).append(float(t))
    return {k: (v[0], v[1]) for k, v in spans.items()}


def _overlap(spans) -> bool:
    (a0, a1), (b0, b1) = spans["left"], spans["right"]
    return a0 < b1 and b0 < a1


def test_cpu_cluster_limits_how_many_steps_run_at_once(tmp_path):
    assert _overlap(_run(tmp_path, limit=2)), "two slots: the independent steps run together"
    assert not _overlap(_run(tmp_path, limit=1)), "one slot: they take turns"
