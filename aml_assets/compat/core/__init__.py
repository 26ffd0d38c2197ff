"""``azureml.core`` (v1) over aml-assets: ``Run`` (the script side), ``Experiment``,
``Datastore``, ``Dataset``, ``Environment``, ``ComputeTarget``, ``RunConfiguration`` and a local
``Workspace``; Azure-only parts (authentication, creating compute, the workspace service) say
what to use instead.

Only ``Run`` is imported eagerly: a step script doing ``from aml_assets.compat.core import Run``
(v1's ``from azureml.core import Run``) loads nothing else, so it also works in a step's isolated
environment, where only ``amlrun`` (and aml-assets' own files) are importable.
"""

from __future__ import annotations

import importlib
from typing import Any

from aml_assets.compat._support import missing_names
from amlrun import Run

__all__ = [
    "ComputeTarget",
    "Dataset",
    "Datastore",
    "Environment",
    "Experiment",
    "Run",
    "RunConfiguration",
    "VERSION",
    "Workspace",
]

_LAZY = {
    "ComputeTarget": "aml_assets.compat.core.compute",
    "RunConfiguration": "aml_assets.compat.core.runconfig",
    **{
        name: "aml_assets.compat.core._objects"
        for name in ("Dataset", "Datastore", "Environment", "Experiment", "Workspace")
    },
}

_missing = missing_names(
    "aml_assets.compat.core",
    "azureml.core",
    {
        "ScriptRunConfig": "a one-step Pipeline with a PythonScriptStep (Experiment.submit runs "
        "pipelines).",
        "ScriptRun": "a one-step Pipeline's PipelineRun / StepRun.",
        "Model": "write the model to a registered OutputDataset (versioned like a model).",
        "Webservice": "serve the model outside aml-assets (no deployment service here).",
        "ComputeTargetException": "no compute is created at run time: ComputeTarget(ws, name) "
        "names a configured resource and never fails.",
        "LinkedService": "nothing to link: a Synapse Spark pool is a SparkPool resource in your "
        "Definitions (local master, a standalone cluster, or remote='sc://...'), named by the "
        "step's compute_target.",
        "SynapseWorkspaceLinkedServiceConfiguration": "nothing to link: configure a SparkPool "
        "resource and name it as the SynapseSparkStep's compute_target.",
    },
)


def _version() -> str:
    """v1's ``azureml.core.VERSION``: here, the installed aml-assets version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aml-assets")
    except PackageNotFoundError:
        return "unknown"



def __getattr__(name: str) -> Any:
    if name == "VERSION":
        return _version()
    module = _LAZY.get(name)
    if module is None:
        return _missing(name)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
