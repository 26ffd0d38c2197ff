"""v1's mutable parts of an ``Environment``: ``env.python.conda_dependencies`` (pip packages)
and ``env.environment_variables``, kept in step with the aml-assets ``Environment`` compat
builds, so v1 code that changes an environment after making it keeps working.

The v1 SDK's own packages (``azureml-core``, ``azureml-defaults``, ... every ``azureml-*``) are
not installed: what a step script uses of them (``Run``, ``Dataset.get_by_id`` in a step) is
provided by ``amlrun`` / ``aml_assets.compat``, which every step can import. They are recorded
in ``pip_packages`` (the v1 view) and left out of the environment's ``pip``, with a log note; an
environment asking only for them is not isolated (the step runs in the running interpreter).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from aml_assets.compat._support import no_counterpart

__all__ = ["CondaDependencies", "PythonSection", "is_v1_sdk_package", "with_v1_sections"]

_LOG = logging.getLogger("aml_assets.compat")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def is_v1_sdk_package(requirement: str) -> bool:
    """Whether a pip requirement names a package of the v1 SDK (``azureml-core>=1.20.0``)."""
    match = _NAME.match(requirement)
    return bool(match) and re.sub(r"[-_.]+", "-", match.group(1).lower()).startswith("azureml-")


class CondaDependencies:
    """v1's ``CondaDependencies``: the pip packages an environment asks for. Conda packages
    have no counterpart (there is no conda here)."""

    def __init__(self, conda_dependencies_file_path: Any = None, _environment: Any = None, **_: Any):
        if conda_dependencies_file_path is not None:
            no_counterpart(
                "CondaDependencies(conda_dependencies_file_path=...) (a conda file)",
                "Environment.from_pip_requirements(name, 'requirements.txt') with its pip packages.",
            )
        self._environment = _environment
        self._pip: list[str] = []

    @staticmethod
    def create(pip_packages: Iterable[str] | None = None, conda_packages: Iterable[str] | None = None,
               python_version: str | None = None, **_: Any) -> CondaDependencies:
        """v1's ``CondaDependencies.create(pip_packages=[...])``."""
        if conda_packages:
            _no_conda(list(conda_packages))
        made = CondaDependencies()
        for package in pip_packages or []:
            made.add_pip_package(package)
        return made

    @property
    def pip_packages(self) -> list[str]:
        """Every pip package asked for, v1 SDK packages included (the v1 view)."""
        return list(self._pip)

    def add_pip_package(self, pip_package: str) -> None:
        """Ask for a pip package; a v1 SDK package (``azureml-*``) is left out of the
        environment: amlrun provides what scripts use of it."""
        if pip_package in self._pip:
            return
        self._pip.append(pip_package)
        if is_v1_sdk_package(pip_package):
            _LOG.info(
                "Environment pip package '%s' is not installed: amlrun (aml_assets.compat) "
                "provides the v1 SDK's script-side API in every step.", pip_package,
            )
        self._sync()

    def remove_pip_package(self, pip_package: str) -> None:
        """Stop asking for a pip package."""
        if pip_package in self._pip:
            self._pip.remove(pip_package)
            self._sync()

    def add_conda_package(self, conda_package: str) -> None:
        """v1 installs a conda package; there is no conda here."""
        _no_conda([conda_package])

    def _sync(self) -> None:
        if self._environment is not None:  # the aml-assets Environment this section belongs to
            pip = tuple(p for p in self._pip if not is_v1_sdk_package(p))
            object.__setattr__(self._environment, "pip", pip)


def _no_conda(packages: list[str]) -> None:
    no_counterpart(
        f"conda packages ({', '.join(packages)})",
        "add_pip_package with the package's PyPI name (e.g. 'scikit-learn==1.5.2').",
    )


class PythonSection(str):
    """``env.python`` of an environment compat builds: the Python asked for (a version such as
    "3.11"; empty: the running interpreter), which aml-assets reads, and v1's section
    (``conda_dependencies``, ``user_managed_dependencies``), which v1 code changes."""

    def __new__(cls, version: str = "", environment: Any = None) -> PythonSection:
        section = super().__new__(cls, version)
        section.user_managed_dependencies = False
        section._dependencies = CondaDependencies(_environment=environment)
        return section

    @property
    def conda_dependencies(self) -> CondaDependencies:
        """The pip packages the environment asks for."""
        return self._dependencies

    @conda_dependencies.setter
    def conda_dependencies(self, value: CondaDependencies) -> None:
        environment = self._dependencies._environment
        self._dependencies = CondaDependencies(_environment=environment)
        for package in value.pip_packages:
            self._dependencies.add_pip_package(package)
        if not value.pip_packages and environment is not None:
            object.__setattr__(environment, "pip", ())


class _EnvironmentVariables(dict):
    """v1's ``env.environment_variables``: changes reach the environment's ``env_vars``."""

    def __init__(self, environment: Any):
        super().__init__(environment.env_var_dict())
        self._environment = environment

    def _sync(self) -> None:
        pairs = tuple(sorted((str(k), str(v)) for k, v in self.items()))
        object.__setattr__(self._environment, "env_vars", pairs)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._sync()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._sync()

    def update(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        super().update(*args, **kw)
        self._sync()


def with_v1_sections(environment: Any) -> Any:
    """``environment`` (an aml-assets ``Environment``, made by compat) with v1's sections:
    ``env.python.conda_dependencies.add_pip_package(...)`` changes its ``pip``,
    ``env.environment_variables[k] = v`` its ``env_vars`` (v1 environments are mutable)."""
    object.__setattr__(environment, "python", PythonSection(environment.python or "", environment))
    for package in environment.pip:
        environment.python.conda_dependencies._pip.append(package)
    object.__setattr__(environment, "environment_variables", _EnvironmentVariables(environment))
    return environment
