"""Published pipelines (Azure ML's ``PublishedPipeline``) and versioned ``PipelineEndpoint``s.

``Pipeline.publish(name)`` stores the pipeline's code snapshot (see ``pipeline.snapshots``) and a
version record on the workspace datastore::

    published = pipeline.publish("titanic", description="Train on the Titanic data")
    published.version, published.id        # 1, '3f2c...'
    published.run_tags()                   # tags that make a run run this version's frozen code

A version record is created once and never rewritten: versions are numbered 1, 2, 3... per name,
and two publishers racing for a number each end up with their own (the loser of a create takes
the next number). Publishing again with the same code and structure returns the newest version
as it is (same id); any change to a script or to the steps' structure makes a new version.
Whether a version is enabled is the only mutable part, kept in its own status record.

A ``PipelineEndpoint`` is a named, mutable list of references to published versions with a
default one, so callers keep one URL while new versions are added behind it.

Records (see ``aml_assets.data.layout``)::

    _published/<name>/versions/<NNNNNN>.json   one version (created once)
    _published/<name>/status/<NNNNNN>.json     Active or Disabled
    _published/_ids/<id>.json                  id -> name and version
    _endpoints/<name>.json                     an endpoint's versions and default
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aml_assets.data import layout
from aml_assets.data.content import canonical_digest
from aml_assets.data.datastore import Datastore
from aml_assets.errors import AmlAssetsError, DatastoreError, PipelineValidationError
from aml_assets.pipeline.parameters import parameter_from_record
from aml_assets.pipeline.snapshots import (
    load_snapshot,
    step_structure,
    store_snapshot,
    structure_differences,
)
from aml_assets.pipeline.tags import (
    ENDPOINT_TAG,
    PUBLISHED_ID_TAG,
    PUBLISHED_NAME_TAG,
    PUBLISHED_VERSION_TAG,
    SNAPSHOT_TAG,
)

if TYPE_CHECKING:
    from aml_assets.pipeline.definition import Pipeline

ACTIVE = "Active"
DISABLED = "Disabled"

_FORMAT = 1
_IDENTITY_TAG = "aml-published/v1"
# Names become folder names on the datastore: no '/', no leading '_' (``_published/_ids``).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Attempts at taking a version number while other publishers take them too.
_MAX_ATTEMPTS = 100

_logger = logging.getLogger(__name__)


class PublishError(AmlAssetsError):
    """A pipeline cannot be published, or a published pipeline or endpoint cannot be found."""

    def __init__(self, message: str, problems: list[str] | None = None, not_found: bool = False):
        super().__init__(message)
        self.problems = list(problems or [])
        #: True when the error only says that something does not exist (the HTTP API's 404).
        self.not_found = not_found


def _workspace(datastore: Datastore | None) -> Datastore:
    if datastore is not None:
        return datastore
    from aml_assets.data.workspace import workspace_datastore

    return workspace_datastore()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _dump(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, indent=1, sort_keys=True).encode()


def _read_json(store: Datastore, rel: str, what: str) -> dict[str, Any]:
    try:
        record = json.loads(store.read_bytes(rel))
    except DatastoreError as exc:
        raise PublishError(
            f"{what} is missing from datastore '{store.name}' ({store.uri(rel)}): it was removed "
            "outside aml-assets. Restore it from a backup, or publish the pipeline again."
        ) from exc
    except ValueError as exc:
        raise PublishError(
            f"{what} on datastore '{store.name}' ({store.uri(rel)}) is not valid JSON: {exc}. "
            "It was damaged outside aml-assets; restore it from a backup."
        ) from exc
    if not isinstance(record, dict):
        raise PublishError(
            f"{what} on datastore '{store.name}' ({store.uri(rel)}) is not a JSON object; "
            "restore it from a backup."
        )
    return record


def _check_name(name: Any, what: str, lookup: bool = False) -> str:
    """``name`` if it can name a record; ``lookup``: the error is a "not found" one."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PublishError(
            f"{name!r} is not a valid {what} name: use up to 100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. 'titanic_training').",
            not_found=lookup,
        )
    return name


def _version_number(version: Any, what: str) -> int:
    if (
        isinstance(version, bool)
        or not isinstance(version, (int, str))
        or not str(version).strip().isdigit()
    ):
        raise PublishError(
            f"{version!r} is not a version of {what}: give a version number such as 1 or '2'.",
            not_found=True,
        )
    return int(str(version).strip())


def _close(name: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean '{hint[0]}'?" if hint else ""


# ---------------------------------------------------------------------------------------------
# Published pipelines


@dataclass(frozen=True)
class PublishedPipeline:
    """One published, immutable version of a pipeline (Azure ML's ``PublishedPipeline``)."""

    id: str
    name: str
    version: int
    version_label: str | None
    description: str | None
    pipeline_name: str
    created: str
    #: The pipeline snapshot's digest (code and structure of every step).
    snapshot: str
    #: Step name -> digest of its code tree.
    step_snapshots: dict[str, str]
    #: Step name -> its structure when published (see ``snapshots.step_structure``).
    structure: dict[str, Any]
    #: The pipeline's parameters as records (``parameter_objects()`` rebuilds them).
    parameters: list[dict[str, Any]]
    #: Datastore names known when it was published (may be empty).
    datastores: list[str]
    identity: str = field(repr=False, default="")
    _store: Datastore | None = field(repr=False, compare=False, default=None)

    # --- reading ----------------------------------------------------------------------------
    @classmethod
    def _from_record(cls, record: Mapping[str, Any], store: Datastore) -> PublishedPipeline:
        return cls(
            id=record["id"],
            name=record["name"],
            version=int(record["version"]),
            version_label=record.get("version_label"),
            description=record.get("description"),
            pipeline_name=record["pipeline_name"],
            created=record["created"],
            snapshot=record["snapshot"],
            step_snapshots=dict(record.get("step_snapshots") or {}),
            structure=dict(record.get("structure") or {}),
            parameters=list(record.get("parameters") or []),
            datastores=list(record.get("datastores") or []),
            identity=record.get("identity", ""),
            _store=store,
        )

    @classmethod
    def get(
        cls,
        id: str | None = None,
        *,
        name: str | None = None,
        version: int | str | None = None,
        datastore: Datastore | None = None,
    ) -> PublishedPipeline:
        """A published version by ``id``, or by ``name`` (and ``version``; default the newest)."""
        store = _workspace(datastore)
        if id is not None:
            return _by_id(store, str(id))
        if name is None:
            raise PublishError("Give the published pipeline's id, or its name (and a version).")
        versions = _versions(store, name)
        if not versions:
            known = _names(store)
            raise PublishError(
                f"No pipeline is published as '{name}' on datastore '{store.name}' "
                f"({store.uri()}); published: {', '.join(known) or 'none'}.{_close(name, known)} "
                "Publish it with Pipeline.publish(name).",
                not_found=True,
            )
        number = versions[-1] if version is None else _version_number(version, f"'{name}'")
        if number not in versions:
            raise PublishError(
                f"Published pipeline '{name}' has no version {number}; its versions are "
                f"{', '.join(map(str, versions))}.",
                not_found=True,
            )
        return _load_version(store, name, number)

    @classmethod
    def list(
        cls, datastore: Datastore | None = None, name: str | None = None
    ) -> list[PublishedPipeline]:
        """Every published version (of ``name`` only, if given), by name then version."""
        store = _workspace(datastore)
        names = [name] if name is not None else _names(store)
        return [_load_version(store, n, v) for n in names for v in _versions(store, n)]

    # --- status -----------------------------------------------------------------------------
    @property
    def datastore(self) -> Datastore:
        """The datastore holding this version's records."""
        return _workspace(self._store)

    @property
    def status(self) -> str:
        """``Active`` or ``Disabled`` (read from the datastore, so always current)."""
        rel = layout.published_status_record(self.name, self.version)
        if not self.datastore.exists(rel):
            return ACTIVE
        status = _read_json(
            self.datastore,
            rel,
            f"The status of published pipeline '{self.name}' version {self.version}",
        ).get("status")
        return DISABLED if status == DISABLED else ACTIVE

    @property
    def is_active(self) -> bool:
        return self.status == ACTIVE

    def _set_status(self, status: str) -> None:
        self.datastore._write_record(
            layout.published_status_record(self.name, self.version),
            _dump({"status": status, "changed": _now(), "id": self.id}),
        )

    def enable(self) -> None:
        """Accept runs of this version again."""
        self._set_status(ACTIVE)

    def disable(self) -> None:
        """Refuse new runs of this version (the HTTP API answers 403); its records stay."""
        self._set_status(DISABLED)

    # --- running ----------------------------------------------------------------------------
    def run_tags(self) -> dict[str, str]:
        """The tags of a run of this version: its step ops then run the frozen code snapshot."""
        return {
            PUBLISHED_ID_TAG: self.id,
            PUBLISHED_NAME_TAG: self.name,
            PUBLISHED_VERSION_TAG: str(self.version),
            SNAPSHOT_TAG: self.snapshot,
        }

    @property
    def endpoint(self) -> str:
        """The relative URL a run of this version is POSTed to."""
        return f"/api/v1/pipelines/{self.id}/runs"

    def parameter_objects(self) -> list[Any]:
        """The parameters as objects (``PipelineParameter``, ``DataPathParameter``...)."""
        return [parameter_from_record(r) for r in self.parameters]

    def structure_problems(self, pipeline: Pipeline) -> list[str]:
        """Why ``pipeline`` (the live definitions) can no longer run this version (empty: it can).

        Worth checking before submitting a run: the step ops check it too, but only once the
        run has started.
        """
        problems = []
        if pipeline.name != self.pipeline_name:
            problems.append(
                f"published pipeline '{self.name}' version {self.version} is of pipeline "
                f"'{self.pipeline_name}', not '{pipeline.name}'"
            )
        snapshot = load_snapshot(self.datastore, self.snapshot)
        live = {s.name: s for s in pipeline.steps}
        for name in sorted(set(snapshot.structures) - set(live)):
            problems.append(f"step '{name}' was published but is no longer in the pipeline")
        for name, step in live.items():
            if name not in snapshot.structures:
                problems.append(f"step '{name}' is new since version {self.version} was published")
                continue
            for diff in structure_differences(snapshot.structures[name], step_structure(step)):
                problems.append(f"step '{name}': {diff}")
        return problems

    def check_structure(self, pipeline: Pipeline) -> None:
        """Raise ``PublishError`` when ``pipeline`` no longer matches this version's structure."""
        problems = self.structure_problems(pipeline)
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise PublishError(
                f"Pipeline '{pipeline.name}' no longer matches published pipeline '{self.name}' "
                f"version {self.version}:\n{lines}\nPublish a new version (Pipeline.publish) and "
                "run that one.",
                problems,
            )

    def to_json(self) -> dict[str, Any]:
        """What the HTTP API shows of a published pipeline (Azure's field names)."""
        return {
            "Id": self.id,
            "Name": self.name,
            "Version": self.version,
            "VersionLabel": self.version_label,
            "Description": self.description,
            "PipelineName": self.pipeline_name,
            "Status": self.status,
            "Endpoint": self.endpoint,
            "Snapshot": self.snapshot,
            "Parameters": self.parameters,
            "Datastores": self.datastores,
            "CreatedTime": self.created,
        }


def _names(store: Datastore) -> list[str]:
    return [n for n in store.list_dir(layout.PUBLISHED) if _NAME.fullmatch(n)]


def _versions(store: Datastore, name: str) -> list[int]:
    _check_name(name, "published pipeline", lookup=True)
    found = (
        layout.version_of_record(n) for n in store.list_dir(layout.published_versions_dir(name))
    )
    return sorted(v for v in found if v is not None)


def _load_version(store: Datastore, name: str, version: int) -> PublishedPipeline:
    rel = layout.published_version_record(name, version)
    record = _read_json(store, rel, f"Published pipeline '{name}' version {version}")
    try:
        return PublishedPipeline._from_record(record, store)
    except (KeyError, TypeError, ValueError) as exc:
        raise PublishError(
            f"Published pipeline '{name}' version {version} ({store.uri(rel)}) is incomplete "
            f"({exc!r}); "
            "the record was damaged outside aml-assets. Restore it, or publish a new version."
        ) from exc


def _by_id(store: Datastore, published_id: str) -> PublishedPipeline:
    found = None
    if re.fullmatch(r"[0-9a-f]{32}", published_id):
        rel = layout.published_id_record(published_id)
        if store.exists(rel):
            index = _read_json(
                store, rel, f"The index record of published pipeline id {published_id}"
            )
            found = _load_version(store, str(index.get("name")), int(index.get("version", 0)))
        else:
            # The index is written just after the version record; a publisher that died in
            # between leaves a version only a scan finds.
            found = next((p for p in PublishedPipeline.list(store) if p.id == published_id), None)
    if found is None or found.id != published_id:
        raise PublishError(
            f"No published pipeline has id '{published_id}' on datastore '{store.name}' "
            f"({store.uri()}). List them with PublishedPipeline.list(), or publish with "
            "Pipeline.publish(name).",
            not_found=True,
        )
    return found


def _datastore_names(pipeline: Pipeline, resources: Mapping[str, Any] | None) -> list[str]:
    if resources:
        return sorted(k for k, v in resources.items() if isinstance(v, Datastore))
    return sorted({pipeline.datastore, *(d.datastore for d in pipeline.source_datasets())})


def publish_pipeline(
    pipeline: Pipeline,
    name: str,
    description: str | None = None,
    version: str | None = None,
    *,
    datastore: Datastore | None = None,
    resources: Mapping[str, Any] | None = None,
) -> PublishedPipeline:
    """Validate ``pipeline``, store its code snapshot, and return its published version (see
    ``Pipeline.publish``)."""
    _check_name(name, "published pipeline")
    if resources is None:
        resources = getattr(pipeline, "resources", None)
    try:
        pipeline.validate(resources)
    except PipelineValidationError as exc:
        raise PublishError(
            f"Cannot publish pipeline '{pipeline.name}' as '{name}': {exc}\nFix these problems, "
            "then publish again.",
            exc.problems,
        ) from exc
    store = _workspace(datastore)
    snapshot = store_snapshot(pipeline, store)
    run_store = (resources or {}).get(pipeline.datastore)
    if isinstance(run_store, Datastore) and run_store.uri() != store.uri():
        # The step ops read the snapshot from the pipeline's own datastore: store it there too.
        store_snapshot(pipeline, run_store)
    parameters = [p.to_record() for p in pipeline.parameters()]
    label = None if version is None else str(version)
    identity = canonical_digest(
        json.loads(
            json.dumps(
                {"pipeline": pipeline.name, "snapshot": snapshot.digest, "parameters": parameters},
                default=str,
            )
        ),
        tag=_IDENTITY_TAG,
    )
    for _ in range(_MAX_ATTEMPTS):
        versions = _versions(store, name)
        if versions:
            latest = _load_version(store, name, versions[-1])
            if latest.identity == identity and (label is None or latest.version_label == label):
                if description is not None and description != latest.description:
                    _logger.info(
                        "Published pipeline '%s' version %d is unchanged; its description stays "
                        "as published (a version is never rewritten).",
                        name,
                        latest.version,
                    )
                _repair_indexes(store, latest)
                return latest
        number = (versions[-1] if versions else 0) + 1
        record = {
            "format": _FORMAT,
            "id": uuid.uuid4().hex,
            "name": name,
            "version": number,
            "version_label": label,
            "description": description,
            "pipeline_name": pipeline.name,
            "created": _now(),
            "snapshot": snapshot.digest,
            "step_snapshots": snapshot.trees,
            "structure": snapshot.structures,
            "parameters": parameters,
            "datastores": _datastore_names(pipeline, resources),
            "identity": identity,
        }
        try:
            created = store._create_record(
                layout.published_version_record(name, number), _dump(record)
            )
        except DatastoreError as exc:
            raise PublishError(
                f"Cannot publish '{name}' version {number} on datastore '{store.name}': {exc}"
            ) from exc
        if created:
            published = PublishedPipeline._from_record(json.loads(_dump(record)), store)
            _repair_indexes(store, published)
            return published
        # Another publisher took this number first: look again (it may even be our content).
    raise PublishError(
        f"Could not take a version number for '{name}' after {_MAX_ATTEMPTS} attempts: other "
        "publishers keep taking them. Try again."
    )


def _repair_indexes(store: Datastore, published: PublishedPipeline) -> None:
    """Write the id index and status records of a version, when missing."""
    store._create_record(
        layout.published_id_record(published.id),
        _dump({"id": published.id, "name": published.name, "version": published.version}),
    )
    status = layout.published_status_record(published.name, published.version)
    if not store.exists(status):
        store._create_record(
            status, _dump({"status": ACTIVE, "changed": _now(), "id": published.id})
        )


# ---------------------------------------------------------------------------------------------
# Endpoints


@dataclass(frozen=True)
class EndpointVersion:
    """One version of a pipeline endpoint: a reference to a published pipeline."""

    version: int
    pipeline_id: str


class PipelineEndpoint:
    """A named endpoint with versions, each a published pipeline, and a default version.

    Example:
        .. code-block:: python

            endpoint = PipelineEndpoint.publish("titanic", pipeline=published)
            endpoint.add_default(pipeline.publish("titanic"))   # version 2, now the default
            endpoint.set_default(1)                              # back to version 1
            endpoint.get_pipeline().run_tags()

    Updates read the endpoint's record, change it and write it back atomically; two updates of
    one endpoint at the same moment can lose one of them (the last writer wins).
    """

    def __init__(self, record: Mapping[str, Any], datastore: Datastore):
        self._record = dict(record)
        self._store = datastore

    # --- reading ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._record["name"]

    @property
    def description(self) -> str | None:
        return self._record.get("description")

    @property
    def default_version(self) -> int:
        """The version runs use when none is given."""
        return int(self._record["default_version"])

    @property
    def endpoint(self) -> str:
        """The relative URL a run of the default version is POSTed to."""
        return f"/api/v1/endpoints/{self.name}/runs"

    @property
    def datastore(self) -> Datastore:
        return self._store

    @classmethod
    def get(cls, name: str, datastore: Datastore | None = None) -> PipelineEndpoint:
        """The endpoint named ``name``."""
        store = _workspace(datastore)
        _check_name(name, "pipeline endpoint", lookup=True)
        rel = layout.endpoint_record(name)
        if not store.exists(rel):
            known = _endpoint_names(store)
            raise PublishError(
                f"No pipeline endpoint is named '{name}' on datastore '{store.name}' "
                f"({store.uri()}); endpoints: {', '.join(known) or 'none'}.{_close(name, known)} "
                "Create one with PipelineEndpoint.publish(name, pipeline).",
                not_found=True,
            )
        return cls(_read_json(store, rel, f"Pipeline endpoint '{name}'"), store)

    @classmethod
    def list(cls, datastore: Datastore | None = None) -> list[PipelineEndpoint]:
        """Every pipeline endpoint, by name."""
        store = _workspace(datastore)
        return [cls.get(n, store) for n in _endpoint_names(store)]

    def list_versions(self) -> list[EndpointVersion]:
        """The endpoint's versions, oldest first."""
        return [
            EndpointVersion(int(v["version"]), v["pipeline_id"]) for v in self._record["versions"]
        ]

    def _number(self, version: int | str) -> int:
        number = _version_number(version, f"pipeline endpoint '{self.name}'")
        known = [v.version for v in self.list_versions()]
        if number not in known:
            raise PublishError(
                f"Pipeline endpoint '{self.name}' has no version {number}; its versions are "
                f"{', '.join(map(str, known))} (default {self.default_version}). Add one with "
                "add(published) first.",
                not_found=True,
            )
        return number

    def get_pipeline(self, version: int | str | None = None) -> PublishedPipeline:
        """The published pipeline behind ``version`` (the default version when None)."""
        number = self.default_version if version is None else self._number(version)
        ref = next(v for v in self.list_versions() if v.version == number)
        return PublishedPipeline.get(ref.pipeline_id, datastore=self._store)

    def run_tags(self, version: int | str | None = None) -> dict[str, str]:
        """The tags of a run through this endpoint: the published version's, plus the endpoint."""
        return {**self.get_pipeline(version).run_tags(), ENDPOINT_TAG: self.name}

    # --- changing ---------------------------------------------------------------------------
    @classmethod
    def publish(
        cls,
        name: str,
        pipeline: PublishedPipeline | Pipeline,
        description: str | None = None,
        datastore: Datastore | None = None,
    ) -> PipelineEndpoint:
        """Create the endpoint ``name`` with ``pipeline`` as version 1, its default.

        ``pipeline`` is a published pipeline, or a pipeline, which is then published as ``name``.
        """
        _check_name(name, "pipeline endpoint")
        if not isinstance(pipeline, PublishedPipeline):
            pipeline = pipeline.publish(name, description, datastore=datastore)
        store = _workspace(datastore if datastore is not None else pipeline._store)
        _require_published(store, pipeline)
        record = {
            "format": _FORMAT,
            "name": name,
            "description": description,
            "created": _now(),
            "default_version": 1,
            "versions": [{"version": 1, "pipeline_id": pipeline.id, "added": _now()}],
        }
        if not store._create_record(layout.endpoint_record(name), _dump(record)):
            existing = cls.get(name, store)
            raise PublishError(
                f"Pipeline endpoint '{name}' already exists (versions "
                f"{', '.join(str(v.version) for v in existing.list_versions())}, default "
                f"{existing.default_version}). Add a version with "
                f"PipelineEndpoint.get('{name}').add_default(published), or choose another name."
            )
        return cls(record, store)

    def _update(self, change: Any) -> None:
        current = PipelineEndpoint.get(self.name, self._store)._record
        change(current)
        current["changed"] = _now()
        self._store._write_record(layout.endpoint_record(self.name), _dump(current))
        self._record = current

    def add(self, published: PublishedPipeline | str) -> int:
        """Add a published pipeline (or its id) as a new version; returns its version number
        (the existing one if it is already a version of this endpoint)."""
        published_id = published if isinstance(published, str) else published.id
        _require_published(self._store, PublishedPipeline.get(published_id, datastore=self._store))
        added: list[int] = []

        def change(record: dict[str, Any]) -> None:
            versions = record["versions"]
            same = [v["version"] for v in versions if v["pipeline_id"] == published_id]
            if same:
                added.append(same[0])
                return
            number = max((v["version"] for v in versions), default=0) + 1
            versions.append({"version": number, "pipeline_id": published_id, "added": _now()})
            added.append(number)

        self._update(change)
        return added[0]

    def add_default(self, published: PublishedPipeline | str) -> int:
        """Add a published pipeline as a version and make it the default; returns its number."""
        number = self.add(published)
        self.set_default(number)
        return number

    def set_default(self, version: int | str) -> None:
        """Make ``version`` (a version of this endpoint) the default."""
        number = self._number(version)

        def change(record: dict[str, Any]) -> None:
            if number not in [v["version"] for v in record["versions"]]:
                raise PublishError(
                    f"Pipeline endpoint '{self.name}' lost version {number} meanwhile."
                )
            record["default_version"] = number

        self._update(change)

    #: Azure ML's name for ``set_default``.
    set_default_version = set_default

    def to_json(self) -> dict[str, Any]:
        """What the HTTP API shows of an endpoint (Azure's field names)."""
        return {
            "Name": self.name,
            "Description": self.description,
            "DefaultVersion": self.default_version,
            "Endpoint": self.endpoint,
            "Versions": [
                {"Version": v.version, "PipelineId": v.pipeline_id} for v in self.list_versions()
            ],
        }

    def __repr__(self) -> str:
        return (
            f"<PipelineEndpoint {self.name} versions={[v.version for v in self.list_versions()]} "
            f"default={self.default_version}>"
        )


def _endpoint_names(store: Datastore) -> list[str]:
    return sorted(
        n.removesuffix(".json")
        for n in store.list_dir(layout.ENDPOINTS)
        if n.endswith(".json") and _NAME.fullmatch(n.removesuffix(".json"))
    )


def _require_published(store: Datastore, published: PublishedPipeline) -> None:
    """Refuse a published pipeline whose records are not on the endpoint's datastore."""
    if not store.exists(layout.published_version_record(published.name, published.version)):
        raise PublishError(
            f"Published pipeline '{published.name}' version {published.version} (id "
            f"{published.id}) is not on datastore '{store.name}' ({store.uri()}), where the "
            "endpoint lives; publish it there (datastore=...)."
        )
