"""Running a ported Azure ML v1 script as its own ``__main__``, as a user would."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@contextmanager
def v1_script_main(script: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Run ``script`` as ``__main__`` on a new ``DAGSTER_HOME`` (``home``), yielding its globals.

    Every compat ``Experiment`` it made is closed when the block ends: v1 code never closes one,
    and its code server would outlive the test."""
    from aml_assets.compat.core import _objects

    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    experiments = []
    original = _objects.Experiment.__init__

    def remember(self, *args, **kw):
        original(self, *args, **kw)
        experiments.append(self)

    monkeypatch.setattr(_objects.Experiment, "__init__", remember)
    sys.modules.pop("pipeline", None)  # each port's pipeline.py is a module named "pipeline"
    try:
        yield runpy.run_path(str(script), run_name="__main__")
    finally:
        for experiment in experiments:
            experiment.close()
