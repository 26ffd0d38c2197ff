"""A validated pipeline as Dagster definitions: one asset per source dataset, one multi-asset per
step (its outputs), checks on them, and the pipeline's job."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetIn,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    BetaWarning,
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
)
from dagster._utils.tags import is_valid_strict_tag_value, is_valid_tag_key

from aml_assets.compute.cluster import COMPUTE_TAG, CpuCluster
from aml_assets.compute.spark import SparkPool
from aml_assets.data.checks import ExpectedColumns, check_specs, needs_history, run_checks
from aml_assets.data.datasets import DatasetRef, SourceDataset
from aml_assets.data.datastore import Datastore, open_stat_cache
from aml_assets.data.io_manager import EXTRA_TAGS_KEY, REGISTERED_KEY, DatastoreIOManager
from aml_assets.data.references import deliver_destinations, destination_datastores
from aml_assets.data.registry import DatasetRegistry
from aml_assets.data.sources import materialize_source
from aml_assets.errors import DatasetCheckFailedError, DatasetError
from aml_assets.pipeline.datapath import DataPathParameter
from aml_assets.pipeline.execution import StepExecution, StepResult
from aml_assets.pipeline.executor import pipeline_executor
from aml_assets.pipeline.instigators import instigators_for
from aml_assets.pipeline.snapshots import step_for_run
from aml_assets.pipeline.tags import REGENERATE_TAG, RUN_SETTINGS_KEY, is_true
from aml_assets.reuse.records import PublishedOutput

if TYPE_CHECKING:
    from aml_assets.pipeline.definition import Pipeline
    from aml_assets.pipeline.steps import Step

IO_MANAGER_KEY = "aml_io"
#: Tag of every step output's materialization: "reused" (an earlier run's result, nothing
#: recomputed) or "computed"; the UI shows it on the asset's events and in the run's logs.
REUSE_TAG = "aml/reuse"


#: Steps of a parallel run finish in threads of one process: their run-tag writes (a read and a
#: rewrite of the whole run record) must not interleave, or one step's tag is lost.
_RUN_TAGS_LOCK = threading.Lock()


def build_definitions(pipeline: Pipeline, resources: Mapping[str, Any], parallel: bool) -> Definitions:
    """The assets, checks, job and resources of a (validated) pipeline."""
    # A DataPath parameter may name any of them in a run.
    datastores = sorted(k for k, r in resources.items() if isinstance(r, Datastore))
    # One group per pipeline: the UI's lineage draws a lone group's assets directly, where
    # several groups open as collapsed boxes.
    group = pipeline.name
    # Source datasets are hashed by whichever node runs their op: on a Celery cluster, a worker
    # of its (first) queue; no worker serves Celery's default queue.
    source_tags = _step_op_tags(None, resources)
    assets: list[AssetsDefinition] = [
        _source_asset(ds, group, source_tags) for ds in pipeline.source_datasets()
    ] + [
        _datapath_asset(p, datastores, group, source_tags)
        for p in pipeline.parameters()
        if isinstance(p, DataPathParameter)
    ] + [
        _step_asset(pipeline, step, datastores, _step_op_tags(step.compute_target, resources))
        for step in pipeline.steps
    ]
    # The pipeline's executor is also the Definitions' default, so whatever a user launches
    # (the job, "Materialize all", one asset, a re-execution) runs with the same settings. A
    # cluster of many machines (Celery workers, Kubernetes) brings its own executor, parallel
    # or not: spreading steps over nodes is what it is for.
    executor = _cluster_executor(resources) or (
        _parallel_executor(resources) if parallel else in_process_executor
    )
    job = define_asset_job(
        pipeline.name,
        selection=[k for a in assets for k in a.keys],
        description=pipeline.description,
        executor_def=executor,
    )
    schedules, sensors = instigators_for(pipeline, resources)
    return Definitions(
        assets=assets,
        jobs=[job],
        schedules=schedules,
        sensors=sensors,
        executor=executor,
        resources={
            **resources,
            IO_MANAGER_KEY: DatastoreIOManager.with_datastores(
                pipeline.datastore, {k: r for k, r in resources.items() if isinstance(r, Datastore)}
            ),
            RUN_SETTINGS_KEY: pipeline.settings_resource(resources),
        },
    )


def _cluster_executor(resources: Mapping[str, Any]):
    """The executor of a pipeline with a Celery CPU cluster (``aml_celery``) or a Kubernetes
    one (``k8s_job_executor``), else None."""
    from aml_assets.compute.celery_cluster import CeleryCpuCluster, celery_executor
    from aml_assets.compute.kubernetes import KubernetesCluster, kubernetes_executor
    from aml_assets.errors import ComputeTargetError
    from aml_assets.pipeline.orphans import watch_orchestrator

    kinds = {
        name: kind for kind in (CeleryCpuCluster, KubernetesCluster)
        for name, r in resources.items() if isinstance(r, kind)
    }
    if len(set(kinds.values())) > 1:
        # One run has one executor: Celery workers cannot start Kubernetes jobs, nor the reverse.
        raise ComputeTargetError(
            "A pipeline's steps all run under one executor, but its compute targets mix Celery "
            f"clusters and Kubernetes clusters ({', '.join(f'{n}: {k.__name__}' for n, k in sorted(kinds.items(), key=lambda i: i[0]))}): "
            "configure every CPU target of the pipeline as the same kind."
        )
    # The orchestrator tags the run with its own process (the steps' processes are workers'),
    # and is the one writer of the steps' reuse tags.
    return celery_executor(
        resources, on_run_start=watch_orchestrator, run_tags_of=_reuse_run_tags
    ) or kubernetes_executor(resources)


def _reuse_run_tags(event: Any) -> dict[str, str]:
    """The run tag a step's materialization event implies (``aml/reuse/<step>``), or none."""
    if not event.is_step_materialization or not event.step_key:
        return {}
    value = (event.step_materialization_data.materialization.tags or {}).get(REUSE_TAG)
    return {f"{REUSE_TAG}/{event.step_key}": value} if value else {}


def _step_op_tags(target: str | None, resources: Mapping[str, Any]) -> dict[str, str]:
    """Op tags a step's compute target adds (``target`` None: a source dataset's op): its
    Celery queue (every op of a run on Celery workers has one) or its Kubernetes pod settings."""
    from aml_assets.compute.celery_cluster import QUEUE_TAG, CeleryCpuCluster, step_queue

    celery = sorted(k for k, r in resources.items() if isinstance(r, CeleryCpuCluster))
    if celery:
        return {QUEUE_TAG: step_queue(target or celery[0], resources)}
    if target is None:
        return {}
    from aml_assets.compute.kubernetes import kubernetes_op_tags

    return kubernetes_op_tags(target, resources.get(target))


def _parallel_executor(resources: Mapping[str, Any]):
    """Steps in threads of the run's process (see ``pipeline.executor`` for why), at most
    ``max_concurrent_steps`` per CPU cluster and one Spark step per pool at a time."""
    limits = [
        {"key": COMPUTE_TAG, "value": key, "limit": r.max_concurrent_steps}
        for key, r in resources.items()
        if isinstance(r, CpuCluster)
    ] + [
        {"key": COMPUTE_TAG, "value": key, "limit": 1}
        for key, r in resources.items()
        if isinstance(r, SparkPool)
    ]
    return pipeline_executor(max(1, sum(limit["limit"] for limit in limits)), limits)


def _output(
    ref: DatasetRef, name: str | None, metadata: dict[str, Any], tags: Mapping[str, str] | None = None
) -> Output:
    """An Output whose Dagster data version is the content hash, so staleness agrees with reuse."""
    with warnings.catch_warnings():
        # data_version on Output is marked beta; it is exactly the API Dagster's staleness uses.
        warnings.simplefilter("ignore", BetaWarning)
        return Output(
            ref,
            output_name=name or "result",
            data_version=DataVersion(ref.content_hash),
            metadata=metadata,
            tags=dict(tags or {}),
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


def _run_checks(dataset: str, checks: list, ref: DatasetRef, store: Datastore):
    previous = (
        DatasetRegistry(store).columns_before(dataset, ref.content_hash) if needs_history(checks) else None
    )
    return run_checks(dataset, checks, ref, store, previous)


def _source_asset(ds: SourceDataset, group: str, op_tags: Mapping[str, str] | None = None) -> AssetsDefinition:
    @asset(
        name=ds.name,
        op_tags=dict(op_tags or {}),
        description=ds.description or f"Source dataset at '{ds.path}' on datastore '{ds.datastore}'",
        io_manager_key=IO_MANAGER_KEY,
        required_resource_keys={ds.datastore},
        kinds={"dataset", ds.format if ds.format != "files" else "file"},
        group_name=group,
        check_specs=check_specs(ds.name, ds.checks),
    )
    def _source(context):
        store: Datastore = getattr(context.resources, ds.datastore)
        yield from _describe_source(context, ds, store)

    return _source


def _describe_source(context, ds: SourceDataset, store: Datastore, missing_hint: str | None = None, **extra: Any):
    """Check, hash and describe a source dataset; yield its output and check results."""
    ref, metadata = materialize_source(ds, ds.datastore, store, context.log, missing_hint=missing_hint)
    results, failures = _run_checks(ds.name, ds.checks, ref, store) if ds.checks else ([], [])
    if error := _check_failure({ds.name: failures}):
        yield from results  # reported first, so the failed checks show in the UI
        raise error
    yield _output(ref, None, {**metadata, **extra})
    yield from results


def _datapath_asset(
    p: DataPathParameter, datastores: list[str], group: str, op_tags: Mapping[str, str] | None = None
) -> AssetsDefinition:
    """A DataPath parameter as a source asset: the run's value says where the data is."""

    @asset(
        name=p.name,
        op_tags=dict(op_tags or {}),
        description=p.description or f"DataPath parameter (default {p.default_value}); set per run",
        io_manager_key=IO_MANAGER_KEY,
        # A run may name any datastore, so every one is available to the asset.
        required_resource_keys={RUN_SETTINGS_KEY, *datastores},
        kinds={"dataset", p.format if p.format != "files" else "file"},
        group_name=group,
        check_specs=check_specs(p.name, p.checks),
    )
    def _datapath(context):
        value = getattr(context.resources, RUN_SETTINGS_KEY).datapath(p.name)
        context.log.info(f"DataPath parameter '{p.name}' reads {value}")
        yield from _describe_source(
            context,
            p.source(value),
            getattr(context.resources, value.datastore),
            missing_hint=(
                f"Upload it, or set resources.{RUN_SETTINGS_KEY}.config.{p.name} to a path that "
                f"exists (default {p.default_value})."
            ),
            datapath=MetadataValue.text(str(value)),
        )

    return _datapath


def reuse_summary(step: str, result: StepResult) -> str:
    """One line saying whether a step's outputs were reused or computed, and why."""
    if result.reused:
        return f"reused: outputs of run {(result.reused_from_run or '?')[:8]} (nothing changed)"
    return f"computed: step '{step}' ran because {'; '.join(result.reasons) or 'it was asked to'}"


def _lineage_markdown(ref: DatasetRef, result: StepResult) -> str:
    """Where an output came from, as a small markdown table (the UI renders it)."""
    producer = ref.producer or {}
    rows = [
        ("step", f"`{producer.get('step') or '?'}`"),
        ("produced by run", f"`{producer.get('run_id') or '?'}`"),
        ("fingerprint", f"`{result.fingerprint[:16]}`"),
    ]
    for name, seen in sorted(ref.input_versions.items()):
        seen = seen if isinstance(seen, Mapping) else {"content_hash": str(seen)}
        version = f"version {seen['version']}, " if seen.get("version") is not None else ""
        rows.append((f"input `{name}`", f"{version}content `{seen.get('content_hash')}`"))
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _column_descriptions(checks: list) -> dict[str, str]:
    """Column -> description, from the types an ExpectedColumns check declares."""
    return {
        name: f"declared {expected} (checked by {c.check_name})"
        for c in checks
        if isinstance(c, ExpectedColumns)
        for name, expected in c.columns.items()
    }


def _output_metadata(
    ref: DatasetRef, result: StepResult, published: PublishedOutput, step: str, checks: list
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        # First, so it is the first line of the materialization in the UI (an "aml/" key: the
        # run summary does not take it for a metric).
        REUSE_TAG: MetadataValue.text(reuse_summary(step, result)),
        "fingerprint": MetadataValue.text(result.fingerprint),
        "reused": MetadataValue.bool(result.reused),
        "content_hash": MetadataValue.text(ref.content_hash),
        "uri": MetadataValue.url(ref.uri) if not ref.uri.startswith("file:") else MetadataValue.path(ref.uri.removeprefix("file://")),
        "file_count": MetadataValue.int(ref.file_count),
        "byte_count": MetadataValue.int(ref.byte_count),
        "lineage": MetadataValue.md(_lineage_markdown(ref, result)),
    }
    if result.reused:
        meta["reused_from_run"] = MetadataValue.text(result.reused_from_run or "")
    else:
        meta["runs_because"] = MetadataValue.text("; ".join(result.reasons))
    stats = published.stats
    if stats:
        meta["dagster/row_count"] = MetadataValue.int(stats["row_count"])
        meta["dagster/column_schema"] = MetadataValue.table_schema(
            TableSchema(
                columns=[
                    TableColumn(name=n, type=t, description=declared.get(n))
                    for declared in [_column_descriptions(checks)]
                    for n, t in stats["columns"]
                ]
            )
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


def _split_tags(tags: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(tags Dagster can show as asset tags, the others): Dagster's tag syntax is strict."""
    shown = {
        k: v for k, v in tags.items() if is_valid_tag_key(k) and is_valid_strict_tag_value(v)
    }
    return shown, {k: v for k, v in tags.items() if k not in shown}


def _asset_out(pipeline: Pipeline, step: Step, o: Any) -> AssetOut:
    """A step output as a Dagster asset: the dataset's description and tags as the asset's own,
    and kinds naming its format, the step's engine and the step (drawn under its node)."""
    tags, other_tags = _split_tags(o.tags)
    metadata: dict[str, Any] = {REGISTERED_KEY: o.registered}
    if other_tags:
        metadata[EXTRA_TAGS_KEY] = json.dumps(other_tags)
    return AssetOut(
        io_manager_key=IO_MANAGER_KEY,
        description=o.description,
        metadata=metadata,
        tags=tags,
        kinds={o.format if o.format != "files" else "file", step.kind, step.name},
        group_name=pipeline.name,
    )


def _step_asset(
    pipeline: Pipeline, step: Step, datastores: list[str], op_tags: Mapping[str, str] | None = None
) -> AssetsDefinition:
    inputs = {i.dataset.name: i.dataset for i in step.all_inputs()}
    outs = {o.name: _asset_out(pipeline, step, o) for o in step.all_outputs()}
    stores = {pipeline.datastore} | {
        d.datastore for d in inputs.values() if isinstance(d, SourceDataset)
    } | destination_datastores(step.all_outputs())  # OutputFileDatasetConfig(destination=)
    if any(isinstance(d, DataPathParameter) for d in inputs.values()):
        stores |= set(datastores)  # a run's DataPath value may name any of them
    # Outputs on another datastore (a DataTransferStep's destination): its own, and those read.
    stores |= {
        o.datastore for s in pipeline.steps if not s.runs_code
        for o in s.all_outputs() if s is step or o.name in inputs
    }

    @multi_asset(
        name=step.name,
        outs=outs,
        check_specs=[spec for o in step.all_outputs() for spec in check_specs(o.name, o.checks)],
        ins={name: AssetIn(key=AssetKey(name)) for name in inputs},
        # run_after: ordered after those steps' outputs, carrying no data (issue 11).
        deps=[
            AssetKey(o.name) for s in pipeline.ordered_after(step) for o in s.all_outputs() if o.name not in inputs
        ],
        required_resource_keys={step.compute_target, RUN_SETTINGS_KEY, *stores},
        op_tags={COMPUTE_TAG: step.compute_target, **(op_tags or {})},
        description=step.description or f"{step.kind} step running {step.script}",
    )
    def _step(context, **refs):
        from aml_assets.compute.celery_worker import running_in_worker
        from aml_assets.compute.secrets import collect_secrets
        from aml_assets.pipeline.orphans import watch_run

        watch_run(context)  # tag this run with its process; fail runs whose process is gone
        settings = getattr(context.resources, RUN_SETTINGS_KEY)
        regenerate = settings.regenerate_outputs or (
            is_true(context.run.tags.get(REGENERATE_TAG))
        )
        for name, ref in refs.items():
            if not isinstance(ref, DatasetRef):
                raise DatasetError(f"Input '{name}' of step '{step.name}' is not a dataset reference.")
        workspace = getattr(context.resources, pipeline.datastore)
        # A run of a published version runs that version's frozen scripts, not the live folder.
        run_step = step_for_run(step, context.run.tags, workspace, context.log)
        # A step kind with its own way to run (CommandStep, DataTransferStep) names it.
        execution = getattr(run_step, "execution_type", StepExecution)(
            step=run_step,
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
            secrets=collect_secrets(getattr(context.resources, k) for k in stores),
            continue_on_failure=pipeline.continue_on_step_failure,
        )
        try:
            result = execution.execute()
        finally:
            execution.stat_cache.close()
        results, failures = [], {}
        for out in step.all_outputs():
            if out.checks:
                found, failures[out.name] = _run_checks(out.name, out.checks, result.refs[out.name], workspace)
                results += found
        if error := _check_failure(failures):
            yield from results  # reported first, so the failed checks show in the UI
            raise error
        deliver_destinations(  # v1 OutputFileDatasetConfig(destination=)
            step.all_outputs(), result.refs, {k: getattr(context.resources, k) for k in stores},
            workspace, context.run_id, context.log,
        )
        # A run tag per step (shown on the run's page and in the runs list): which steps of the
        # run were reused and which computed, without opening any event. On Celery workers the
        # orchestrator writes it from the materialization (_reuse_run_tags): Dagster rewrites the
        # whole run record to add a tag, so steps tagging at once from several processes lose
        # each other's tags.
        # In one process (the threaded executor's steps) a lock orders the writes.
        if not running_in_worker():
            with _RUN_TAGS_LOCK:
                context.instance.add_run_tags(
                    context.run_id, {f"{REUSE_TAG}/{step.name}": "reused" if result.reused else "computed"}
                )
        checks_of = {o.name: o.checks for o in step.all_outputs()}
        for name, ref in result.refs.items():
            meta = _output_metadata(ref, result, result.outputs[name], step.name, checks_of.get(name, []))
            yield _output(ref, name, meta, {REUSE_TAG: "reused" if result.reused else "computed"})
        yield from results

    return _step
