"""Pipelines: steps -> a validated DAG derived from data dependencies -> Dagster Definitions.

Validation runs before anything executes (when the Definitions are built, so ``dagster job
execute`` and the UI refuse an invalid pipeline up front) and reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dagster import (
    Config,
    ConfigurableResource,
    Definitions,
)
from dagster._core.definitions.utils import DISALLOWED_NAMES
from pydantic import Field, create_model, model_validator

from aml_assets.compute.cluster import CpuCluster
from aml_assets.compute.environments import Environment
from aml_assets.compute.launch import PARAM_ENV_PREFIX, reserved_env_var
from aml_assets.compute.spark import SparkPool, memory_string_problem
from aml_assets.data.datasets import DatasetInput, OutputDataset, SourceDataset
from aml_assets.data.datastore import Datastore, check_relative_path
from aml_assets.data.references import reference_problems
from aml_assets.errors import (
    DatastoreError,
    PipelineValidationError,
)
from aml_assets.pipeline.datapath import DataPath, DataPathParameter
from aml_assets.pipeline.parameters import ParameterValueError, PipelineParameter
from aml_assets.pipeline.steps import Step, SynapseSparkStep

if TYPE_CHECKING:
    from aml_assets.pipeline.publish import PublishedPipeline

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names Dagster refuses for an op (Python keywords, "context", "config", "input", ...).
_DAGSTER_RESERVED = frozenset(DISALLOWED_NAMES)


class PipelineRunSettings(ConfigurableResource):
    """Per-run settings of a pipeline: its parameters, and whether to regenerate all outputs.

    Dagster turns this model into the run config schema, but keeps only each field's type: a
    value of the wrong type (``1e26`` for an int) or a str outside its ``choices`` (a Literal,
    i.e. a config Enum) is refused at launch, before a run exists. Bounds (``ge``/``le``) do not
    survive that conversion, so every parameter is also checked here, when Dagster builds the
    resource from the run config: that happens before any step of the run starts, and the run
    fails with a ``ParameterValueError`` naming the parameter, the value and what is allowed.
    A DataPath parameter's value naming a datastore that is not configured, or a path that is not
    relative to the datastore root, fails the same way.
    """

    regenerate_outputs: bool = Field(
        default=False, description="Run every step even when a reusable result exists."
    )
    declared_parameters: ClassVar[tuple[PipelineParameter | DataPathParameter, ...]] = ()
    #: The Datastore resource keys a DataPath parameter may name (None: not known).
    declared_datastores: ClassVar[tuple[str, ...] | None] = None

    @model_validator(mode="before")
    @classmethod
    def _check_parameter_values(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and any(p.name in data for p in cls.declared_parameters):
            from aml_assets.pipeline.tags import RUN_SETTINGS_KEY

            problems = [
                problem
                for p in cls.declared_parameters
                if p.name in data and (problem := cls._value_problem(p, data[p.name], RUN_SETTINGS_KEY))
            ]
            if problems:
                raise ParameterValueError(problems)
        return data

    @classmethod
    def _value_problem(cls, p: PipelineParameter | DataPathParameter, value: Any, key: str) -> str | None:
        if isinstance(p, DataPathParameter):
            if isinstance(value, Mapping):  # a partial mapping keeps the default's other half
                value = {**p.default_value.to_record(), **value}
            return p.value_problem(value, key, cls.declared_datastores)
        return p.value_problem(value, key)

    def datapath(self, name: str) -> DataPath:
        """The value of the DataPath parameter ``name`` in this run."""
        value = getattr(self, name)
        return DataPath(value.datastore, check_relative_path(value.datastore, value.path_on_datastore))


class DataPathSettings(Config):
    """A DataPath parameter's value in run config: a datastore and a path relative to its root."""

    datastore: str
    path_on_datastore: str


class Pipeline:
    """A set of steps; the DAG is derived from which datasets each step reads and writes."""

    def __init__(
        self,
        name: str,
        steps: Sequence[Step],
        description: str | None = None,
        datastore: str | None = None,
        environment: Environment | None = None,
        *,
        default_source_directory: Path | str | None = None,
        default_datastore: str | None = None,
        continue_on_step_failure: bool = True,
    ):
        """A pipeline named ``name`` running ``steps``.

        ``datastore`` (or Azure's name for it, ``default_datastore``; default "workspace") is
        where every step output is published and the reuse ledger kept. A step without a
        ``source_directory`` uses ``default_source_directory``. With
        ``continue_on_step_failure=True`` (the default here; Azure's is False) the steps that do
        not depend on a failed step still run; with False, no step starts after one has failed
        (those already running finish). Either way the run ends failed.
        """
        if datastore is not None and default_datastore is not None and datastore != default_datastore:
            raise ValueError(
                f"Pipeline '{name}': datastore='{datastore}' and default_datastore="
                f"'{default_datastore}' name the same setting; give one of them."
            )
        self.name = name
        #: The environment of every step that declares none (``Step.environment``).
        self.environment = environment
        self.default_source_directory = (
            Path(default_source_directory).expanduser().resolve()
            if default_source_directory is not None else None
        )
        self.continue_on_step_failure = continue_on_step_failure
        # A step relying on a pipeline default is copied with it, so a step shared by two
        # pipelines runs with each one's default.
        self.steps = [self._with_defaults(s) for s in steps]
        self.description = description
        self.datastore = datastore or default_datastore or "workspace"
        #: The resources of the last ``to_definitions`` call (None before): publishing uses them.
        self.resources: dict[str, Any] | None = None

    @property
    def default_datastore(self) -> str:
        """Azure's name for ``datastore``: where the step outputs are published."""
        return self.datastore

    def _with_defaults(self, step: Step) -> Step:
        changes: dict[str, Any] = {}
        if self.environment is not None and step.environment is None:
            changes["environment"] = self.environment
        if step.source_directory is None and self.default_source_directory is not None:
            changes["source_directory"] = self.default_source_directory
        return dataclasses.replace(step, **changes) if changes else step

    # --- structure ------------------------------------------------------------------------
    def producers(self) -> dict[str, list[str]]:
        """Output dataset name -> the steps that write it."""
        out: dict[str, list[str]] = {}
        for step in self.steps:
            for o in step.all_outputs():
                out.setdefault(o.name, []).append(step.name)
        return out

    def source_datasets(self) -> list[SourceDataset]:
        """Source datasets the steps read, each once."""
        seen: dict[str, SourceDataset] = {}
        for step in self.steps:
            for i in step.all_inputs():
                if isinstance(i.dataset, SourceDataset):
                    seen.setdefault(i.dataset.name, i.dataset)
        return list(seen.values())

    def parameters(self) -> list[PipelineParameter | DataPathParameter]:
        """Pipeline parameters (value and DataPath parameters) used by any step, each once."""
        seen: dict[str, PipelineParameter | DataPathParameter] = {}
        for step in self.steps:
            for p in [*step.parameters(), *_datapath_parameters(step)]:
                seen.setdefault(p.name, p)
        return list(seen.values())

    def upstream_steps(self, step: Step) -> set[str]:
        """Names of the steps whose outputs ``step`` reads, or that it runs after."""
        producers = self.producers()
        return {
            p for i in step.all_inputs() if isinstance(i.dataset, OutputDataset)
            for p in producers.get(i.dataset.name, [])
        } | {s.name for s in step.ordered_after}

    def ordered_after(self, step: Step) -> list[Step]:
        """The steps of this pipeline ``step`` runs after without reading their outputs (the
        pipeline's own copies, which may carry its defaults)."""
        by_name = {s.name: s for s in self.steps}
        return [by_name[s.name] for s in step.ordered_after if s.name in by_name]

    # --- validation -------------------------------------------------------------------------
    def problems(self, resources: Mapping[str, Any] | None = None) -> list[str]:
        """Every problem with this pipeline (empty when it is valid)."""
        problems: list[str] = []
        names = [s.name for s in self.steps]
        if not self.steps:
            problems.append("it has no steps; give Pipeline(steps=[...]) at least one step")
        for name in sorted({n for n in names if names.count(n) > 1}):
            same = [s for s in self.steps if s.name == name]
            if any(s.name_from_script for s in same):
                scripts = ", ".join(
                    f"'{s.script}'" + (" (name from its script)" if s.name_from_script else "")
                    for s in same
                )
                problems.append(
                    f"two steps are named '{name}' ({scripts}): a step without name= is named "
                    "after its script; give each step its own name="
                )
            else:
                problems.append(f"two steps are named '{name}'; step names must be unique")
        for name in [self.name, *names]:
            if not _NAME.match(name):
                problems.append(f"'{name}' is not a valid name; use letters, digits and underscores")
        for step in self.steps:
            if step.name in _DAGSTER_RESERVED:
                origin = f" (from its script '{step.script}')" if step.name_from_script else ""
                problems.append(
                    f"step name '{step.name}'{origin} is a word Dagster reserves; give the step "
                    "another name="
                )
        producers = self.producers()
        sources = {d.name: d for d in self.source_datasets()}
        problems.extend(_source_name_clashes(self.steps))
        for dataset, writers in sorted(producers.items()):
            if len(writers) > 1:
                problems.append(
                    f"output '{dataset}' is written by steps {', '.join(repr(w) for w in writers)}; "
                    "give each step its own OutputDataset"
                )
            if dataset in sources:
                problems.append(
                    f"'{dataset}' is both a source dataset and a step output; rename one of them"
                )
            if dataset in names:
                problems.append(f"output '{dataset}' has the same name as a step; rename one of them")
        declared = [*sources.values(), *(o for s in self.steps for o in s.all_outputs())]
        for ds in declared:
            names_of_checks = [c.check_name for c in ds.checks]
            for dup in sorted({n for n in names_of_checks if names_of_checks.count(n) > 1}):
                problems.append(
                    f"dataset '{ds.name}' declares the check '{dup}' more than once; merge them "
                    "into one (e.g. one NotNull listing every column)"
                )
        known = sorted(set(producers) | set(sources))
        for step in self.steps:
            problems.extend(self._step_problems(step, producers, known, resources))
        for ds in sources.values():
            if not _NAME.match(ds.name):
                problems.append(f"dataset name '{ds.name}' is not valid; use letters, digits and underscores")
            try:
                check_relative_path(ds.datastore, ds.path)
            except DatastoreError as exc:
                problems.append(f"dataset '{ds.name}': {exc}")
            if ds.seed is not None and not ds.seed.is_file():
                problems.append(f"dataset '{ds.name}': seed file '{ds.seed}' does not exist")
            if resources is not None and not isinstance(resources.get(ds.datastore), Datastore):
                problems.append(
                    f"dataset '{ds.name}' is on datastore '{ds.datastore}', which is not configured; "
                    f"add a Datastore resource named '{ds.datastore}'"
                )
        if resources is not None and not isinstance(resources.get(self.datastore), Datastore):
            problems.append(
                f"the pipeline writes to datastore '{self.datastore}', which is not configured; "
                f"add a Datastore resource named '{self.datastore}' (e.g. LocalDatastore())"
            )
        problems.extend(self._parameter_problems(resources))
        cycle = self._find_cycle()
        if cycle:
            problems.append(
                f"steps form a cycle: {' -> '.join(cycle)}; a step cannot depend on its own output"
            )
        return problems

    def _parameter_problems(self, resources: Mapping[str, Any] | None = None) -> list[str]:
        """Names, clashes, types, bounds, choices and defaults of the pipeline's parameters."""
        out: list[str] = []
        params: dict[str, PipelineParameter | DataPathParameter] = {}
        checked: set[int] = set()
        datastores = _datastore_keys(resources) if resources is not None else None
        datasets = {d.name for d in self.source_datasets()} | set(self.producers())
        steps = {s.name for s in self.steps}
        for step in self.steps:
            for p in [*step.parameters(), *_datapath_parameters(step)]:
                other = params.setdefault(p.name, p)
                if other is not p and type(other) is not type(p):
                    out.append(
                        f"a value parameter and a DataPath parameter are both named '{p.name}'; "
                        "rename one of them"
                    )
                    continue
                if isinstance(p, DataPathParameter):
                    if other is not p and not other.same_declaration(p):
                        out.append(
                            f"two different DataPath parameters are named '{p.name}' ({other!r} and "
                            f"{p!r}); share one DataPathParameter"
                        )
                    if id(p) in checked:
                        continue
                    checked.add(id(p))
                    if p.name in datasets or p.name in steps:
                        what = "a dataset" if p.name in datasets else "a step"
                        out.append(
                            f"DataPath parameter '{p.name}' has the same name as {what}; its asset "
                            "is named after it, so rename one of them"
                        )
                    if _reserved(p.name):
                        out.append(f"parameter name '{p.name}' is not allowed; use another name")
                    out.extend(p.declaration_problems(datastores))
                    continue
                if other is not p and other.default_value != p.default_value:
                    out.append(
                        f"two different parameters are named '{p.name}' (defaults "
                        f"{other.default_value!r} and {p.default_value!r}); share one PipelineParameter"
                    )
                elif other is not p and not other.same_declaration(p):
                    out.append(
                        f"two different parameters are named '{p.name}' ({other!r} and {p!r}); "
                        "share one PipelineParameter"
                    )
                if id(p) in checked:
                    continue
                checked.add(id(p))
                if _reserved(p.name):
                    out.append(f"parameter name '{p.name}' is not allowed; use another name")
                out.extend(p.declaration_problems())
        return out

    def _step_problems(
        self, step: Step, producers: Mapping[str, list[str]], known: list[str], resources: Mapping[str, Any] | None
    ) -> list[str]:
        out = []
        where = f"step '{step.name}'"
        out.extend(self._ordering_problems(step, where))
        out.extend(_param_problems(step, where))
        if not step.runs_code:
            pass  # a DataTransferStep: no script, no source directory (transfer.py checks it)
        elif step.source_directory is None:
            out.append(
                f"{where} has no source_directory and pipeline '{self.name}' no "
                "default_source_directory; give one of them (the folder holding "
                f"'{step.script}')"
            )
        elif not step.source_directory.is_dir():
            out.append(f"{where}: source directory '{step.source_directory}' does not exist")
        elif not step.script_path.is_file():
            out.append(
                f"{where}: script '{step.script}' not found in source directory "
                f"'{step.source_directory}'; check script= and source_directory="
            )
        for path in step.hash_paths:
            if not path.exists():
                out.append(f"{where}: hash path '{path}' does not exist")
        for i in step.all_inputs():
            if isinstance(i.dataset, OutputDataset) and i.dataset.name not in producers:
                hint = difflib.get_close_matches(i.dataset.name, known, n=1)
                out.append(
                    f"{where} reads dataset '{i.dataset.name}', which no step produces and no "
                    "datastore holds" + (f". Did you mean '{hint[0]}'?" if hint else "")
                )
        for o in step.all_outputs():
            if o.datastore not in ("workspace", self.datastore) and step.runs_code:
                # OutputDataset's default names "workspace": only another name is a choice.
                out.append(
                    f"{where}: output '{o.name}' names datastore '{o.datastore}', but every output "
                    f"of a pipeline is published on its datastore ('{self.datastore}'), where its "
                    "reuse ledger is; drop datastore= or set Pipeline(default_datastore=...)"
                )
            if not _NAME.match(o.name):
                out.append(f"{where}: output name '{o.name}' is not valid; use letters, digits and underscores")
        if not step.all_outputs():
            out.append(f"{where} has no outputs; pass an OutputDataset in its arguments or outputs=")
        out.extend(reference_problems(step.all_outputs(), where, resources))  # destination=
        out.extend(_environment_problems(step, where))
        out.extend(step.own_problems(where, resources))  # a step kind's own settings
        if isinstance(step, SynapseSparkStep):
            for label in ("driver_memory", "executor_memory"):
                value = getattr(step, label)
                if value is not None and (problem := memory_string_problem(value)):
                    out.append(f"{where}: {label} {problem}")
        if resources is not None:
            target = resources.get(step.compute_target)
            wanted = SparkPool if step.kind == "spark" else CpuCluster
            configured = sorted(k for k, v in resources.items() if isinstance(v, (SparkPool, CpuCluster)))
            if target is None:
                out.append(
                    f"{where} runs on compute target '{step.compute_target}', which is not configured "
                    f"(configured: {', '.join(configured) or 'none'}); add it to the resources or fix the name"
                )
            elif not isinstance(target, wanted):
                out.append(
                    f"{where} is a {step.kind} step but compute target '{step.compute_target}' is a "
                    f"{type(target).__name__}; use a {wanted.__name__}"
                )
            elif isinstance(target, SparkPool) and step.effective_environment().isolated and not target.is_local():
                out.append(
                    f"{where} declares an isolated environment, but Spark pool "
                    f"'{step.compute_target}' runs its Python workers elsewhere (a cluster or a "
                    "Spark Connect server), where an environment built here does not exist; use a "
                    "local pool, or drop the environment and install its packages on every worker"
                )
        return out

    def _ordering_problems(self, step: Step, where: str) -> list[str]:
        """What is wrong with the steps ``step`` runs after (``run_after``)."""
        out = []
        by_name = {s.name: s for s in self.steps}
        for other in step.ordered_after:
            if other.name not in by_name:
                out.append(
                    f"{where} runs after step '{other.name}', which is not in pipeline "
                    f"'{self.name}'; add it to steps= or drop the run_after"
                )
            elif other.name == step.name:
                out.append(f"{where} runs after a step of its own name; rename one of them")
        return out

    def _find_cycle(self) -> list[str] | None:
        by_name = {s.name: s for s in self.steps}
        edges = {s.name: sorted(self.upstream_steps(s)) for s in self.steps}
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(n: str) -> list[str] | None:
            state[n] = 1
            stack.append(n)
            for m in edges.get(n, []):
                if m not in by_name:
                    continue
                if state.get(m) == 1:
                    return [*stack[stack.index(m):], m]
                if m not in state and (found := visit(m)):
                    return found
            stack.pop()
            state[n] = 2
            return None

        for name in sorted(edges):
            if name not in state and (found := visit(name)):
                return found
        return None

    def validate(
        self, resources: Mapping[str, Any] | None = None, *, raise_errors: bool = True
    ) -> list[str]:
        """Every problem with this pipeline, as Azure's ``validate()`` returns them.

        By default an invalid pipeline raises ``PipelineValidationError`` listing them all (what
        ``to_definitions`` and ``publish`` rely on); ``raise_errors=False`` only returns the
        list (empty: valid), like Azure ML SDK v1.
        """
        problems = self.problems(resources)
        if problems and raise_errors:
            raise PipelineValidationError(self.name, problems)
        return problems

    # --- publishing -------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        description: str | None = None,
        version: str | None = None,
        *,
        datastore: Datastore | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> PublishedPipeline:
        """Publish this pipeline as ``name``: its code frozen, with an id and a version number.

        Validates first (against ``resources``, else those of the last ``to_definitions``) and
        refuses an invalid pipeline. Unchanged code and structure return the newest version as
        it is; any change makes version N+1. ``version`` is an optional free label. Records go
        to ``datastore`` (default: the workspace datastore). See ``pipeline.publish``.
        """
        from aml_assets.pipeline.publish import publish_pipeline

        return publish_pipeline(
            self, name, description, version, datastore=datastore, resources=resources
        )

    # --- Dagster ----------------------------------------------------------------------------
    def settings_resource(self, resources: Mapping[str, Any] | None = None) -> PipelineRunSettings:
        """A resource holding this pipeline's parameters (with defaults) for run config.

        With ``resources``, a run's DataPath value must name one of their Datastore resources.
        """
        params = self.parameters()
        fields = {p.name: _settings_field(p) for p in params}
        cls = create_model(
            f"{_camel(self.name)}Settings",
            __base__=PipelineRunSettings,
            # What the UI shows as the resource's description (a model made here has no docstring).
            __doc__=f"Per-run settings of pipeline '{self.name}': its parameters, and whether to "
            "regenerate every output.",
            **fields,
        )
        cls.declared_parameters = tuple(params)
        cls.declared_datastores = tuple(_datastore_keys(resources)) if resources is not None else None
        return cls()

    def to_definitions(self, resources: Mapping[str, Any], parallel: bool = False) -> Definitions:
        """Validate, then build the assets, checks and the job of this pipeline.

        By default the job runs its steps one after another in one process: script steps are
        separate processes anyway, and every Spark step shares the pool's one session (a local
        JVM start costs seconds). ``parallel=True`` runs independent steps at once, each in its
        own thread of the run's process (see ``pipeline.executor``), at most
        ``max_concurrent_steps`` per CPU cluster; Spark steps share the pool's one session and
        run one at a time. Either way this is also the default executor of the Definitions, so
        "Materialize all" in the UI runs with the pipeline's settings.
        """
        from aml_assets.pipeline.assets import build_definitions

        self.validate(resources, raise_errors=True)
        defs = build_definitions(self, resources, parallel)
        # Remembered, so `aml-assets publish -f definitions.py -j NAME` finds the pipeline
        # (with its resources) behind a job after importing the definitions file.
        self.resources = dict(resources)
        _BUILT[self.name] = self
        return defs


#: Pipelines whose Definitions were built in this process, by name (see ``built_pipeline``).
_BUILT: dict[str, Pipeline] = {}


def built_pipeline(name: str) -> Pipeline | None:
    """The pipeline named ``name`` whose ``to_definitions`` ran last in this process."""
    return _BUILT.get(name)


def built_pipeline_names() -> list[str]:
    """Names of the pipelines whose ``to_definitions`` ran in this process."""
    return sorted(_BUILT)


def _settings_field(p: PipelineParameter | DataPathParameter) -> tuple[Any, Any]:
    """The pydantic field of a parameter: its type (a Literal for str choices), bounds, help.

    A DataPath parameter is a nested config (datastore, path_on_datastore) whose defaults are
    the declared default, so the launchpad shows both and a run may change either.
    """
    if isinstance(p, DataPathParameter):
        default = p.default_value
        model = create_model(
            f"{_camel(p.name)}DataPath",
            __base__=DataPathSettings,
            datastore=(str, Field(default=default.datastore, description="A Datastore resource key.")),
            path_on_datastore=(
                str,
                Field(default=default.path_on_datastore, description="A file or folder, relative to the datastore root."),
            ),
        )
        description = f"{p.description} " if p.description else ""
        description += f"A path on a datastore ({p.format}); default {default}."
        return model, Field(default_factory=model, description=description)
    annotation: Any = p.value_type
    if p.choices and p.value_type is str:
        annotation = Literal[p.choices]  # a config Enum: refused at launch, a drop-down in the UI
    description = f"{p.description} " if p.description else ""
    description += f"Allowed: {p.allowed()}; default {p.default_value!r}."
    return annotation, Field(default=p.default_value, description=description, ge=p.min, le=p.max)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names Dagster refuses for an op (Python keywords, "context", "config", "input", ...).
_DAGSTER_RESERVED = frozenset(DISALLOWED_NAMES)


def _param_problems(step: Step, where: str) -> list[str]:
    """What is wrong with a step's ``params`` (each becomes ``AML_PARAMETER_<name>``)."""
    out = []
    for name, value in step.param_values().items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            out.append(
                f"{where}: params name {name!r} cannot be part of an environment variable name "
                f"({PARAM_ENV_PREFIX}{name}); use letters, digits and underscores"
            )
        if not isinstance(value, (str, int, float, bool, PipelineParameter)):
            out.append(
                f"{where}: params '{name}' is a {type(value).__name__}; give a str, int, float, "
                "bool or PipelineParameter (it is delivered as an environment variable)"
            )
    return out


def _source_name_clashes(steps: Sequence[Step]) -> list[str]:
    """Different data declared under one name (two DataReferences named after ``posts.json``
    in two folders): one asset per name, so one of them would be silently ignored."""
    places: dict[str, set[str]] = {}
    for step in steps:
        # Every declaration, not all_inputs(): that keeps one input per name.
        for i in [*step.arguments, *step.inputs]:
            if isinstance(i, DatasetInput) and isinstance(i.dataset, SourceDataset):
                places.setdefault(i.dataset.name, set()).add(f"{i.dataset.datastore}:{i.dataset.path}")
    return [
        f"two different datasets are named '{name}' ({', '.join(sorted(where))}); give each its "
        "own name (name=, or data_reference_name= of a DataReference)"
        for name, where in sorted(places.items())
        if len(where) > 1
    ]


def _datapath_parameters(step: Step) -> list[DataPathParameter]:
    """The DataPath parameters a step reads."""
    return [i.dataset for i in step.all_inputs() if isinstance(i.dataset, DataPathParameter)]


def _datastore_keys(resources: Mapping[str, Any]) -> list[str]:
    """The keys of the Datastore resources (what a DataPath value may name)."""
    return sorted(k for k, r in resources.items() if isinstance(r, Datastore))


def _reserved(name: str) -> bool:
    """Whether a parameter name cannot be a settings field."""
    return (
        not _NAME.match(name)
        or name.startswith("_")  # pydantic would make it private, not a setting
        or name in PipelineRunSettings.model_fields
        or hasattr(PipelineRunSettings, name)
    )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")


def _environment_problems(step: Step, where: str) -> list[str]:
    """What is wrong with a step's declared environment, found before anything runs."""
    env = step.environment
    if env is None:
        return []
    out = []
    if env.requirements_file is not None and not Path(env.requirements_file).is_file():
        out.append(
            f"{where}: requirements file '{env.requirements_file}' of its environment does not "
            "exist; fix Environment(requirements_file=...)"
        )
    python = env.python
    if python and python[0].isdigit() and not _VERSION.match(python):
        out.append(
            f"{where}: environment python '{python}' is not a Python version; use one like '3.11'"
        )
    elif python and not python[0].isdigit() and not (shutil.which(python) or Path(python).is_file()):
        out.append(
            f"{where}: environment python '{python}' is neither a Python version (like '3.11') nor "
            "an interpreter found on PATH"
        )
    for name, _ in env.env_vars:
        if reserved_env_var(name):
            out.append(
                f"{where}: environment variable '{name}' is one aml-assets sets for the script "
                "itself (AML_*, DAGSTER_PIPES_*, the interpreter's PYTHON* and VIRTUAL_ENV); "
                "use another name"
            )
    if step.kind == "spark" and env.env_vars:
        out.append(
            f"{where}: a Spark step's script runs in the Dagster process, so its environment "
            "cannot set env_vars; set spark.executorEnv.NAME in the step's conf for executors"
        )
    return out
