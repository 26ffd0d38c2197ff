"""Dagster schedules and sensors of a pipeline's stored schedules and data-change triggers.

A schedule (``Schedule.create`` in ``aml_assets.service.schedules``) is a JSON record at
``_schedules/<name>.json`` on the workspace datastore. When a pipeline's Definitions are built,
every record whose job is that pipeline becomes:

- a ``ScheduleDefinition`` (a recurrence; see ``pipeline.recurrence`` for the cron it runs on),
  which never runs at creation: Dagster starts a schedule from its next tick and never backfills
  ticks from before it first saw the schedule, and the evaluation also skips any tick at or
  before the record's creation time (and before ``start_time``);
- a ``SensorDefinition`` (a data-change trigger) polling ``path_on_datastore`` on a datastore
  resource, subfolders included. Each new or changed *complete* file starts one run with its
  path in the DataPath parameter ``data_path_parameter_name``. The rules:

  * complete: on a local folder, a file whose modification time is at least ``settle_seconds``
    (default 2 s) old and unchanged while it is read; on Azure Blob, a block blob is listed only
    once committed, so a listed one is complete (an append blob follows the local rule). A
    writer that pauses longer than the settle window mid-file would be seen early: write to a
    temporary name (ignored, below) and rename, which is always safe. A tick that finds files
    still settling waits the settle window out and looks again, so a file that just landed
    starts its run in that tick, not a polling interval later;
  * ignored: names starting with ``.`` or ``~`` (in any folder of the path), ending with ``~``,
    ``.tmp``, ``.temp``, ``.part``, ``.partial``, ``.crdownload`` or ``.swp``, and aml-assets'
    own records (``steps/``, ``_published/``, ... when the whole datastore is watched);
  * once only: the sensor's cursor (kept by Dagster in its instigator state, so it survives a
    daemon restart) maps each file to its content hash; the same content at the same path
    never starts a second run, rewritten or not, and each run's ``run_key`` is the path and the
    content hash, which Dagster never launches twice for a sensor;
  * at creation: on the first evaluation, files last modified before the trigger was created
    are the baseline and start nothing.

A record's ``status`` is the instigator's ``default_status``; a start/stop in the Dagster UI is
stored in the instance and wins over it until ``aml-assets schedules enable/disable`` sets both.
A datastore that cannot be reached while the records are read is a warning (no schedules are
loaded, the code location still loads); a malformed record is an error naming it and the fix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorDefinition,
    SensorResult,
    SkipReason,
)

from aml_assets.data import layout
from aml_assets.data.content import hash_file
from aml_assets.data.datastore import Datastore, check_relative_path
from aml_assets.errors import AmlAssetsError, DatastoreError
from aml_assets.pipeline.recurrence import ScheduleError, ScheduleRecurrence
from aml_assets.pipeline.tags import (
    ENDPOINT_TAG,
    EXPERIMENT_TAG,
    REGENERATE_TAG,
    SCHEDULE_TAG,
    SUBMITTED_VIA_TAG,
    TRIGGER_PATH_TAG,
    parameters_run_config,
)

if TYPE_CHECKING:
    from aml_assets.pipeline.definition import Pipeline

log = logging.getLogger(__name__)

ACTIVE, DISABLED = "Active", "Disabled"
RECORD_FORMAT = 1
DEFAULT_SETTLE_SECONDS = 2.0
#: File names a trigger never starts a run for: temporary and partial files of common writers.
IGNORED_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", "~")
IGNORED_PREFIXES = (".", "~")
_OWN_FOLDERS = {
    layout.STEPS, layout.REFS, layout.STATS, layout.TMP, layout.PUBLISHED,
    layout.SNAPSHOTS, layout.ENDPOINTS, layout.SCHEDULES,
}


# --- the record ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleRecord:
    """What ``_schedules/<name>.json`` holds: a schedule (``recurrence``) or a data-change
    trigger (``datastore``), the job it starts, and how."""

    name: str
    job: str
    experiment: str
    created: str  # ISO, UTC
    status: str = ACTIVE
    description: str | None = None
    recurrence: dict[str, Any] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    datastore: str | None = None
    path_on_datastore: str = ""
    polling_interval_seconds: float | None = None
    data_path_parameter_name: str | None = None
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    regenerate_outputs: bool = False
    published_id: str | None = None
    published_tags: dict[str, str] = field(default_factory=dict)
    endpoint: str | None = None
    format: int = RECORD_FORMAT

    @property
    def is_trigger(self) -> bool:
        return self.datastore is not None

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def schedule_recurrence(self) -> ScheduleRecurrence | None:
        return ScheduleRecurrence.from_record(self.recurrence) if self.recurrence else None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ScheduleRecord:
        """Parse and check a record; a ``ScheduleError`` names ``where`` and the fix."""
        fix = (
            f"Delete it (aml-assets schedules delete {PurePosixPath(where).stem}) and create the "
            "schedule again with Schedule.create."
        )
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ScheduleError(f"Schedule record {where} is not valid JSON ({exc}). {fix}") from None
        if not isinstance(raw, dict):
            raise ScheduleError(f"Schedule record {where} is not a JSON object. {fix}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        missing = sorted({"name", "job", "experiment", "created"} - set(raw))
        problems = ([f"unknown fields {unknown}"] if unknown else []) + (
            [f"missing fields {missing}"] if missing else []
        )
        if problems:
            raise ScheduleError(f"Schedule record {where} has {'; '.join(problems)}. {fix}", problems)
        try:
            record = cls(**raw)
            problems = record.problems()
        except (TypeError, ValueError) as exc:
            problems = [str(exc)]
        except ScheduleError as exc:
            problems = exc.problems
        if problems:
            detail = "; ".join(problems)
            raise ScheduleError(f"Schedule record {where} is invalid: {detail}. {fix}", problems)
        return record

    def problems(self) -> list[str]:
        """What is wrong with the record on its own (empty when nothing is)."""
        out = []
        if self.format != RECORD_FORMAT:
            out.append(f"format {self.format} is not {RECORD_FORMAT} (written by another aml-assets version)")
        if self.status not in (ACTIVE, DISABLED):
            out.append(f"status '{self.status}' is not '{ACTIVE}' or '{DISABLED}'")
        if (self.recurrence is None) == (self.datastore is None):
            out.append("a schedule has either a recurrence or a datastore to watch (exactly one)")
        if self.recurrence is not None and not isinstance(self.recurrence, dict):
            out.append("recurrence must be an object (ScheduleRecurrence.to_record())")
        elif self.recurrence is not None:
            try:
                self.schedule_recurrence()
            except ScheduleError as exc:
                out.extend(exc.problems)
        if self.datastore is not None:
            if not self.polling_interval_seconds or self.polling_interval_seconds <= 0:
                out.append("a data-change trigger needs a polling interval > 0")
            if self.path_on_datastore:
                try:
                    check_relative_path(self.datastore, self.path_on_datastore)
                except DatastoreError as exc:
                    out.append(str(exc))
        try:
            if self.created_at.tzinfo is None:
                raise ValueError("no time zone")
        except (TypeError, ValueError):
            out.append(f"created '{self.created}' is not an ISO date-time with a time zone")
        if not isinstance(self.parameters, dict):
            out.append("parameters must be an object")
        return out


def read_record(store: Datastore, name: str) -> ScheduleRecord | None:
    """The record of one schedule (None if there is none)."""
    rel = layout.schedule_record(name)
    if not store.exists(rel):
        return None
    return ScheduleRecord.from_bytes(store.read_bytes(rel), store.uri(rel))


@dataclass(frozen=True)
class BrokenRecord:
    """A schedule record that cannot be used: its name, its job (None when unreadable), why."""

    name: str
    job: str | None
    error: ScheduleError


def read_records(store: Datastore, broken: list[BrokenRecord] | None = None) -> list[ScheduleRecord]:
    """Every schedule record on ``store``, by name. A malformed one raises ``ScheduleError``, or
    is appended to ``broken`` (and skipped) when a list is given."""
    names = [n for n in store.list_dir(layout.SCHEDULES) if n.endswith(".json") and not n.startswith(".")]
    records = []
    for name in names:
        rel = f"{layout.SCHEDULES}/{name}"
        try:
            data = store.read_bytes(rel)
        except DatastoreError:
            if not store.exists(rel):
                continue  # deleted while listing
            raise
        try:
            records.append(ScheduleRecord.from_bytes(data, store.uri(rel)))
        except ScheduleError as exc:
            if broken is None:
                raise
            broken.append(BrokenRecord(name.removesuffix(".json"), _job_of(data), exc))
    return records


def _job_of(data: bytes) -> str | None:
    try:
        job = json.loads(data).get("job")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return job if isinstance(job, str) else None


# --- the Definitions' instigators ------------------------------------------------------------
def instigators_for(pipeline: Pipeline, resources: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """(schedules, sensors) to add to the pipeline's Definitions: one per stored record whose
    job is this pipeline.

    Neither a datastore that is down nor a bad record stops the code location from loading
    (its jobs must still run): the first is a warning and loads no schedules; a record that is
    malformed, or no longer fits the pipeline (a parameter or datastore it names is gone), is a
    warning naming it and the fix, and becomes a sensor of the same name whose every evaluation
    fails with that message, so the UI shows it where the schedule would be.
    """
    store = resources.get(pipeline.datastore)
    if not isinstance(store, Datastore):
        return [], []
    broken: list[BrokenRecord] = []
    try:
        records = [r for r in read_records(store, broken) if r.job == pipeline.name]
    except (DatastoreError, OSError) as exc:
        # A store that is down must not take the code location (and every run) down with it.
        message = (
            f"Could not read the schedules of pipeline '{pipeline.name}' from datastore "
            f"'{store.name}' ({exc}); its schedules and data-change triggers are not loaded until "
            "the code location is reloaded."
        )
        warnings.warn(message, stacklevel=2)
        log.warning(message)
        return [], []
    usable = []
    for record in records:
        problems = record_problems(record, pipeline, resources)
        if problems:
            broken.append(BrokenRecord(record.name, record.job, ScheduleError("; ".join(problems), problems)))
        else:
            usable.append(record)
    sensors: list[Any] = []
    for bad in broken:
        warnings.warn(str(bad.error), stacklevel=2)
        log.error("%s", bad.error)
        if bad.job == pipeline.name:
            sensors.append(broken_sensor(bad))
    schedules = [schedule_definition(r, pipeline.name, store) for r in usable if not r.is_trigger]
    sensors += [trigger_sensor(r, pipeline.name, store) for r in usable if r.is_trigger]
    return schedules, sensors


def broken_sensor(bad: BrokenRecord) -> SensorDefinition:
    """A stand-in for an unusable record: every evaluation fails with what is wrong and the fix."""
    message = str(bad.error)

    def evaluate(context):
        raise ScheduleError(message, bad.error.problems)

    return SensorDefinition(
        name=re.sub(r"[^A-Za-z0-9_]", "_", bad.name) or "broken_schedule",
        evaluation_fn=evaluate,
        minimum_interval_seconds=3600,
        description=f"BROKEN aml-assets schedule: {message}",
        default_status=DefaultSensorStatus.RUNNING,
    )


def record_problems(record: ScheduleRecord, pipeline: Pipeline, resources: Mapping[str, Any]) -> list[str]:
    """How a record does not fit the pipeline it starts (unknown parameters or datastores)."""
    fix = f"delete it (aml-assets schedules delete {record.name}) and create it again"
    where = f"schedule '{record.name}'"
    out = []
    params = {p.name: p for p in pipeline.parameters()}
    unknown = sorted(set(record.parameters) - set(params))
    if unknown:
        out.append(f"{where} sets parameters {unknown}, which pipeline '{pipeline.name}' does not have "
                   f"(it has {sorted(params) or 'none'}); {fix}")
    if record.is_trigger:
        if not isinstance(resources.get(record.datastore), Datastore):
            known = sorted(k for k, v in resources.items() if isinstance(v, Datastore))
            out.append(f"{where} watches datastore '{record.datastore}', which is not a datastore "
                       f"resource here (known: {', '.join(known) or 'none'}); {fix}")
        dp = record.data_path_parameter_name
        if dp is not None and not _is_datapath(params.get(dp)):
            datapaths = sorted(n for n, p in params.items() if _is_datapath(p))
            out.append(f"{where} puts the changed file in parameter '{dp}', which is not a DataPath "
                       f"parameter of pipeline '{pipeline.name}' (DataPath parameters: "
                       f"{', '.join(datapaths) or 'none'}); {fix}")
    return out


def _is_datapath(param: Any) -> bool:
    from aml_assets.pipeline.datapath import DataPathParameter

    return isinstance(param, DataPathParameter)


def run_tags(record: ScheduleRecord, store: Datastore, via: str) -> dict[str, str]:
    """The tags of a run this schedule starts; for an endpoint, of its current default version
    (``ScheduleError`` when the published pipeline is disabled or no longer this job's)."""
    tags = {SCHEDULE_TAG: record.name, SUBMITTED_VIA_TAG: via, EXPERIMENT_TAG: record.experiment}
    if record.regenerate_outputs:
        tags[REGENERATE_TAG] = "true"
    published = _published_of(record, store)
    if published is not None:
        if getattr(published, "status", ACTIVE) != ACTIVE:
            raise ScheduleError(
                f"published pipeline '{published.name}' version {published.version} is disabled; "
                "enable it (PublishedPipeline.enable) or disable this schedule"
            )
        if published.pipeline_name != record.job:
            raise ScheduleError(
                f"the default version of endpoint '{record.endpoint}' runs pipeline "
                f"'{published.pipeline_name}', not '{record.job}'; create the schedule again"
            )
        tags.update(published.run_tags())
    else:
        tags.update(record.published_tags)
    if record.endpoint:
        tags[ENDPOINT_TAG] = record.endpoint
    return tags


def _published_of(record: ScheduleRecord, store: Datastore) -> Any:
    """The published version a run starts: the endpoint's default now, or the fixed version."""
    if not (record.endpoint or record.published_id):
        return None
    from aml_assets.pipeline import publish

    if record.endpoint:
        return publish.PipelineEndpoint.get(record.endpoint, datastore=store).get_pipeline()
    return publish.PublishedPipeline.get(record.published_id, datastore=store)


def schedule_definition(record: ScheduleRecord, job: str, store: Datastore) -> ScheduleDefinition:
    """A schedule record as a Dagster schedule on the recurrence's cron."""
    recurrence = record.schedule_recurrence()
    assert recurrence is not None
    plan = recurrence.plan(record.created_at)

    def evaluate(context):
        when = context.scheduled_execution_time or datetime.now(timezone.utc)
        reason = plan.skip_reason(when)
        if reason:
            return SkipReason(f"Schedule '{record.name}': {reason}.")
        try:
            tags = run_tags(record, store, "schedule")
        except (AmlAssetsError, OSError) as exc:
            return SkipReason(f"Schedule '{record.name}' starts no run: {exc}")
        return RunRequest(run_config=parameters_run_config(record.parameters), tags=tags)

    return ScheduleDefinition(
        name=record.name,
        cron_schedule=plan.cron,
        job_name=job,
        execution_fn=evaluate,
        execution_timezone=plan.timezone,
        description=record.description or f"{recurrence.describe()} (aml-assets schedule)",
        default_status=DefaultScheduleStatus.RUNNING if record.active else DefaultScheduleStatus.STOPPED,
    )


#: Settle windows up to this long are waited out inside a tick (Dagster's sensor timeout is 60 s).
_SETTLE_WAIT_LIMIT = 10.0


def trigger_sensor(record: ScheduleRecord, job: str, store: Datastore) -> SensorDefinition:
    """A data-change trigger as a Dagster sensor polling its datastore path."""
    key = record.datastore
    assert key is not None
    interval = max(1, round(record.polling_interval_seconds or 60))

    def evaluate(context):
        watched: Datastore = getattr(context.resources, key)
        cursor = TriggerCursor.parse(context.cursor)
        baseline = record.created_at.timestamp() if cursor.first else None

        def look(seen: Mapping[str, list[str]]) -> Scan:
            return scan_changes(watched, record.path_on_datastore, seen, now=time.time(),
                                settle_seconds=record.settle_seconds, baseline_before=baseline)

        scan = look(cursor.files)
        if scan.pending and record.settle_seconds <= _SETTLE_WAIT_LIMIT:
            # Files still settling would otherwise wait a whole polling interval (Dagster's
            # sensor loop is >= 5 s): wait out the short settle window in this tick, look again.
            time.sleep(record.settle_seconds)
            again = look(scan.files)
            scan = Scan(again.files, [*scan.changed, *again.changed], again.pending)
        next_cursor = TriggerCursor(scan.files).serialize()
        if not scan.changed:
            waiting = f"; {len(scan.pending)} file(s) still being written" if scan.pending else ""
            return SensorResult(skip_reason=f"No new or changed files under '{record.path_on_datastore or '/'}'{waiting}.",
                                cursor=next_cursor)
        try:
            tags = run_tags(record, store, "trigger")
        except (AmlAssetsError, OSError) as exc:
            # Nothing is recorded as seen: the files start runs once the pipeline can run again.
            return SensorResult(skip_reason=f"Trigger '{record.name}' starts no run: {exc}", cursor=context.cursor)
        requests = []
        for rel, digest in scan.changed:
            values = dict(record.parameters)
            if record.data_path_parameter_name:
                values[record.data_path_parameter_name] = {"datastore": key, "path_on_datastore": rel}
            requests.append(RunRequest(
                run_key=f"{rel}@{digest}",
                run_config=parameters_run_config(values),
                tags={**tags, TRIGGER_PATH_TAG: rel},
            ))
        return SensorResult(run_requests=requests, cursor=next_cursor)

    return SensorDefinition(
        name=record.name,
        job_name=job,
        evaluation_fn=evaluate,
        # Dagster's sensor loop runs every 5 s and skips a sensor whose last tick started less
        # than this long ago; ticks start a few ms into a loop, so the exact interval would skip
        # every other loop now and then (a 5 s trigger seen every 10 s). One second less keeps
        # the cadence the user asked for.
        minimum_interval_seconds=max(1, interval - 1),
        description=record.description
        or f"Starts '{job}' for each new or changed file under '{record.path_on_datastore or '/'}' on "
        f"datastore '{key}' (aml-assets data-change trigger)",
        default_status=DefaultSensorStatus.RUNNING if record.active else DefaultSensorStatus.STOPPED,
        required_resource_keys={key},
    )


# --- watching a folder -----------------------------------------------------------------------
@dataclass(frozen=True)
class TriggerCursor:
    """What a trigger has seen: datastore path -> [stat key, content digest]. ``first``: no
    cursor yet (the sensor's first evaluation)."""

    files: dict[str, list[str]]
    first: bool = False

    @classmethod
    def parse(cls, text: str | None) -> TriggerCursor:
        if not text:
            return cls({}, first=True)
        if text.startswith("z:"):
            text = zlib.decompress(base64.b64decode(text[2:])).decode()
        try:
            data = json.loads(text)
            files = data["f"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ScheduleError(
                f"Trigger cursor is unreadable ({exc}); reset it in the Dagster UI (sensor page, "
                "'Set cursor value' to empty)."
            ) from None
        return cls({str(k): list(v) for k, v in files.items()})

    def serialize(self) -> str:
        """Compact JSON; compressed (``z:`` + base64 zlib) once it passes a few kB."""
        text = json.dumps({"v": 1, "f": self.files}, separators=(",", ":"), sort_keys=True)
        if len(text) > 4096:
            return "z:" + base64.b64encode(zlib.compress(text.encode(), 9)).decode()
        return text


@dataclass
class Scan:
    """One poll: every complete file's entry, the changed ones (path, digest), the incomplete."""

    files: dict[str, list[str]]
    changed: list[tuple[str, str]]
    pending: list[str]


def is_ignored(rel: str, folder: str = "") -> bool:
    """Whether a file under the watched ``folder`` starts no run: aml-assets' own records, and
    below the folder dot-files, ``~`` files and temporary or partial names."""
    path = PurePosixPath(rel)
    if not path.parts or path.parts[0] in _OWN_FOLDERS or layout.is_protected(rel):
        return True
    below = path.relative_to(folder).parts if folder and rel != folder else ()
    below = below or (path.name,)
    if any(p.startswith(IGNORED_PREFIXES) for p in below):
        return True
    return below[-1].lower().endswith(IGNORED_SUFFIXES)


def list_files(store: Datastore, folder: str) -> dict[str, dict[str, Any]]:
    """Datastore-relative path -> fsspec details of every file under ``folder`` (recursively;
    ``""``: the whole datastore)."""
    fs = store.filesystem()
    root = store.root_path().strip("/")
    full = store.path(folder) if folder else store.root_path()
    fs.invalidate_cache(full)
    try:
        found = fs.find(full, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for name, info in found.items():
        if info.get("type") not in (None, "file"):
            continue
        rel = PurePosixPath(name.strip("/")).relative_to(root).as_posix()
        out[rel] = info
    return out


def _modified(info: Mapping[str, Any]) -> float | None:
    value = info.get("mtime", info.get("last_modified"))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if value is not None else None


def _stat_key(info: Mapping[str, Any]) -> str:
    parts = [info.get("size"), _modified(info), info.get("ino"), info.get("etag")]
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _is_complete(local: bool, info: Mapping[str, Any], now: float, settle_seconds: float) -> bool:
    """The completeness rule (see the module docstring)."""
    if local:
        modified = _modified(info)
        return modified is not None and now - modified >= settle_seconds
    if str(info.get("blob_type", "")).lower().startswith("append"):
        modified = _modified(info)
        return modified is not None and now - modified >= settle_seconds
    return True  # a block blob is listed only once committed


def _digest(store: Datastore, rel: str, info: Mapping[str, Any]) -> str:
    """The content hash of a file: BLAKE3 of its bytes on a local folder; the store's MD5 of a
    blob when it keeps one, else BLAKE3 of the downloaded bytes."""
    local = store.local_path(rel)
    if local is not None:
        return "b3:" + hash_file(local)[:32]
    settings = info.get("content_settings") or {}
    md5 = settings.get("content_md5") if isinstance(settings, Mapping) else getattr(settings, "content_md5", None)
    if md5:
        return "md5:" + (md5 if isinstance(md5, str) else bytes(md5).hex())
    import blake3

    hasher = blake3.blake3()
    with store.filesystem().open(store.path(rel), "rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            hasher.update(chunk)
    return "b3:" + hasher.hexdigest()[:32]


def scan_changes(
    store: Datastore,
    folder: str,
    seen: Mapping[str, list[str]],
    *,
    now: float,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    baseline_before: float | None = None,
) -> Scan:
    """Compare the files under ``folder`` with what the cursor ``seen``."""
    files: dict[str, list[str]] = {}
    changed: list[tuple[str, str]] = []
    pending: list[str] = []
    folder = check_relative_path(store.name, folder) if folder else ""
    for rel, info in sorted(list_files(store, folder).items()):
        if is_ignored(rel, folder):
            continue
        local = store.local_path(rel) is not None
        key, old = _stat_key(info), seen.get(rel)
        if old and old[0] == key:
            files[rel] = old
            continue
        if not _is_complete(local, info, now, settle_seconds):
            pending.append(rel)
            if old:
                files[rel] = old
            continue
        digest = _digest(store, rel, info)
        if local and _stat_key(_local_info(store, rel)) != key:
            pending.append(rel)  # changed while it was read: look again next time
            if old:
                files[rel] = old
            continue
        files[rel] = [key, digest]
        if old and old[1] == digest:
            continue  # the same content, written again
        modified = _modified(info)
        if old is None and baseline_before is not None and modified is not None and modified < baseline_before:
            continue  # there before the trigger was created
        changed.append((rel, digest))
    return Scan(files, changed, pending)


def _local_info(store: Datastore, rel: str) -> dict[str, Any]:
    try:
        return store.filesystem().info(store.path(rel))
    except FileNotFoundError:
        return {}
