"""v1's ``ParallelRunConfig`` and ``ParallelRunStep`` (``azureml.pipeline.steps``) over
``aml_assets.pipeline.parallel_run``: the same positional signatures, building our objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aml_assets.compat._support import BuildsOurs, compute_key, no_counterpart, v1_step_name
from aml_assets.pipeline import parallel_run as ours


class ParallelRunConfig(metaclass=BuildsOurs):
    """v1's ``ParallelRunConfig(environment, entry_script, error_threshold, output_action,
    compute_target, node_count, process_count_per_node=None, mini_batch_size=None,
    source_directory=None, description=None, logging_level='INFO', run_invocation_timeout=60,
    run_max_try=3, append_row_file_name=None, allowed_failed_count=None,
    allowed_failed_percent=None, partition_keys=None, environment_variables=None)``; builds an
    ``aml_assets.ParallelRunConfig``. ``compute_target``: a CPU cluster's resource key (or an
    object with ``.name``); ``environment``: an ``Environment`` (None: the pipeline's)."""

    _ours = ours.ParallelRunConfig

    def __new__(
        cls,
        environment: Any,
        entry_script: str,
        error_threshold: int,
        output_action: str,
        compute_target: Any,
        node_count: int,
        process_count_per_node: int | None = None,
        mini_batch_size: int | str | None = None,
        source_directory: str | Path | None = None,
        description: str | None = None,
        logging_level: str = "INFO",
        run_invocation_timeout: float = 60,
        run_max_try: int = 3,
        append_row_file_name: str | None = None,
        allowed_failed_count: int | None = None,
        allowed_failed_percent: float | None = None,
        partition_keys: Sequence[str] | None = None,
        environment_variables: Mapping[str, str] | None = None,
    ) -> ours.ParallelRunConfig:
        if partition_keys:
            no_counterpart(
                "ParallelRunConfig(partition_keys=...) (mini-batches by partition)",
                "cut by size (mini_batch_size); or write one file per partition and use a file "
                "dataset, whose mini-batches are groups of files.",
            )
        return ours.ParallelRunConfig(
            entry_script=entry_script,
            source_directory=source_directory,
            mini_batch_size=mini_batch_size,
            error_threshold=error_threshold,
            output_action=output_action,  # type: ignore[arg-type]
            compute_target=compute_key(compute_target) or "",
            node_count=node_count,
            process_count_per_node=process_count_per_node,
            environment=environment,
            description=description,
            logging_level=logging_level,
            run_invocation_timeout=run_invocation_timeout,
            run_max_try=run_max_try,
            append_row_file_name=append_row_file_name,
            allowed_failed_count=allowed_failed_count,
            allowed_failed_percent=allowed_failed_percent,
            environment_variables=dict(environment_variables or {}),
        )


class ParallelRunStep(metaclass=BuildsOurs):
    """v1's ``ParallelRunStep(name, parallel_run_config, inputs, output=None, side_inputs=None,
    arguments=None, allow_reuse=True)``; builds an ``aml_assets.ParallelRunStep``."""

    _ours = ours.ParallelRunStep

    def __new__(
        cls,
        name: str,
        parallel_run_config: ours.ParallelRunConfig,
        inputs: Sequence[Any],
        output: Any = None,
        side_inputs: Sequence[Any] | None = None,
        arguments: Sequence[Any] | None = None,
        allow_reuse: bool = True,
        **more: Any,
    ) -> ours.ParallelRunStep:
        return ours.ParallelRunStep(
            name=v1_step_name(name),
            parallel_run_config=parallel_run_config,
            inputs=list(inputs),
            output=output,
            side_inputs=list(side_inputs or []),
            arguments=list(arguments or []),
            allow_reuse=allow_reuse,
            **more,  # aml-assets' own settings (timeout_seconds, version, ...)
        )
