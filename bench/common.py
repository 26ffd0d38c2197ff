"""Helpers shared by the benchmarks: timing, isolated homes, the table, the frame of a run.

Every timed command is a whole CLI invocation (``dagster job execute``, ``dvc repro``,
``python script.py``) in a subprocess, so interpreter start and imports are part of each figure,
as they are for a user typing the command.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parent.parent
DAGSTER = Path(sys.executable).with_name("dagster")

#: Written into every temporary DAGSTER_HOME: no telemetry (network and disk time in a figure).
DAGSTER_YAML = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the final table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
    return f"min {min(xs):.2f} / max {max(xs):.2f} s, n={len(xs)}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def home_template(folder: Path) -> Path:
    """A Dagster home with its storage created (``dagster instance migrate``), to copy from.

    A first run in an empty home spends ~0.3 s creating SQLite schemas; copying a prepared home
    keeps that out of every "cold" figure (cold means: nothing to reuse, not a new instance).
    """
    home = folder / "dagster-home-template"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    run_timed([str(DAGSTER), "instance", "migrate"], folder, env, "dagster instance migrate")
    return home


AML = Path(sys.executable).with_name("aml-assets")


def project_yaml(home: Path) -> str:
    """The project's own dagster.yaml as ``make run`` installs it in ``home`` (its event log
    storage included), telemetry off."""
    from aml_assets.service.instance import home_config

    return home_config((REPO / "dagster.yaml").read_text(), home)


def isolated_env(
    root: Path,
    template: Path | None = None,
    extra: Mapping[str, str] | None = None,
    project_config: bool = False,
) -> dict[str, str]:
    """Environment for one project: its own Dagster home (a copy of ``template``), datastore
    and caches. ``project_config``: the home uses the project's dagster.yaml (as ``make run``
    sets it up), not Dagster's defaults."""
    home = root / "dagster-home"
    if template is not None and not home.exists():
        shutil.copytree(template, home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(project_yaml(home) if project_config else DAGSTER_YAML)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "AML_DATASTORE_ROOT": str(root / "datastore"),
        "AML_CACHE_DIR": str(root / "cache"),
        **(extra or {}),
    }
    env.pop("AML_DATASTORE", None)  # never Azure, whatever the caller's shell says
    return env


def run_command(
    cmd: Sequence[str], cwd: Path, env: Mapping[str, str], what: str
) -> tuple[float, str]:
    """Wall-clock seconds and output (stdout + stderr) of one command; a failure stops the
    benchmark with its output's tail."""
    start = time.perf_counter()
    out = subprocess.run(list(cmd), cwd=cwd, env=dict(env), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(
            f"{what} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        )
    return seconds, out.stdout + out.stderr


def run_timed(cmd: Sequence[str], cwd: Path, env: Mapping[str, str], what: str) -> float:
    """Wall-clock seconds of one command (see ``run_command``)."""
    return run_command(cmd, cwd, env, what)[0]


def dagster_execute(defs_file: Path, job: str, env: Mapping[str, str], what: str) -> float:
    """``dagster job execute -f DEFS -j JOB``, timed."""
    return dagster_execute_logged(defs_file, job, env, what)[0]


def dagster_execute_logged(
    defs_file: Path, job: str, env: Mapping[str, str], what: str
) -> tuple[float, str]:
    """``dagster job execute -f DEFS -j JOB``: seconds and the run's console log."""
    return run_command(
        [str(DAGSTER), "job", "execute", "-f", str(defs_file), "-j", job],
        cwd=defs_file.parent,
        env=env,
        what=what,
    )


def aml_run_logged(
    defs_file: Path, job: str, env: Mapping[str, str], what: str
) -> tuple[float, str]:
    """``aml-assets run -f DEFS -j JOB`` (on the home's warm runner when one is up): seconds and
    output. Dagster's console log at WARNING: what remains is the run's summary."""
    return run_command(
        [str(AML), "run", "-f", str(defs_file), "-j", job, "--log-level", "warning"],
        cwd=defs_file.parent,
        env=env,
        what=what,
    )


class WarmRunner:
    """``aml-assets runner start`` for a home, stopped on exit (not part of any figure)."""

    def __init__(self, env: Mapping[str, str]):
        self.env = dict(env)

    def __enter__(self) -> WarmRunner:
        run_command([str(AML), "runner", "start"], REPO, self.env, "aml-assets runner start")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([str(AML), "runner", "stop"], env=self.env, capture_output=True)


def reused_steps(console_log: str) -> int:
    """How many steps of a run said they reused earlier outputs (aml-assets' INFO line)."""
    return console_log.count("reused outputs of run")


def floor_defs_source(n_assets: int, shape: str) -> str:
    """A definitions file of ``n_assets`` no-op assets, ``fan`` (independent) or ``chain``.

    Dagster's floor: the same CLI, the same in-process executor as a sequential aml-assets job,
    and nothing of aml-assets.
    """
    if shape not in ("fan", "chain"):
        raise ValueError(f"floor shape '{shape}': use 'fan' or 'chain'")
    return f"""\
from dagster import Definitions, asset, define_asset_job, in_process_executor

N, CHAIN = {n_assets}, {shape == "chain"}


def make(i):
    deps = [f"noop_{{i - 1}}"] if CHAIN and i else []

    @asset(name=f"noop_{{i}}", deps=deps)
    def _noop():
        return None

    return _noop


assets = [make(i) for i in range(N)]
defs = Definitions(
    assets=assets,
    jobs=[define_asset_job("floor", selection=[a.key for a in assets], executor_def=in_process_executor)],
)
"""


def write_floor(
    folder: Path, n_assets: int, shape: str, template: Path | None = None
) -> tuple[Path, dict[str, str]]:
    """A floor project in ``folder``: its definitions file and environment (own Dagster home)."""
    folder.mkdir(parents=True, exist_ok=True)
    defs = folder / "floor_defs.py"
    defs.write_text(floor_defs_source(n_assets, shape))
    return defs, isolated_env(folder, template)


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass
class Row:
    section: str
    label: str
    value: str
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    """The final table: sections of label / value / target / PASS|FAIL rows, then notes."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The words for a target met and missed.
    verdicts: ClassVar[tuple[str, str]] = ("PASS", "FAIL")

    def add(
        self, section: str, label: str, value: str, target: str = "", ok: bool | None = None
    ) -> None:
        verdict = "" if ok is None else self.verdicts[0 if ok else 1]
        self.rows.append(Row(section, label, value, target, verdict))

    def render(self) -> str:
        w_label = max(len(r.label) for r in self.rows)
        w_value = max(len(r.value) for r in self.rows)
        w_target = max(len(r.target) for r in self.rows)
        lines: list[str] = []
        section = None
        for r in self.rows:
            if r.section != section:
                section = r.section
                lines += ["", section, "-" * len(section)]
            lines.append(
                f"  {r.label:<{w_label}}  {r.value:>{w_value}}  {r.target:<{w_target}}  {r.verdict}".rstrip()
            )
        if self.notes:
            lines += ["", "Notes", "-----"]
            lines.extend(f"  - {n}" for n in self.notes)
        return "\n".join(lines).lstrip("\n")


def machine_notes(report: Report, load_before: str, wall_start: float) -> None:
    """Load averages at start and end, CPUs, Python; a warning when the machine was busy."""
    load_after = load_average()
    report.notes.insert(
        0,
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; whole benchmark "
        f"{time.perf_counter() - wall_start:.0f} s; load average (1/5/15 min) {load_before} at "
        f"start, {load_after} at end",
    )
    busiest = max(float(load_before.split()[0]), float(load_after.split()[0]))
    if busiest > 0.5 * (os.cpu_count() or 1):
        report.notes.insert(
            1,
            "WARNING: the machine was busy (1-min load above half the CPUs): figures are inflated "
            "and scattered, verdicts unreliable; rerun on a quiet machine",
        )


def dvc_project(folder: Path, dvc_yaml: str) -> Path:
    """A fresh DVC project (``dvc init --no-scm``) in ``folder`` with this ``dvc.yaml``."""
    from bench.peers import dvc_init

    dvc_init(folder)
    (folder / "dvc.yaml").write_text(dvc_yaml)
    return folder


def dvc_repro(project: Path, what: str) -> float:
    """``dvc repro`` in ``project``, timed (no analytics, no update check)."""
    from bench.peers import dvc, dvc_env

    return run_timed([str(dvc()), "repro"], project, dvc_env(), what)


@contextmanager
def bench_session(report: Report, prefix: str, what: str) -> Iterator[Path]:
    """The frame every benchmark shares: logs the load average and ``what`` is measured, yields
    a temporary folder (removed afterwards, whatever happens), then adds the machine notes and
    prints the table. Notes added inside the block are printed with it."""
    wall, load_before = time.perf_counter(), load_average()
    log(f"load average {load_before}; {what}")
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine_notes(report, load_before, wall)
    log(f"load average {load_average()} at end")
    print(report.render())
