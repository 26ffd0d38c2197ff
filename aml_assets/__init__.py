"""aml-assets: Azure ML-style pipelines on Dagster, local-first.

Names are imported lazily (PEP 562), so ``import aml_assets.reuse.fingerprint`` does not pay for
Dagster's import; ``from aml_assets import Pipeline`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "aml_assets.data.checks": ["ExpectedColumns", "NotNull", "RowCount", "SchemaDrift", "UniqueKey"],
    "aml_assets.compute.cluster": ["CpuCluster", "LocalProcessCluster"],
    "aml_assets.compute.celery_cluster": ["CeleryCpuCluster"],
    "aml_assets.compute.spark": ["SparkPool"],
    "aml_assets.compute.kubernetes": ["KubernetesCluster"],
    "aml_assets.data.datasets": ["DatasetRef", "FileDataset", "InputMode", "OutputDataset", "TabularDataset"],
    "aml_assets.data.datastore": ["Datastore", "LocalDatastore"],
    "aml_assets.errors": [
        "AmlAssetsError",
        "ComputeTargetError",
        "DatasetCheckFailedError",
        "DatasetError",
        "DatastoreError",
        "PipelineValidationError",
        "StepFailedError",
    ],
    "aml_assets.pipeline.parameters": ["ParameterValueError", "PipelineParameter"],
    "aml_assets.pipeline.definition": ["Pipeline"],
    "aml_assets.data.registry": ["DatasetRegistry", "RegisteredDataset"],
    "aml_assets.pipeline.steps": ["Environment", "PythonScriptStep", "SynapseSparkStep"],
    "aml_assets.pipeline.command_step": ["CommandStep"],
    "aml_assets.pipeline.transfer": ["DataTransferStep", "TransferDestination"],
    "aml_assets.pipeline.parallel_run": ["ParallelRunConfig", "ParallelRunStep"],
    "aml_assets.pipeline.datapath": ["DataPath", "DataPathComputeBinding", "DataPathParameter"],
    "aml_assets.pipeline.publish": ["EndpointVersion", "PipelineEndpoint", "PublishError", "PublishedPipeline"],
    "aml_assets.service.schedules": ["Schedule", "ScheduleError", "ScheduleRecurrence"],
    "aml_assets.service.experiment": ["Experiment", "PipelineRun", "StepRun"],
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
    from aml_assets.compute.celery_cluster import CeleryCpuCluster
    from aml_assets.compute.cluster import CpuCluster, LocalProcessCluster
    from aml_assets.compute.kubernetes import KubernetesCluster
    from aml_assets.compute.spark import SparkPool
    from aml_assets.data.checks import ExpectedColumns, NotNull, RowCount, SchemaDrift, UniqueKey
    from aml_assets.data.datasets import (
        DatasetRef,
        FileDataset,
        InputMode,
        OutputDataset,
        TabularDataset,
    )
    from aml_assets.data.datastore import Datastore, LocalDatastore
    from aml_assets.data.registry import DatasetRegistry, RegisteredDataset
    from aml_assets.errors import (
        AmlAssetsError,
        ComputeTargetError,
        DatasetCheckFailedError,
        DatasetError,
        DatastoreError,
        PipelineValidationError,
        StepFailedError,
    )
    from aml_assets.pipeline.command_step import CommandStep
    from aml_assets.pipeline.datapath import DataPath, DataPathComputeBinding, DataPathParameter
    from aml_assets.pipeline.definition import Pipeline
    from aml_assets.pipeline.parallel_run import ParallelRunConfig, ParallelRunStep
    from aml_assets.pipeline.parameters import ParameterValueError, PipelineParameter
    from aml_assets.pipeline.publish import (
        EndpointVersion,
        PipelineEndpoint,
        PublishedPipeline,
        PublishError,
    )
    from aml_assets.pipeline.steps import Environment, PythonScriptStep, SynapseSparkStep
    from aml_assets.pipeline.transfer import DataTransferStep, TransferDestination
    from aml_assets.service.experiment import Experiment, PipelineRun, StepRun
    from aml_assets.service.schedules import Schedule, ScheduleError, ScheduleRecurrence
