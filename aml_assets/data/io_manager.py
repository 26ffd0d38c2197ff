"""The datastore IO manager: hands dataset references between assets and registers versions.

Step outputs are already published by the step itself (atomically, content-addressed); what
this IO manager stores is the small ``DatasetRef`` that says where, per run
(``_refs/<asset>/<run_id>.json``, written atomically), so concurrent runs never read each other's
references. Outputs declared as registered become dataset versions here.

Which reference an input reads (what Dagster 1.13 tells an input about its upstream):

- full run: ``upstream_output.run_id`` is this run, so this run's reference.
- re-execution from failure (``ReexecutionOptions.from_failure``, step selection): the job is
  whole and ``upstream_output.run_id`` names the ancestor run that produced the output, so that
  run's reference, never another run's. If it is gone, the input fails clearly; it never falls
  back to a newer run's result.
- the upstream asset is not part of this run's job: a subset run (``materialize([...])``,
  ``asset_selection=``) or a re-execution "from asset failure" (the UI's and run retries'
  strategy, which re-runs a job subset holding only the failed assets). Dagster then gives a
  placeholder run id. The reference of the nearest run in this run's lineage (this run, its
  parent, ... its root) is read: a re-execution reads what the run it re-executes materialized
  or read. Only a run with no parent falls back to ``latest.json``. Whatever was read is pinned
  under this run's id (``_refs/<asset>/<run_id>.json``, created exclusively), so every step of
  the run, and any later re-execution of it, reads the same content.

A reference taken from another run that points outside the immutable published outputs (a
source dataset, whose file can be rewritten in place) is re-hashed before use, and refused if
the data changed since: reading new bytes under the old content hash would poison reuse.
"""

import json
from collections.abc import Mapping
from typing import Any

from dagster import (
    ConfigurableIOManager,
    DagsterInvariantViolationError,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)
from pydantic import ValidationError

from aml_assets.data import layout
from aml_assets.data.content import manifest_digest
from aml_assets.data.datasets import DatasetRef, read_pandas
from aml_assets.data.datastore import Datastore, open_stat_cache
from aml_assets.data.registry import DatasetRegistry
from aml_assets.errors import DatasetError

REGISTERED_KEY = "aml/registered"
#: Definition metadata holding, as JSON, the dataset tags Dagster cannot show as asset tags
#: (keys or values outside Dagster's tag syntax); the others are the asset's own tags.
EXTRA_TAGS_KEY = "aml/tags"


def registration_info(context: OutputContext) -> tuple[str | None, dict[str, str]]:
    """(description, tags) to register an output with: the asset's own Dagster description and
    tags (not Dagster's ``dagster/...`` system tags such as kinds), plus the tags kept aside in
    ``EXTRA_TAGS_KEY``."""
    definition = context.definition_metadata or {}
    try:
        spec = context.asset_spec
    except DagsterInvariantViolationError:  # an output context built without its asset
        spec = None
    tags = {k: v for k, v in (spec.tags if spec else {}).items() if not k.startswith("dagster/")}
    tags.update(json.loads(definition.get(EXTRA_TAGS_KEY) or "{}"))
    return (spec.description if spec else None), tags


#: What Dagster 1.13 gives as ``upstream_output.run_id`` when the upstream asset is not part of
#: the run (a subset run): the output context is built without a run (``RUN_ID_PLACEHOLDER``).
_NO_RUN = "__EPHEMERAL_RUN_ID"


def _asset_name(context: InputContext | OutputContext) -> str:
    return context.asset_key.to_python_identifier()


def _producing_run(context: InputContext) -> str | None:
    """The run that materialized the upstream output in this run's plan, or None when the
    upstream is not part of the plan (a subset run) or Dagster cannot tell."""
    upstream = context.upstream_output
    if upstream is None:
        return None
    try:
        run_id = upstream.run_id
    except DagsterInvariantViolationError:  # a re-execution whose lineage never produced it
        return None
    return None if run_id == _NO_RUN else run_id


def _lineage(context: InputContext) -> list[str]:
    """This run's id, then its parent's, and so on up to the root run (re-executions)."""
    try:
        run = context.step_context.dagster_run
    except DagsterInvariantViolationError:
        return []
    chain = [run.run_id]
    parent = run.parent_run_id
    try:
        instance = context.instance
    except DagsterInvariantViolationError:
        instance = None
    while parent and parent not in chain:
        chain.append(parent)
        found = instance.get_run_by_id(parent) if instance is not None else None
        parent = found.parent_run_id if found is not None else None
    if run.root_run_id and run.root_run_id not in chain:
        chain.append(run.root_run_id)
    return chain


class DatastoreIOManager(ConfigurableIOManager):
    """Stores dataset references on the workspace datastore; registers dataset versions."""

    datastore: ResourceDependency[Datastore]
    #: The workspace datastore's resource key; the resource keys of the other datastores, held
    #: in the fields ``source_store_<i>`` of ``with_datastores``' subclass (a recorded
    #: reference is checked on the store it is on).
    datastore_key: str = "workspace"
    other_keys: list[str] = []

    @staticmethod
    def with_datastores(workspace_key: str, stores: Mapping[str, Datastore]) -> "DatastoreIOManager":
        """The IO manager of a pipeline whose sources may be on several datastores.

        Each other datastore becomes a nested resource field of a subclass made here: Dagster
        builds nested resources field by field (a ``dict`` of resources would be flattened to the
        base class's config and lose the subclass's fields, such as a folder or a container).
        """
        others = sorted(key for key in stores if key != workspace_key)
        if not others:
            return DatastoreIOManager(datastore=stores[workspace_key], datastore_key=workspace_key)
        fields = {f"source_store_{i}": ResourceDependency[Datastore] for i in range(len(others))}
        cls = type("DatastoreIOManagerWithSources", (DatastoreIOManager,), {"__annotations__": fields})
        return cls(
            datastore=stores[workspace_key],
            datastore_key=workspace_key,
            other_keys=others,
            **{f"source_store_{i}": stores[key] for i, key in enumerate(others)},
        )

    def _store_for(self, key: str) -> Datastore | None:
        if key == self.datastore_key:
            return self.datastore
        if key in self.other_keys:
            return getattr(self, f"source_store_{self.other_keys.index(key)}", None)
        return None

    def handle_output(self, context: OutputContext, obj: DatasetRef) -> None:
        if not isinstance(obj, DatasetRef):
            raise DatasetError(
                f"Asset '{_asset_name(context)}' returned {type(obj).__name__}; the datastore IO "
                "manager stores DatasetRef values produced by aml-assets steps."
            )
        definition = context.definition_metadata or {}
        if definition.get(REGISTERED_KEY):
            registry = DatasetRegistry(self.datastore)
            description, tags = registration_info(context)
            done = registry.register_ref(obj, description=description, tags=tags)
            obj = obj.model_copy(update={"version": done.version})
            if done.replaced_corrupt is not None:
                context.log.error(done.describe(obj.name))
            else:
                context.log.info(done.describe(obj.name))
            metadata: dict[str, Any] = {
                "dataset_version": MetadataValue.int(done.version),
                "dataset_version_created": MetadataValue.bool(done.created),
            }
            if done.same_content_as is not None:
                metadata["dataset_same_content_as"] = MetadataValue.int(done.same_content_as)
            if done.replaced_corrupt is not None:
                metadata["dataset_replaced_corrupt_version"] = MetadataValue.int(done.replaced_corrupt)
            context.add_output_metadata(metadata)
        payload = obj.model_dump_json().encode()
        asset = _asset_name(context)
        # write_bytes is atomic: a crash or a full disk leaves the old reference or the new one.
        self.datastore.write_bytes(layout.run_ref(asset, context.run_id), payload)
        self.datastore.write_bytes(layout.latest_ref(asset), payload)

    # --- reading references ---------------------------------------------------------------
    def read_ref(self, rel: str, asset: str) -> DatasetRef:
        """A stored reference; a corrupt one raises an error naming the file and the fix."""
        raw = self.datastore.read_bytes(rel)
        try:
            return DatasetRef.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            raise DatasetError(
                f"The reference to dataset '{asset}' at {self.datastore.uri(rel)} is unreadable "
                f"({first.get('msg', 'invalid')}; {len(raw)} bytes). References are disposable: "
                f"rerun the step that produces '{asset}' (or the whole pipeline) to write it again."
            ) from None

    def load_ref(self, asset: str, run_id: str | None) -> DatasetRef:
        """The reference an asset's materialization in ``run_id`` stored (else its latest)."""
        for rel in ([layout.run_ref(asset, run_id)] if run_id else []) + [layout.latest_ref(asset)]:
            if self.datastore.exists(rel):
                return self.read_ref(rel, asset)
        raise DatasetError(
            f"Dataset '{asset}' has never been materialized on datastore '{self.datastore.name}'. "
            f"Materialize '{asset}' (or run the pipeline) first."
        )

    def resolve_input_ref(
        self, asset: str, producer: str | None, lineage: list[str]
    ) -> tuple[DatasetRef, str]:
        """(reference, where it was read) for an input; see the module docstring for the rules.

        A reference made by another run that points at data outside the published step outputs
        (a source dataset, whose path can be rewritten) is re-hashed first: if the data changed
        since, reading it under the old content hash would poison the reuse ledger.
        """
        ref, where, pin = self._resolve(asset, producer, lineage)
        current = lineage[0] if lineage else None
        if where != layout.run_ref(asset, current or "") and not layout.is_protected(ref.path):
            self._check_unchanged(asset, ref, where)
        if pin and current:
            ref = self._pin(asset, current, ref)
        return ref, where

    def _check_unchanged(self, asset: str, ref: DatasetRef, where: str) -> None:
        store = self._store_for(ref.datastore)
        if store is None:
            raise DatasetError(
                f"Dataset '{asset}' is on datastore '{ref.datastore}', which this run does not "
                "have configured, so its recorded reference cannot be checked; configure that "
                "datastore, or start a new run of the pipeline instead of a re-execution."
            )
        cache = open_stat_cache() if store.local_path(ref.path) is not None else None
        try:
            now = manifest_digest(store.manifest(ref.path, cache))
        finally:
            if cache is not None:
                cache.close()
        if now != ref.content_hash:
            if where == layout.latest_ref(asset):
                when = "since it was last materialized"
            else:
                when = f"since run {where.rsplit('/', 1)[-1].removesuffix('.json')} read it"
            raise DatasetError(
                f"Dataset '{asset}' at {store.uri(ref.path)} changed {when} (content "
                f"{ref.content_hash[:12]} then, {now[:12]} now), so its recorded reference no "
                f"longer describes it. Materialize '{asset}' again (a new run of the pipeline "
                "does) instead of re-executing or running a subset without it."
            )

    def _resolve(
        self, asset: str, producer: str | None, lineage: list[str]
    ) -> tuple[DatasetRef, str, bool]:
        """(reference, where it was read, whether to pin it for this run)."""
        current = lineage[0] if lineage else None
        if producer is not None:
            rel = layout.run_ref(asset, producer)
            if self.datastore.exists(rel):
                return self.read_ref(rel, asset), rel, False
            again = f" (re-executed by run {current})" if current and current != producer else ""
            raise DatasetError(
                f"Dataset '{asset}': the reference that run {producer}{again} materialized is gone "
                f"({self.datastore.uri(rel)}; 'aml-assets gc' removes per-run references after "
                "its grace period). A re-execution reads exactly what the run it re-executes "
                f"produced, never a newer version, so it cannot continue. Start a new run of the "
                f"pipeline instead (it reuses every step whose inputs did not change)."
            )
        for run_id in lineage:
            rel = layout.run_ref(asset, run_id)
            if self.datastore.exists(rel):
                return self.read_ref(rel, asset), rel, run_id != current
        if len(lineage) > 1:
            raise DatasetError(
                f"Dataset '{asset}': run {current} re-executes run {lineage[1]}, which read "
                f"'{asset}' without materializing it, but no reference pinned by that run's "
                f"lineage ({', '.join(lineage[1:])}) remains on datastore "
                f"'{self.datastore.name}' (removed by 'aml-assets gc'?). A re-execution never "
                "reads a newer version than its original run did. Start a new run instead."
            )
        rel = layout.latest_ref(asset)
        if not self.datastore.exists(rel):
            raise DatasetError(
                f"Dataset '{asset}' has never been materialized on datastore "
                f"'{self.datastore.name}'. Materialize '{asset}' (or run the pipeline) first."
            )
        return self.read_ref(rel, asset), rel, True

    def _pin(self, asset: str, run_id: str, ref: DatasetRef) -> DatasetRef:
        """Record the reference this run read; the first step of the run to pin wins."""
        rel = layout.run_ref(asset, run_id)
        if self.datastore.create_exclusive(rel, ref.model_dump_json().encode()):
            return ref
        return self.read_ref(rel, asset)

    def load_input(self, context: InputContext) -> Any:
        asset = _asset_name(context)
        ref, where = self.resolve_input_ref(asset, _producing_run(context), _lineage(context))
        context.log.debug(f"Input '{asset}' reads {ref.uri} (reference {where})")
        wanted = getattr(context.dagster_type, "typing_type", None)
        if getattr(wanted, "__name__", "") == "DataFrame" and ref.is_tabular:
            local = self.datastore.local_path(ref.path)
            if local is None:
                raise DatasetError(
                    f"Dataset '{ref.name}' is on a remote datastore; load it through DatasetRef "
                    "or the dataset registry instead of a DataFrame input."
                )
            return read_pandas(local, ref.format, ref.separator, ref.name, ref.reader)
        return ref
