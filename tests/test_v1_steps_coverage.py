"""Every class of Azure ML v1's ``azureml.pipeline.steps`` either builds our step or fails at
import saying what to use instead, naming aml-assets classes that exist (issue 11)."""

from __future__ import annotations

import importlib
import re

import pytest

import aml_assets
from aml_assets.compat import NoCounterpartImportError

STEPS = "aml_assets.compat.pipeline.steps"

#: Every public class of azureml-pipeline-steps (its modules: adla_step, automl_step,
#: azurebatch_step, command_step, data_transfer_step, databricks_step, estimator_step,
#: hyper_drive_step, kusto_step, module_step, mpi_step, parallel_run_config,
#: parallel_run_step, python_script_step, r_script_step, synapse_spark_step).
V1_STEP_CLASSES = {
    "AdlaStep", "AutoMLStep", "AutoMLStepRun", "AzureBatchStep", "CommandStep", "DataTransferStep",
    "DatabricksStep", "EstimatorStep", "HyperDriveStep", "HyperDriveStepRun", "KustoStep",
    "ModuleStep", "MpiStep", "ParallelRunConfig", "ParallelRunStep", "PythonScriptStep",
    "RScriptStep", "SynapseSparkStep",
}
BUILT = {"CommandStep": "CommandStep", "DataTransferStep": "DataTransferStep",
         "PythonScriptStep": "PythonScriptStep", "SynapseSparkStep": "SynapseSparkStep"}
#: Built in aml_assets.compat.pipeline._parallel_run.
PARALLEL = {"ParallelRunStep", "ParallelRunConfig"}
#: What each message must point to.
INSTEAD = {
    "AdlaStep": "SynapseSparkStep",
    "AutoMLStep": "PythonScriptStep",
    "AutoMLStepRun": "StepRun",
    "AzureBatchStep": "CommandStep",
    "DatabricksStep": "SynapseSparkStep",
    "EstimatorStep": "PythonScriptStep",
    "HyperDriveStep": "PythonScriptStep",
    "HyperDriveStepRun": "StepRun",
    "KustoStep": "PythonScriptStep",
    "ModuleStep": "PythonScriptStep",
    "MpiStep": "CommandStep",
    "RScriptStep": "CommandStep",
}


def test_the_lists_cover_every_v1_step_class():
    assert set(INSTEAD) | set(BUILT) | PARALLEL == V1_STEP_CLASSES


@pytest.mark.parametrize("name", sorted(BUILT))
def test_built_v1_steps_import_and_build_ours(name):
    v1 = getattr(importlib.import_module(STEPS), name)
    assert v1._ours is getattr(aml_assets, BUILT[name])
    assert name in importlib.import_module(STEPS).__all__


@pytest.mark.parametrize("name", sorted(PARALLEL))
def test_parallel_run_names_import(name):
    module = importlib.import_module(STEPS)
    assert getattr(module, name) is not None and name in module.__all__


@pytest.mark.parametrize("name", sorted(INSTEAD))
def test_each_v1_step_without_counterpart_says_what_to_use_instead(name):
    with pytest.raises(NoCounterpartImportError) as info:
        exec(f"from {STEPS} import {name}", {})
    message = str(info.value)
    assert isinstance(info.value, ImportError)  # `except ImportError:` fallbacks still work
    assert message.startswith(f"azureml.pipeline.steps.{name} has no counterpart in aml-assets. Instead: ")
    assert INSTEAD[name] in message
    assert "planned" not in message  # nothing is left "to come"
    # Every aml-assets class the message names exists (no advice pointing nowhere).
    named = set(re.findall(r"\b([A-Z][a-z]+(?:[A-Z][a-z]*)+)\b", message.split("Instead: ", 1)[1]))
    ours = {
        n for n in named - set(INSTEAD)  # v1 classes may be named ("HyperDriveStep has none")
        if n.endswith(("Step", "Run", "Pool", "Cluster", "Parameter", "Dataset"))
    }
    assert ours, message
    for class_name in ours:
        assert hasattr(aml_assets, class_name), f"{name}'s message names {class_name}, which aml_assets lacks"
