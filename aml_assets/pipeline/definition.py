"""Pipelines: steps -> a validated DAG derived from data dependencies -> Dagster Definitions.

Validation runs before anything executes (when the Definitions are built, so ``dagster job
execute`` and the UI refuse an invalid pipeline up front) and reports every problem at once.
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import (
    AssetIn,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    BetaWarning,
    ConfigurableResource,
    DataVersion,
    Definitions,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    asset,
    define_asset_job,
    in_process_executor,
    multi_asset,
    multiprocess_executor,
)
from pydantic import Field, create_model

from aml_assets.compute.cluster import COMPUTE_TAG, CpuCluster
from aml_assets.compute.spark import SparkPool, memory_string_problem
from aml_assets.data.checks import check_specs, run_checks
from aml_assets.data.datasets import DatasetRef, OutputDataset, SourceDataset
from aml_assets.data.datastore import Datastore, check_relative_path, open_stat_cache
from aml_assets.data.io_manager import REGISTERED_KEY, DatastoreIOManager
from aml_assets.data.sources import materialize_source
from aml_assets.errors import (
    DatasetCheckFailedError,
    DatasetError,
    DatastoreError,
    PipelineValidationError,
)
from aml_assets.pipeline.execution import StepExecution, StepResult
from aml_assets.pipeline.parameters import PipelineParameter
from aml_assets.pipeline.steps import Step, SynapseSparkStep

IO_MANAGER_KEY = "aml_io"
RUN_SETTINGS_KEY = "pipeline"
REGENERATE_TAG = "aml/regenerate_outputs"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PipelineRunSettings(ConfigurableResource):
    """Per-run settings of a pipeline: its parameters, and whether to regenerate all outputs."""

    regenerate_outputs: bool = Field(
        default=False, description="Run every step even when a reusable result exists."
    )


class Pipeline:
    """A set of steps; the DAG is derived from which datasets each step reads and writes."""

    def __init__(
        self,
        name: str,
        steps: Sequence[Step],
        description: str | None = None,
        datastore: str = "workspace",
    ):
        self.name = name
        self.steps = list(steps)
        self.description = description
        self.datastore = datastore

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

    def parameters(self) -> list[PipelineParameter]:
        """Pipeline parameters used by any step, each once."""
        seen: dict[str, PipelineParameter] = {}
        for step in self.steps:
            for p in step.parameters():
                seen.setdefault(p.name, p)
        return list(seen.values())

    def upstream_steps(self, step: Step) -> set[str]:
        """Names of the steps whose outputs ``step`` reads."""
        producers = self.producers()
        return {
            p for i in step.all_inputs() if isinstance(i.dataset, OutputDataset)
            for p in producers.get(i.dataset.name, [])
        }

    # --- validation -------------------------------------------------------------------------
    def problems(self, resources: Mapping[str, Any] | None = None) -> list[str]:
        """Every problem with this pipeline (empty when it is valid)."""
        problems: list[str] = []
        names = [s.name for s in self.steps]
        if not self.steps:
            problems.append("it has no steps; give Pipeline(steps=[...]) at least one step")
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"two steps are named '{name}'; step names must be unique")
        for name in [self.name, *names]:
            if not _NAME.match(name):
                problems.append(f"'{name}' is not a valid name; use letters, digits and underscores")
        producers = self.producers()
        sources = {d.name: d for d in self.source_datasets()}
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
        params: dict[str, PipelineParameter] = {}
        for step in self.steps:
            for p in step.parameters():
                other = params.setdefault(p.name, p)
                if other is not p and other.default_value != p.default_value:
                    problems.append(
                        f"two different parameters are named '{p.name}' (defaults "
                        f"{other.default_value!r} and {p.default_value!r}); share one PipelineParameter"
                    )
                if not _NAME.match(p.name) or p.name == "regenerate_outputs":
                    problems.append(f"parameter name '{p.name}' is not allowed; use another name")
                try:
                    p.value_type  # noqa: B018 - raises on an unsupported type
                except TypeError as exc:
                    problems.append(str(exc))
        cycle = self._find_cycle()
        if cycle:
            problems.append(
                f"steps form a cycle: {' -> '.join(cycle)}; a step cannot depend on its own output"
            )
        return problems

    def _step_problems(
        self, step: Step, producers: Mapping[str, list[str]], known: list[str], resources: Mapping[str, Any] | None
    ) -> list[str]:
        out = []
        where = f"step '{step.name}'"
        if not step.source_directory.is_dir():
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
            if not _NAME.match(o.name):
                out.append(f"{where}: output name '{o.name}' is not valid; use letters, digits and underscores")
        if not step.all_outputs():
            out.append(f"{where} has no outputs; pass an OutputDataset in its arguments or outputs=")
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

    def validate(self, resources: Mapping[str, Any] | None = None) -> None:
        """Raise ``PipelineValidationError`` listing every problem, if there are any."""
        problems = self.problems(resources)
        if problems:
            raise PipelineValidationError(self.name, problems)

    # --- Dagster ----------------------------------------------------------------------------
    def settings_resource(self) -> PipelineRunSettings:
        """A resource holding this pipeline's parameters (with defaults) for run config."""
        fields = {
            p.name: (p.value_type, Field(default=p.default_value, description=p.description))
            for p in self.parameters()
        }
        cls = create_model(f"{_camel(self.name)}Settings", __base__=PipelineRunSettings, **fields)
        return cls()

    def to_definitions(self, resources: Mapping[str, Any], parallel: bool = False) -> Definitions:
        """Validate, then build the assets, checks and the job of this pipeline.

        By default the job runs its steps one after another in one process: script steps are
        separate processes anyway, and every Spark step shares the pool's one session (a local
        JVM start costs seconds). ``parallel=True`` runs independent steps at once, each in its
        own process, at most ``max_concurrent_steps`` per CPU cluster; Spark steps then each
        start their own session.
        """
        self.validate(resources)
        assets: list[AssetsDefinition] = [
            _source_asset(ds) for ds in self.source_datasets()
        ] + [_step_asset(self, step) for step in self.steps]
        job = define_asset_job(
            self.name,
            selection=[k for a in assets for k in a.keys],
            description=self.description,
            executor_def=_parallel_executor(resources) if parallel else in_process_executor,
        )
        return Definitions(
            assets=assets,
            jobs=[job],
            resources={
                **resources,
                IO_MANAGER_KEY: DatastoreIOManager(datastore=resources[self.datastore]),
                RUN_SETTINGS_KEY: self.settings_resource(),
            },
        )


def _parallel_executor(resources: Mapping[str, Any]):
    """The multiprocess executor, limited per CPU cluster to its ``max_concurrent_steps``."""
    limits = [
        {"key": COMPUTE_TAG, "value": key, "limit": r.max_concurrent_steps}
        for key, r in resources.items()
        if isinstance(r, CpuCluster)
    ]
    return multiprocess_executor.configured({"tag_concurrency_limits": limits} if limits else {})


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _output(ref: DatasetRef, name: str | None, metadata: dict[str, Any]) -> Output:
    """An Output whose Dagster data version is the content hash, so staleness agrees with reuse."""
    with warnings.catch_warnings():
        # data_version on Output is marked beta; it is exactly the API Dagster's staleness uses.
        warnings.simplefilter("ignore", BetaWarning)
        return Output(
            ref,
            output_name=name or "result",
            data_version=DataVersion(ref.content_hash),
            metadata=metadata,
        )


def _check_failure(failures: Mapping[str, list[str]]) -> DatasetCheckFailedError | None:
    """The error to fail a step with when a blocking check failed (None if none did)."""
    failed = {name: f for name, f in failures.items() if f}
    if not failed:
        return None
    detail = "; ".join(f"'{name}' failed {', '.join(f)}" for name, f in failed.items())
    return DatasetCheckFailedError(
        f"Blocking check(s) failed: {detail}. The dataset was not registered and downstream "
        "steps do not run; fix the data or the step, or declare the check with blocking=False."
    )


def _source_asset(ds: SourceDataset) -> AssetsDefinition:
    @asset(
        name=ds.name,
        description=ds.description or f"Source dataset at '{ds.path}' on datastore '{ds.datastore}'",
        io_manager_key=IO_MANAGER_KEY,
        required_resource_keys={ds.datastore},
        kinds={"dataset", ds.format if ds.format != "files" else "file"},
        group_name="datasets",
        check_specs=check_specs(ds.name, ds.checks),
    )
    def _source(context):
        store: Datastore = getattr(context.resources, ds.datastore)
        ref, metadata = materialize_source(ds, ds.datastore, store, context.log)
        results, failures = run_checks(ds.name, ds.checks, ref, store, store) if ds.checks else ([], [])
        if error := _check_failure({ds.name: failures}):
            yield from results  # reported first, so the failed checks show in the UI
            raise error
        yield _output(ref, None, metadata)
        yield from results

    return _source


def _output_metadata(ref: DatasetRef, result: StepResult, published: Mapping[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "fingerprint": MetadataValue.text(result.fingerprint),
        "reused": MetadataValue.bool(result.reused),
        "content_hash": MetadataValue.text(ref.content_hash),
        "uri": MetadataValue.url(ref.uri) if not ref.uri.startswith("file:") else MetadataValue.path(ref.uri.removeprefix("file://")),
        "file_count": MetadataValue.int(ref.file_count),
        "byte_count": MetadataValue.int(ref.byte_count),
        "lineage": MetadataValue.json(
            {"run_id": (ref.producer or {}).get("run_id"), "step": (ref.producer or {}).get("step"),
             "fingerprint": result.fingerprint, "inputs": ref.input_versions}
        ),
    }
    if result.reused:
        meta["reused_from_run"] = MetadataValue.text(result.reused_from_run or "")
    else:
        meta["runs_because"] = MetadataValue.text("; ".join(result.reasons))
    stats = published.get("stats")
    if stats:
        meta["dagster/row_count"] = MetadataValue.int(stats["row_count"])
        meta["dagster/column_schema"] = MetadataValue.table_schema(
            TableSchema(columns=[TableColumn(name=n, type=t) for n, t in stats["columns"]])
        )
        meta["preview"] = MetadataValue.md(stats["preview"])
    for name, value in result.metrics.items():
        if isinstance(value, bool):
            meta[name] = MetadataValue.bool(value)
        elif isinstance(value, int):
            meta[name] = MetadataValue.int(value)
        elif isinstance(value, float):
            meta[name] = MetadataValue.float(value)
        else:
            meta[name] = MetadataValue.text(str(value))
    return meta


def _step_asset(pipeline: Pipeline, step: Step) -> AssetsDefinition:
    inputs = {i.dataset.name: i.dataset for i in step.all_inputs()}
    outs = {
        o.name: AssetOut(
            io_manager_key=IO_MANAGER_KEY,
            description=o.description,
            metadata={
                REGISTERED_KEY: o.registered,
                "aml/description": o.description or "",
                "aml/tags": json.dumps(o.tags),
            },
            kinds={"dataset", o.format if o.format != "files" else "file"},
            group_name=pipeline.name,
        )
        for o in step.all_outputs()
    }
    siblings = frozenset(
        s.script
        for s in pipeline.steps
        if s is not step and s.source_directory == step.source_directory and s.script != step.script
    )
    stores = {pipeline.datastore} | {
        d.datastore for d in inputs.values() if isinstance(d, SourceDataset)
    }

    @multi_asset(
        name=step.name,
        outs=outs,
        check_specs=[spec for o in step.all_outputs() for spec in check_specs(o.name, o.checks)],
        ins={name: AssetIn(key=AssetKey(name)) for name in inputs},
        required_resource_keys={step.compute_target, RUN_SETTINGS_KEY, *stores},
        op_tags={COMPUTE_TAG: step.compute_target},
        description=step.description or f"{step.kind} step running {step.script}",
    )
    def _step(context, **refs):
        settings = getattr(context.resources, RUN_SETTINGS_KEY)
        regenerate = settings.regenerate_outputs or (
            context.run.tags.get(REGENERATE_TAG, "").lower() in ("1", "true", "yes")
        )
        for name, ref in refs.items():
            if not isinstance(ref, DatasetRef):
                raise DatasetError(f"Input '{name}' of step '{step.name}' is not a dataset reference.")
        execution = StepExecution(
            step=step,
            run_id=context.run_id,
            log=context.log,
            datastore=getattr(context.resources, pipeline.datastore),
            datastore_key=pipeline.datastore,
            input_refs=dict(refs),
            input_stores={k: getattr(context.resources, k) for k in stores},
            parameter_values={p.name: getattr(settings, p.name) for p in step.parameters()},
            regenerate=regenerate,
            compute=getattr(context.resources, step.compute_target),
            stat_cache=open_stat_cache(),
            dagster_context=context,
            sibling_scripts=siblings,
        )
        try:
            result = execution.execute()
        finally:
            execution.stat_cache.close()
        workspace = getattr(context.resources, pipeline.datastore)
        results, failures = [], {}
        for out in step.all_outputs():
            if out.checks:
                found, failures[out.name] = run_checks(
                    out.name, out.checks, result.refs[out.name], workspace, workspace
                )
                results += found
        if error := _check_failure(failures):
            yield from results  # reported first, so the failed checks show in the UI
            raise error
        for name, ref in result.refs.items():
            yield _output(ref, name, _output_metadata(ref, result, result.outputs[name]))
        yield from results

    return _step
