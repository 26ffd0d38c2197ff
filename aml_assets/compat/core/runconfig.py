"""``azureml.core.runconfig`` (v1): ``RunConfiguration`` carries a step's environment."""

from __future__ import annotations

from typing import Any

__all__ = ["RunConfiguration"]


class RunConfiguration:
    """v1's ``RunConfiguration()``: only ``environment`` (an ``Environment``) and ``target``
    (a compute target's resource key) are used, by ``PythonScriptStep(runconfig=...)``."""

    def __init__(self, script: str | None = None, arguments: Any = None, framework: str | None = None,
                 communicator: str | None = None, conda_dependencies: Any = None, **_: Any):
        if conda_dependencies is not None:
            from aml_assets.compat._support import no_counterpart

            no_counterpart(
                "RunConfiguration(conda_dependencies=...)",
                "runconfig.environment = Environment.from_pip_requirements(name, file).",
            )
        self.environment: Any = None
        self.target: str | None = None
