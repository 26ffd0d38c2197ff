"""Where aml-assets keeps its records on a datastore: every path is built here, nowhere else.

```
steps/<step>/<fingerprint>/<attempt>/<output>/   a published output (read-only, never modified)
steps/<step>/<fingerprint>/commits/<t>-<attempt>.json   what makes an attempt reusable
steps/<step>/runs/<t>-<run_id>.json              what one run of the step decided, and how it ended
steps/<step>/latest-run.json                     pointer to the newest run record (O(1) decisions)
datasets/<name>/versions/<NNNNNN>.json           a registered version (created once, never rewritten)
datasets/<name>/tombstones/<NNNNNN>.json         a deleted version: its number is never reused
_refs/<asset>/<run_id>.json, latest.json         the dataset reference each run handed downstream
_stats/<content_hash>.json                       cached table statistics (disposable)
_tmp/                                            scratch of running steps (gc removes leftovers)
_published/<name>/versions/<NNNNNN>.json         a published pipeline version (created once, never rewritten)
_published/<name>/status/<NNNNNN>.json           whether that version is enabled (rewritten on disable/enable)
_published/_ids/<id>.json                        published id -> name and version
_snapshots/objects/<digest>                      one file of a code snapshot, named by its content hash
_snapshots/trees/<digest>.json                   a code snapshot: relative path -> object digest
_snapshots/pipelines/<digest>.json               a pipeline's snapshot: each step's tree and structure
_endpoints/<name>.json                           a pipeline endpoint: its versions and default version
_schedules/<name>.json                           a schedule or data-change trigger
_environments/locks/<request_digest>.json        the recorded lock of a step environment request
_minibatches/<key[:2]>/<key>.json                a ParallelRunStep mini-batch result's record, by its key (disposable)
_minibatches/<key[:2]>/<key>-<attempt>/         that result's rows and files
```

The ledger, the registry, the IO manager and gc all use these helpers, so the layout is written
down once and a reader can find every record from this page.
"""

from __future__ import annotations

from pathlib import PurePosixPath

STEPS = "steps"
DATASETS = "datasets"
REFS = "_refs"
STATS = "_stats"
TMP = "_tmp"
PUBLISHED = "_published"
SNAPSHOTS = "_snapshots"
ENDPOINTS = "_endpoints"
SCHEDULES = "_schedules"
ENVIRONMENTS = "_environments"
MINIBATCHES = "_minibatches"


_VERSION_WIDTH = 6  # zero-padded, so a listing sorts by version


def step_dir(step: str) -> str:
    """Everything one step has on the datastore."""
    return f"{STEPS}/{step}"


def fingerprint_dir(step: str, fingerprint: str) -> str:
    """The attempts and commits of one fingerprint of a step."""
    return f"{STEPS}/{step}/{fingerprint}"


def attempt_dir(step: str, fingerprint: str, attempt: str) -> str:
    """One attempt's published outputs."""
    return f"{STEPS}/{step}/{fingerprint}/{attempt}"


def output_path(step: str, fingerprint: str, attempt: str, output: str) -> str:
    """Where an attempt publishes one output."""
    return f"{attempt_dir(step, fingerprint, attempt)}/{output}"


def attempt_of(published_path: str) -> str:
    """The attempt name in a published output's path (``steps/<step>/<fp>/<attempt>/<output>``)."""
    return PurePosixPath(published_path).parts[3]


def commits_dir(step: str, fingerprint: str) -> str:
    """The commit records of one fingerprint of a step."""
    return f"{fingerprint_dir(step, fingerprint)}/commits"


def commit_record(step: str, fingerprint: str, stamp_ns: int, attempt: str) -> str:
    """A commit record; names sort by time."""
    return f"{commits_dir(step, fingerprint)}/{stamp_ns:020d}-{attempt}.json"


def runs_dir(step: str) -> str:
    """The run records of a step."""
    return f"{STEPS}/{step}/runs"


def run_record(step: str, stamp_ns: int, run_id: str) -> str:
    """One run's record; names sort by the run's start."""
    return f"{runs_dir(step)}/{stamp_ns:020d}-{run_id}.json"


def run_id_of_record(name: str) -> str:
    """The run id in a run record's file name."""
    return name.removesuffix(".json").split("-", 1)[-1]


def latest_run_pointer(step: str) -> str:
    """The pointer to a step's newest run record."""
    return f"{STEPS}/{step}/latest-run.json"


def versions_dir(dataset: str) -> str:
    """The version records of a registered dataset."""
    return f"{DATASETS}/{dataset}/versions"


def version_record(dataset: str, version: int) -> str:
    """One registered version's record."""
    return f"{versions_dir(dataset)}/{version:0{_VERSION_WIDTH}d}.json"


def tombstones_dir(dataset: str) -> str:
    """Records of deleted versions, so their numbers are never given out again."""
    return f"{DATASETS}/{dataset}/tombstones"


def tombstone_record(dataset: str, version: int) -> str:
    """The tombstone of one deleted version."""
    return f"{tombstones_dir(dataset)}/{version:0{_VERSION_WIDTH}d}.json"


def version_of_record(name: str) -> int | None:
    """The version number in a version (or tombstone) record's file name, None if not one."""
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() else None


def refs_dir(asset: str) -> str:
    """The per-run dataset references of an asset."""
    return f"{REFS}/{asset}"


def run_ref(asset: str, run_id: str) -> str:
    """The reference an asset's materialization in one run handed downstream."""
    return f"{REFS}/{asset}/{run_id}.json"


def latest_ref(asset: str) -> str:
    """The newest reference of an asset."""
    return f"{REFS}/{asset}/latest.json"


def stats_record(content_hash: str) -> str:
    """Cached statistics of a table with this content."""
    return f"{STATS}/{content_hash}.json"


def published_versions_dir(name: str) -> str:
    """The version records of a published pipeline."""
    return f"{PUBLISHED}/{name}/versions"


def published_version_record(name: str, version: int) -> str:
    """One published version's record (created once, never rewritten)."""
    return f"{published_versions_dir(name)}/{version:0{_VERSION_WIDTH}d}.json"


def published_status_record(name: str, version: int) -> str:
    """Whether a published version is enabled (the only mutable part of a publication)."""
    return f"{PUBLISHED}/{name}/status/{version:0{_VERSION_WIDTH}d}.json"


def published_id_record(published_id: str) -> str:
    """The index from a published id to its name and version."""
    return f"{PUBLISHED}/_ids/{published_id}.json"


def snapshot_object(digest: str) -> str:
    """One file of a code snapshot, content-addressed."""
    return f"{SNAPSHOTS}/objects/{digest}"


def snapshot_tree(digest: str) -> str:
    """A code snapshot's listing: relative path -> object digest."""
    return f"{SNAPSHOTS}/trees/{digest}.json"


def snapshot_record(digest: str) -> str:
    """A pipeline's code snapshot: each step's tree digest and the structure it was published with."""
    return f"{SNAPSHOTS}/pipelines/{digest}.json"


def endpoint_record(name: str) -> str:
    """A pipeline endpoint: its versions and its default."""
    return f"{ENDPOINTS}/{name}.json"


def schedule_record(name: str) -> str:
    """A schedule or data-change trigger."""
    return f"{SCHEDULES}/{name}.json"


def environment_lock_record(request_digest: str) -> str:
    """The lock recorded for an environment request, so a rerun next month resolves the same."""
    return f"{ENVIRONMENTS}/locks/{request_digest}.json"


def minibatch_dir(key: str) -> str:
    """Where one mini-batch result of a ParallelRunStep lives, content-addressed: ``<this>.json``
    is its record, ``<this>-<attempt>/`` its rows and files (``reuse.minibatch_cache``)."""
    return f"{MINIBATCHES}/{key[:2]}/{key}"


def is_protected(rel: str) -> bool:
    """Whether a datastore-relative path holds records only aml-assets may write or delete:
    anything under ``steps/``, ``_published/``, ``_snapshots/``, ``_endpoints/``, ``_schedules/``, ``_environments/``, and the version and tombstone records under ``datasets/<name>/``
    (a user's own data in a folder named ``datasets`` stays theirs)."""
    parts = PurePosixPath(rel).parts if rel else ()
    if not parts:
        return False
    if parts[0] in (STEPS, PUBLISHED, SNAPSHOTS, ENDPOINTS, SCHEDULES, ENVIRONMENTS):
        return True
    return parts[0] == DATASETS and len(parts) >= 3 and parts[2] in ("versions", "tombstones")
