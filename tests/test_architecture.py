"""Boundaries that keep the design honest: the cache key and the script side need no Dagster."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["aml_assets.reuse.fingerprint", "amlrun", "amlrun.launch"])
def test_module_imports_without_dagster(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{module} pulls in Dagster: {out.stdout}{out.stderr}"
