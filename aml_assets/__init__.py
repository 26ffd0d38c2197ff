"""aml-assets: Azure ML-style pipelines on Dagster, local-first."""

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
    DatasetError,
    DatastoreError,
    PipelineValidationError,
    StepFailedError,
)
from aml_assets.parameters import PipelineParameter
from aml_assets.pipeline import Pipeline
from aml_assets.registry import DatasetRegistry, RegisteredDataset
from aml_assets.steps import Environment, PythonScriptStep, SynapseSparkStep

__all__ = [
    "AmlAssetsError",
    "CpuCluster",
    "DatasetError",
    "DatasetRef",
    "DatasetRegistry",
    "Datastore",
    "DatastoreError",
    "Environment",
    "ExpectedColumns",
    "FileDataset",
    "InputMode",
    "LocalDatastore",
    "LocalProcessCluster",
    "NotNull",
    "OutputDataset",
    "Pipeline",
    "PipelineParameter",
    "PipelineValidationError",
    "PythonScriptStep",
    "RegisteredDataset",
    "RowCount",
    "SchemaDrift",
    "SparkPool",
    "StepFailedError",
    "SynapseSparkStep",
    "TabularDataset",
    "UniqueKey",
]
