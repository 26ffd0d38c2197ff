"""Peers the benchmarks measure against, installed into the benchmarks' own environment.

DVC is not a dependency of aml-assets: it lives in its own virtual environment under the
user's cache folder (``$XDG_CACHE_HOME/aml-assets-bench``, or ``--peers-dir``), created on first
use (~20 s) and reused afterwards, so the project's own environment never sees it.

    from bench.peers import dvc
    dvc_bin = dvc()            # path of the ``dvc`` command, installing it if needed
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The DVC release the figures were measured with; a range keeps a fresh machine installable.
DVC_REQUIREMENT = "dvc>=3.50,<4"


def peers_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("AML_BENCH_PEERS_DIR") or Path(base) / "aml-assets-bench")


def dvc() -> Path:
    """The ``dvc`` command from the benchmarks' own virtual environment (created if missing)."""
    venv = peers_dir() / "dvc-venv"
    binary = venv / "bin" / "dvc"
    if not binary.exists():
        print(f"[bench] installing {DVC_REQUIREMENT} into {venv} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", DVC_REQUIREMENT],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"installing {DVC_REQUIREMENT} failed:\n{done.stderr[-3000:]}")
    return binary


def dvc_version() -> str:
    return subprocess.run([str(dvc()), "--version"], capture_output=True, text=True, check=True).stdout.strip()


def dvc_init(folder: Path) -> None:
    """A fresh git + DVC project in ``folder`` (DVC wants a git repository or ``--no-scm``)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(dvc()), "init", "--no-scm", "-q"], cwd=folder, check=True)
    # No analytics ping, no update check: they would be network time inside the measurement.
    subprocess.run([str(dvc()), "config", "core.analytics", "false"], cwd=folder, check=True)
    subprocess.run([str(dvc()), "config", "core.autostage", "false"], cwd=folder, check=True)


def dvc_env() -> dict[str, str]:
    """Environment for timed ``dvc`` commands: no analytics, no update check (network time)."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_IGNORE_UPDATER": "1"}
