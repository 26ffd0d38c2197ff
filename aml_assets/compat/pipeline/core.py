"""``azureml.pipeline.core`` (v1) over aml-assets: ``Pipeline`` with v1's signature and
defaults (``continue_on_step_failure=False``, ``validate()`` returning the problems),
``StepSequence``, and our ``PipelineParameter``, published pipelines, endpoints, schedules and
runs, ``PipelineData``; the other v1 names say what to use instead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aml_assets.compat._support import BuildsOurs, missing_names, no_counterpart, resource_name
from aml_assets.data import references
from aml_assets.data.datasets import DatasetInput, OutputDataset
from aml_assets.errors import PipelineValidationError
from aml_assets.pipeline import definition
from aml_assets.pipeline.parameters import PipelineParameter
from aml_assets.pipeline.publish import PipelineEndpoint, PublishedPipeline, PublishError
from aml_assets.pipeline.steps import Step
from aml_assets.service.experiment import PipelineRun, StepRun
from aml_assets.service.schedules import Schedule, ScheduleRecurrence

__all__ = [
    "Pipeline",
    "PipelineData",
    "PipelineEndpoint",
    "PipelineParameter",
    "PipelineRun",
    "PublishedPipeline",
    "Schedule",
    "ScheduleRecurrence",
    "StepRun",
    "StepSequence",
]


class PipelineData(metaclass=BuildsOurs):
    """v1's ``PipelineData(name, datastore=None, output_name=None, output_mode='mount',
    output_path_on_compute=None, output_overwrite=None, data_type=None, is_directory=None,
    pipeline_output_name=None, training_output=None)``: intermediate data, an output of the
    step listing it in ``outputs=`` and an input of the steps reading it. ``datastore`` (a compat
    ``Datastore`` or its key) must be where the pipeline publishes (compat's ``Pipeline`` takes
    it as its default when every output names the same one)."""

    _ours = references.PipelineData

    def __new__(
        cls,
        name: str,
        datastore: Any = None,
        output_name: str | None = None,
        output_mode: str = "mount",
        output_path_on_compute: str | None = None,
        output_overwrite: bool | None = None,
        data_type: str | None = None,
        is_directory: bool | None = None,
        pipeline_output_name: str | None = None,
        training_output: Any = None,
        **ours: Any,
    ) -> references.PipelineData:
        if output_path_on_compute:
            no_counterpart(
                f"PipelineData(output_path_on_compute={output_path_on_compute!r})",
                "write into the folder the step receives as this output's argument.",
            )
        if training_output is not None:
            no_counterpart(
                "PipelineData(training_output=...) (AutoML / HyperDrive outputs)",
                "have the training script write its model or metrics to the output folder.",
            )
        return references.PipelineData(
            name, resource_name(datastore, "datastore"), output_name, output_mode, is_directory, **ours
        )


class StepSequence:
    """v1's ``StepSequence(steps)``: each step runs after the one before it (``run_after``),
    whether or not it reads its outputs."""

    def __init__(self, steps: Sequence[Step | StepSequence]):
        self.steps = _flatten(steps)
        for before, after in zip(self.steps, self.steps[1:], strict=False):
            after.run_after(before)


def _flatten(steps: Sequence[Any]) -> list[Step]:
    """The steps of a v1 ``steps=``: steps, StepSequences and (nested) lists of them, as v1's
    ``Pipeline(workspace=ws, steps=[compareModels])`` with ``compareModels`` a list."""
    out: list[Step] = []
    for item in steps:
        if isinstance(item, StepSequence):
            out.extend(item.steps)
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def _outputs_datastore(steps: list[Step]) -> str | None:
    """The one datastore the steps' outputs name (a PipelineData's ``datastore=``), if they name
    exactly one other than the default: v1 publishes each output where it says."""
    named = {o.datastore for s in steps for o in s.all_outputs() if o.datastore != "workspace"}
    return named.pop() if len(named) == 1 else None


class Pipeline(definition.Pipeline):
    """v1's ``Pipeline(workspace, steps, description=None, default_datastore=None,
    default_source_directory=None, resolve_closure=True, continue_on_step_failure=False)``.

    ``workspace`` is accepted and unused (the project is the workspace). A v1 pipeline has no
    name of its own; ``name=`` (default "pipeline") names its Dagster job. List every step:
    ``resolve_closure`` only adds the steps given through ``run_after``/``StepSequence``
    (an ``OutputDataset`` does not know the step that writes it).
    """

    def __init__(
        self,
        workspace: Any = None,
        steps: Sequence[Step | StepSequence] | StepSequence = (),
        description: str | None = None,
        default_datastore: Any = None,
        default_source_directory: str | Path | None = None,
        resolve_closure: bool = True,
        continue_on_step_failure: bool = False,
        *,
        name: str = "pipeline",
        environment: Any = None,
    ):
        listed = _flatten(steps.steps if isinstance(steps, StepSequence) else list(steps))
        if resolve_closure:
            listed = _closure(listed)
        for step in listed:
            _give_an_output(step)
        # v1 datasets have no name; two named alike after their files get their paths' names.
        from aml_assets.compat.core._objects import name_path_named_datasets

        name_path_named_datasets(
            i.dataset for s in listed for i in [*s.arguments, *s.inputs] if isinstance(i, DatasetInput)
        )
        super().__init__(
            name,
            listed,
            description=description,
            environment=environment,
            default_source_directory=default_source_directory,
            default_datastore=resource_name(default_datastore, "default_datastore")
            or _outputs_datastore(listed),
            continue_on_step_failure=continue_on_step_failure,
        )

    def validate(
        self, resources: Mapping[str, Any] | None = None, *, raise_errors: bool = False
    ) -> list[str]:
        """The pipeline's problems as a list (empty: valid), as v1's ``validate()`` returns."""
        return super().validate(resources, raise_errors=raise_errors)

    def publish(
        self,
        name: str,
        description: str | None = None,
        version: str | None = None,
        continue_on_step_failure: bool | None = None,
        **kw: Any,
    ) -> PublishedPipeline:
        """v1's ``publish(name, description, version, continue_on_step_failure)``; an invalid
        pipeline is refused with every problem (``PublishError``)."""
        if continue_on_step_failure is not None:
            self.continue_on_step_failure = continue_on_step_failure
        resources = kw.get("resources") or self.resources
        try:
            super().validate(resources, raise_errors=True)
        except PipelineValidationError as exc:
            raise PublishError(
                f"Cannot publish pipeline '{self.name}' as '{name}': {exc}\nFix these problems, "
                "then publish again.",
                exc.problems,
            ) from exc
        return super().publish(name, description, version, **kw)

    def submit(self, experiment_name: str, **kw: Any) -> PipelineRun:
        """v1's ``pipeline.submit(experiment_name, pipeline_parameters=..., regenerate_outputs=...)``
        (the pipeline must be in the project's ``workspace.yaml``, like any submitted run)."""
        from aml_assets.compat.core import Experiment

        return Experiment(None, experiment_name).submit(self, **kw)


def _give_an_output(step: Step) -> None:
    """A v1 step may declare no output (the Synapse sample's ``train.py`` only prints); here a
    step is the Dagster asset(s) of its outputs, so such a step gets one, ``<step>_logs``
    (its ``std_log_output``), holding what its script printed (``std_log.txt``, as v1 keeps ``user_logs/std_log.txt``
    with the step's run). Its materialization records the step's run (metrics, reuse)."""
    if not step.all_outputs():
        step.outputs.append(OutputDataset(f"{step.name}_logs"))
        step.std_log_output = f"{step.name}_logs"


def _closure(steps: list[Step]) -> list[Step]:
    """``steps`` plus every step they run after, transitively, each once, in order."""
    out: dict[int, Step] = {}

    def add(step: Step) -> None:
        if id(step) in out:
            return
        for before in step.ordered_after:
            add(before)
        out[id(step)] = step

    for step in steps:
        add(step)
    return list(out.values())


__getattr__ = missing_names(
    "aml_assets.compat.pipeline.core",
    "azureml.pipeline.core",
    {
        "OutputPortBinding": "an OutputDataset(name, format=...).",
        "InputPortBinding": "dataset.as_input(name, mode).",
        "PipelineDraft": "edit the pipeline's code and publish a new version (Pipeline.publish).",
        "TrainingOutput": "have the script write what it needs to an OutputDataset.",
        "PortDataReference": "read the OutputDataset through StepRun.get_output_data(name).",
    },
)
