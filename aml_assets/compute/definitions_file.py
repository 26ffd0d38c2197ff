"""A project's definitions file, imported as Dagster imports it (``dagster job execute -f``):
its folder importable (so its ``resources/`` package loads), the file run as a module of its own.

Shared by the CLI (which finds a pipeline or a Spark pool in it) and the Celery worker (which
preloads the project before its pool forks, and reads its clusters' settings).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from aml_assets.errors import AmlAssetsError


def import_definitions_file(path: str | Path, module_name: str, missing_hint: str = "pass -f PATH") -> ModuleType:
    """Import the definitions file at ``path`` as module ``module_name``."""
    file = Path(path).resolve()
    if not file.is_file():
        raise AmlAssetsError(f"Definitions file '{path}' not found; {missing_hint}.")
    sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def definitions_resources(module: ModuleType) -> dict[str, Any]:
    """Every resource of every ``Definitions`` object the imported file defines, by key."""
    from dagster import Definitions

    found: dict[str, Any] = {}
    for defs in (v for v in vars(module).values() if isinstance(v, Definitions)):
        found.update(defs.resources or {})
    return found
