"""``azureml.pipeline.steps`` (v1) over aml-assets: ``PythonScriptStep``, ``SynapseSparkStep``,
``CommandStep``, ``DataTransferStep`` and ``ParallelRunStep`` taking v1's arguments; every other
v1 step names what to use instead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aml_assets.compat._support import (
    BuildsOurs,
    compute_key,
    missing_names,
    no_counterpart,
    v1_step_name,
)
from aml_assets.compat.pipeline._parallel_run import ParallelRunConfig, ParallelRunStep
from aml_assets.pipeline import steps as ours
from aml_assets.pipeline.command_step import CommandStep as CommandStepOurs
from aml_assets.pipeline.transfer import DataTransferStep as DataTransferStepOurs

__all__ = [
    "CommandStep",
    "DataTransferStep",
    "ParallelRunConfig",
    "ParallelRunStep",
    "PythonScriptStep",
    "SynapseSparkStep",
]


def _environment(runconfig: Any) -> Any:
    """The environment a v1 ``runconfig`` carries (None: the pipeline's)."""
    if runconfig is None:
        return None
    env = getattr(runconfig, "environment", None)
    if env is None or isinstance(env, ours.Environment):
        return env
    raise TypeError(
        f"runconfig.environment is a {type(env).__name__}; build it with "
        "aml_assets.compat.core.Environment (or aml_assets.Environment)"
    )


class PythonScriptStep(metaclass=BuildsOurs):
    """v1's ``PythonScriptStep(script_name, name=None, arguments=None, compute_target=None,
    runconfig=None, runconfig_pipeline_params=None, inputs=None, outputs=None, params=None,
    source_directory=None, allow_reuse=True, version=None, hash_paths=None)``; builds an
    ``aml_assets.PythonScriptStep``. ``compute_target`` is a CPU cluster's resource key (or an
    object with ``.name``); None: ``cpucluster``."""

    _ours = ours.PythonScriptStep

    def __new__(
        cls,
        script_name: str,
        name: str | None = None,
        arguments: Sequence[Any] | None = None,
        compute_target: Any = None,
        runconfig: Any = None,
        runconfig_pipeline_params: Mapping[str, Any] | None = None,
        inputs: Sequence[Any] | None = None,
        outputs: Sequence[Any] | None = None,
        params: Mapping[str, Any] | None = None,
        source_directory: str | Path | None = None,
        allow_reuse: bool = True,
        version: str | None = None,
        hash_paths: Sequence[str | Path] | None = None,
        **more: Any,
    ) -> ours.PythonScriptStep:
        if runconfig_pipeline_params:
            no_counterpart(
                "runconfig_pipeline_params (run configuration set by pipeline parameters)",
                "pass the PipelineParameter in arguments= or params= (AML_PARAMETER_<name>)",
            )
        target = compute_key(compute_target)
        return ours.PythonScriptStep(
            name=v1_step_name(name),
            script=script_name,
            source_directory=source_directory,
            arguments=list(arguments or []),
            inputs=list(inputs or []),
            outputs=list(outputs or []),
            params=dict(params or {}),
            allow_reuse=allow_reuse,
            version=version,
            hash_paths=list(hash_paths or []),
            environment=_environment(runconfig),
            **({"compute_target": target} if target else {}),
            **more,  # aml-assets' own settings (timeout_seconds, description, ...)
        )


class SynapseSparkStep(metaclass=BuildsOurs):
    """v1's ``SynapseSparkStep(file, source_directory, compute_target, driver_memory,
    driver_cores, executor_memory, executor_cores, num_executors, name=None, app_name=None,
    environment=None, arguments=None, inputs=None, outputs=None, conf=None, py_files=None,
    jars=None, files=None, allow_reuse=True, version=None)``; builds an
    ``aml_assets.SynapseSparkStep`` on the Spark pool whose resource key ``compute_target`` is."""

    _ours = ours.SynapseSparkStep

    def __new__(
        cls,
        file: str,
        source_directory: str | Path | None,
        compute_target: Any,
        driver_memory: str | None = None,
        driver_cores: int | None = None,
        executor_memory: str | None = None,
        executor_cores: int | None = None,
        num_executors: int | None = None,
        name: str | None = None,
        app_name: str | None = None,
        environment: Any = None,
        arguments: Sequence[Any] | None = None,
        inputs: Sequence[Any] | None = None,
        outputs: Sequence[Any] | None = None,
        conf: Mapping[str, str] | None = None,
        py_files: Sequence[str] | None = None,
        jars: Sequence[str] | None = None,
        files: Sequence[str] | None = None,
        allow_reuse: bool = True,
        version: str | None = None,
        **more: Any,
    ) -> ours.SynapseSparkStep:
        # app_name only names the Spark application: it changes nothing the step computes.
        if py_files:
            no_counterpart(
                "SynapseSparkStep(py_files=...)",
                "put the modules in source_directory (the script imports them from there) or "
                "hash_paths=",
            )
        if jars or files:
            no_counterpart(
                "SynapseSparkStep(jars=/files=) per step",
                "set spark.jars / spark.files in the SparkPool's conf (they are session-wide)",
            )
        return ours.SynapseSparkStep(
            name=v1_step_name(name),
            script=file,
            source_directory=source_directory,
            compute_target=compute_key(compute_target) or "spark01",
            driver_memory=driver_memory,
            driver_cores=driver_cores,
            executor_memory=executor_memory,
            executor_cores=executor_cores,
            num_executors=num_executors,
            environment=environment,
            arguments=list(arguments or []),
            inputs=list(inputs or []),
            outputs=list(outputs or []),
            conf=dict(conf or {}),
            allow_reuse=allow_reuse,
            version=version,
            **more,
        )


class CommandStep(metaclass=BuildsOurs):
    """v1's ``CommandStep(command=None, name=None, compute_target=None, runconfig=None,
    runconfig_pipeline_params=None, inputs=None, outputs=None, params=None,
    source_directory=None, allow_reuse=True, version=None)``; builds an
    ``aml_assets.CommandStep``. ``command`` is a command line (run by bash) or a list of words
    holding inputs, outputs and PipelineParameters; without it, ``runconfig.command``."""

    _ours = CommandStepOurs

    def __new__(
        cls,
        command: str | Sequence[Any] | None = None,
        name: str | None = None,
        compute_target: Any = None,
        runconfig: Any = None,
        runconfig_pipeline_params: Mapping[str, Any] | None = None,
        inputs: Sequence[Any] | None = None,
        outputs: Sequence[Any] | None = None,
        params: Mapping[str, Any] | None = None,
        source_directory: str | Path | None = None,
        allow_reuse: bool = True,
        version: str | None = None,
        **more: Any,
    ) -> CommandStepOurs:
        if runconfig_pipeline_params:
            no_counterpart(
                "runconfig_pipeline_params (run configuration set by pipeline parameters)",
                "put the PipelineParameter in the command's list or in params= (AML_PARAMETER_<name>)",
            )
        if command is None:
            command = getattr(runconfig, "command", None)
        if command is None:
            raise ValueError("CommandStep: give command= (or a runconfig with .command).")
        target = compute_key(compute_target) or getattr(runconfig, "target", None)
        return CommandStepOurs(
            name=v1_step_name(name),
            command=command if isinstance(command, str) else list(command),
            source_directory=source_directory,
            inputs=list(inputs or []),
            outputs=list(outputs or []),
            params=dict(params or {}),
            allow_reuse=allow_reuse,
            version=version,
            environment=_environment(runconfig),
            **({"compute_target": target} if target else {}),
            **more,
        )


class DataTransferStep(metaclass=BuildsOurs):
    """v1's ``DataTransferStep(name, source_data_reference=None, destination_data_reference=None,
    compute_target=None, source_reference_type=None, destination_reference_type=None,
    allow_reuse=True)``; builds an ``aml_assets.DataTransferStep``. The source is a dataset, an
    earlier step's output or a DataReference; the destination a DataReference or a
    ``(datastore, path)`` tuple. ``compute_target`` (a Data Factory) is not needed: the copy runs
    in the step's op, on the ``cpucluster`` CPU cluster unless ``compute_target=`` names another
    configured one."""

    _ours = DataTransferStepOurs

    def __new__(
        cls,
        name: str,
        source_data_reference: Any = None,
        destination_data_reference: Any = None,
        compute_target: Any = None,
        source_reference_type: str | None = None,
        destination_reference_type: str | None = None,
        allow_reuse: bool = True,
        **more: Any,
    ) -> DataTransferStepOurs:
        target = compute_target if isinstance(compute_target, str) else None
        if target is not None and "compute_target" not in more:
            more["compute_target"] = target
        return DataTransferStepOurs(
            name=v1_step_name(name),
            source=source_data_reference,
            destination=destination_data_reference,
            source_reference_type=source_reference_type,
            destination_reference_type=destination_reference_type,
            allow_reuse=allow_reuse,
            **more,
        )


__getattr__ = missing_names(
    "aml_assets.compat.pipeline.steps",
    "azureml.pipeline.steps",
    {
        "AdlaStep": "Azure Data Lake Analytics (U-SQL) is retired; rewrite the U-SQL as Spark SQL "
        "in a SynapseSparkStep on a SparkPool.",
        "DatabricksStep": "run the notebook's code as a SynapseSparkStep on a SparkPool with "
        "remote='sc://<host>:<port>/;token=...' (Databricks Connect / Spark Connect), or on a "
        "local SparkPool.",
        "HyperDriveStep": "sweep with one PythonScriptStep per configuration (PipelineParameter "
        "values per run), or run the search (e.g. Optuna) inside one PythonScriptStep.",
        "HyperDriveStepRun": "HyperDriveStep has no counterpart (run the sweep in a "
        "PythonScriptStep); read any step's results through aml_assets.StepRun "
        "(get_metrics(), get_output_data()).",
        "AutoMLStep": "train in a PythonScriptStep with an AutoML library (e.g. FLAML).",
        "AutoMLStepRun": "AutoMLStep has no counterpart (train in a PythonScriptStep); read any "
        "step's results through aml_assets.StepRun (get_metrics(), get_output_data()).",
        "EstimatorStep": "a PythonScriptStep with an Environment (Estimators are deprecated in v1 "
        "as well).",
        "MpiStep": "a PythonScriptStep, or a CommandStep running mpirun on one node (multi-node "
        "MPI is not available).",
        "ModuleStep": "a PythonScriptStep or CommandStep (there is no module registry).",
        "AzureBatchStep": "a CommandStep running the program on a CpuCluster (its nodes run "
        "Linux processes: no Windows executables).",
        "KustoStep": "query Kusto from a PythonScriptStep (azure-kusto-data).",
        "RScriptStep": "a CommandStep running Rscript: CommandStep(command=['Rscript', "
        "'script.R', ...], source_directory=...), with R installed where the CpuCluster runs.",
    },
)
