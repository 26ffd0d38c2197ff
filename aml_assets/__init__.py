"""aml-assets: Azure ML-style pipelines on Dagster, local-first.

Names are imported lazily (PEP 562), so ``import aml_assets.fingerprint`` does not pay for
Dagster's import; ``from aml_assets import Pipeline`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "aml_assets.checks": ["ExpectedColumns", "NotNull", "RowCount", "SchemaDrift", "UniqueKey"],
    "aml_assets.compute": ["CpuCluster", "LocalProcessCluster", "SparkPool"],
    "aml_assets.datasets": ["DatasetRef", "FileDataset", "InputMode", "OutputDataset", "TabularDataset"],
    "aml_assets.datastore": ["Datastore", "LocalDatastore"],
    "aml_assets.errors": [
        "AmlAssetsError",
        "ComputeTargetError",
        "DatasetCheckFailedError",
        "DatasetError",
        "DatastoreError",
        "PipelineValidationError",
        "StepFailedError",
    ],
    "aml_assets.parameters": ["PipelineParameter"],
    "aml_assets.pipeline": ["Pipeline"],
    "aml_assets.registry": ["DatasetRegistry", "RegisteredDataset"],
    "aml_assets.steps": ["Environment", "PythonScriptStep", "SynapseSparkStep"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'aml_assets' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from aml_assets.checks import ExpectedColumns, NotNull, RowCount, SchemaDrift, UniqueKey
    from aml_assets.compute import CpuCluster, LocalProcessCluster, SparkPool
    from aml_assets.datasets import (
        DatasetRef,
        FileDataset,
        InputMode,
        OutputDataset,
        TabularDataset,
    )
    from aml_assets.datastore import Datastore, LocalDatastore
    from aml_assets.errors import (
        AmlAssetsError,
        ComputeTargetError,
        DatasetCheckFailedError,
        DatasetError,
        DatastoreError,
        PipelineValidationError,
        StepFailedError,
    )
    from aml_assets.parameters import PipelineParameter
    from aml_assets.pipeline import Pipeline
    from aml_assets.registry import DatasetRegistry, RegisteredDataset
    from aml_assets.steps import Environment, PythonScriptStep, SynapseSparkStep
