"""The code a run's steps run: the live source folder, or a published version's frozen snapshot.

Publishing stores each step's ``source_directory`` on the datastore, content-addressed (as Azure
ML uploads a snapshot when it publishes a pipeline):

- every file once, as ``_snapshots/objects/<blake3 of its bytes>``;
- a *tree* per source folder: ``{relative path: {digest, size, executable}}`` plus the folder's
  name, stored as ``_snapshots/trees/<digest of the tree>.json``;
- a *pipeline snapshot*: for each step, its tree and its *structure* (kind, script, symbolic
  arguments, inputs, outputs, compute target, parameters), as
  ``_snapshots/pipelines/<digest>.json``. Its digest is what a published version (and the
  ``SNAPSHOT_TAG`` of its runs) points at.

Every record is named by the hash of its content, so a reader verifies what it reads: a tampered
object, tree or snapshot is refused by name, never run.

What a snapshot covers: every file below the step's ``source_directory`` (``.amlignore``, else
``.gitignore``, excludes, as for the code hash; ``__pycache__``, ``*.pyc``, ``.git``,
``.ipynb_checkpoints`` and other hidden folders are skipped), plus every file of that folder the
step's code hash counts (e.g. a Python module the script imports from a hidden or ignored folder),
so a published run's code hash equals the one of a live run of the same code and reuse works
across both. Not covered: ``hash_paths`` and modules imported from outside the source folder
(installed packages, the project's own packages on ``sys.path``): they stay where they are and a
published run uses them as they are at run time. Step settings outside the structure
(environment, Spark conf and sizing, timeouts, ``allow_reuse``) also come from the live
definitions.

A run of a published version materializes each step's tree into the local cache
(``<cache>/snapshots/<tree digest>/<folder name>``, written to a temporary folder and renamed
into place, its files read-only), checks the live step's structure against the published one,
and runs the step from there (``step_for_run``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from aml_assets.data import layout
from aml_assets.data.content import (
    StatCache,
    canonical_digest,
    hash_bytes,
    hash_file,
    ignore_spec,
    walk_files,
)
from aml_assets.data.datasets import DatasetInput, OutputDataset
from aml_assets.data.datastore import Datastore, default_cache_dir, make_writable, open_stat_cache
from aml_assets.errors import AmlAssetsError, DatastoreError
from aml_assets.pipeline.steps import Step
from aml_assets.pipeline.tags import (
    PUBLISHED_ID_TAG,
    PUBLISHED_NAME_TAG,
    PUBLISHED_VERSION_TAG,
    SNAPSHOT_TAG,
)
from aml_assets.reuse.code import step_code

if TYPE_CHECKING:
    from aml_assets.pipeline.definition import Pipeline

_TREE_TAG = "aml-snapshot-tree/v1"
_SNAPSHOT_TAG = "aml-pipeline-snapshot/v1"
_FORMAT = 1
#: How many differences a structure mismatch lists before "and N more".
_MAX_DIFFERENCES = 5

_logger = logging.getLogger(__name__)


class SnapshotError(AmlAssetsError):
    """A published code snapshot is missing, corrupted, or no longer matches the live pipeline."""


@dataclass(frozen=True)
class PipelineSnapshot:
    """A stored pipeline snapshot: its digest, each step's tree digest and structure."""

    digest: str
    pipeline: str
    trees: dict[str, str]
    structures: dict[str, dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Structure: what a published version keeps of a step besides its code


def step_structure(step: Step) -> dict[str, Any]:
    """The parts of a step's declaration a published version is pinned to (JSON-able).

    Kind, script, symbolic arguments, inputs (with their datasets' declarations), outputs,
    compute target, the declarations of the parameters it uses, its Python environment (the
    request: pins, requirements file content, Python, env vars; a version must not silently run
    with other packages), and when given its version label, params, run_after order and its
    kind's own settings (a command's shell, a parallel run's mini-batching). Paths on this machine (``source_directory``, ``hash_paths``, seed
    files) and speed-only settings are left out.
    """
    structure = _plain(
        {
            "kind": step.kind,
            "script": step.script,
            "arguments": [_symbolic(a) for a in step.arguments],
            "inputs": {
                i.name: {"dataset": i.dataset.name, "mode": i.mode.value, **_definition(i.dataset)}
                for i in step.all_inputs()
            },
            "outputs": {
                o.name: {**o.definition(), "registered": o.registered} for o in step.all_outputs()
            },
            "compute_target": step.compute_target,
            "parameters": {
                **{p.name: parameter_structure(p) for p in step.parameters()},
                # DataPath parameters are bound as inputs: their defaults are pinned too.
                **{
                    i.dataset.name: parameter_structure(i.dataset)
                    for i in step.all_inputs()
                    if callable(getattr(i.dataset, "to_record", None))
                },
            },
        }
    )
    # Declarations added with the v1 surface, each only when given (a step without them keeps
    # the structure its published versions were pinned to): a published version must not run
    # with another version label, other params, another order or another kind's settings.
    kind_settings = getattr(step, "kind_settings", None)
    extras = {
        "version": step.version,
        "params": step.params_settings() or None,
        "run_after": sorted(s.name for s in step.ordered_after) or None,
        "std_log_output": step.std_log_output,
        "shell": getattr(step, "shell", None),
        "parallel": kind_settings() if callable(kind_settings) else None,
    }
    structure.update({k: _plain(v) for k, v in extras.items() if v is not None})
    env = step.effective_environment()
    if env != type(env)():  # a step without an environment of its own keeps its old structure
        structure["environment"] = _plain({
            # The requirements file's content (with what it includes), not its path.
            "requirements": _text_digest(env.requirements_text()) if env.requirements_file else None,
            "pip": list(env.pip),
            "packages": list(env.packages),
            "python": env.python,
            "env_vars": env.env_var_dict(),
        })
    return structure


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parameter_structure(p: Any) -> dict[str, Any]:
    """A parameter's declaration (its record) without its description."""
    to_record = getattr(p, "to_record", None)
    record = dict(to_record()) if callable(to_record) else {"repr": repr(p)}
    record.pop("description", None)
    return _plain(record)


def _symbolic(arg: Any) -> Any:
    if isinstance(arg, DatasetInput):
        return {"input": arg.name, "dataset": arg.dataset.name, "mode": arg.mode.value}
    if isinstance(arg, OutputDataset):
        return {"output": arg.name, "format": arg.format}
    if isinstance(arg, (str, int, float, bool)):
        return arg
    if hasattr(arg, "default_value") and hasattr(arg, "name"):  # any kind of pipeline parameter
        return {"parameter": arg.name}
    return {"literal": f"{type(arg).__name__}:{arg}"}


def _definition(dataset: Any) -> dict[str, Any]:
    definition = getattr(dataset, "definition", None)
    return dict(definition()) if callable(definition) else {}


def _plain(value: Any) -> Any:
    """The value as JSON gives it back (tuples become lists), so stored and live compare equal."""
    return json.loads(json.dumps(value, default=str))


def structure_differences(published: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """How a live step's structure differs from the published one, in words (empty: same)."""
    found: list[str] = []
    _diff(published, _plain(live), "", found)
    if len(found) > _MAX_DIFFERENCES:
        found = [*found[:_MAX_DIFFERENCES], f"and {len(found) - _MAX_DIFFERENCES} more"]
    return found


def _diff(old: Any, new: Any, where: str, out: list[str]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            here = f"{where}.{key}" if where else str(key)
            if key not in new:
                out.append(f"{here} was published but is gone")
            elif key not in old:
                out.append(f"{here} = {new[key]!r} is new")
            else:
                _diff(old[key], new[key], here, out)
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _diff(a, b, f"{where}[{i}]", out)
        return
    out.append(f"{where or 'the step'}: published {old!r}, now {new!r}")


# ---------------------------------------------------------------------------------------------
# Storing a snapshot (publish side)


def store_snapshot(pipeline: Pipeline, store: Datastore) -> PipelineSnapshot:
    """Store every step's code and structure on ``store``; returns the pipeline snapshot.

    Objects and trees are created once and shared by every version (and pipeline) with the same
    content. An object already present is read back and checked, and rewritten when its bytes no
    longer match their name, so publishing again repairs a corrupted snapshot (this reads the
    code back from the store, which costs as much as the code is large).
    """
    cache = open_stat_cache()
    try:
        checked: set[str] = set()
        trees: dict[str, str] = {}
        by_folder: dict[tuple[Path, str], str] = {}
        for step in pipeline.steps:
            if not step.runs_code:
                continue  # a DataTransferStep: no code to freeze
            key = (Path(step.source_directory), step.script)
            if key not in by_folder:
                by_folder[key] = _store_tree(step, store, cache, checked)
            trees[step.name] = by_folder[key]
    finally:
        cache.close()
    structures = {step.name: step_structure(step) for step in pipeline.steps}
    record = _plain(
        {
            "format": _FORMAT,
            "pipeline": pipeline.name,
            "steps": {name: {"tree": trees[name], "structure": structures[name]} for name in trees},
        }
    )
    digest = canonical_digest(record, tag=_SNAPSHOT_TAG)
    _store_record(store, layout.snapshot_record(digest), record, digest, _SNAPSHOT_TAG)
    return PipelineSnapshot(digest, pipeline.name, trees, structures)


def snapshot_files(step: Step, cache: StatCache | None = None) -> list[tuple[str, Path]]:
    """The files of a step's snapshot, as (posix path relative to the source folder, path)."""
    source = Path(step.source_directory)
    files = {
        rel: path
        for rel, path in walk_files(source, ignore_spec(source))
        if not any(part.startswith(".") for part in PurePosixPath(rel).parts[:-1])
    }
    # Whatever the code hash counts is frozen too (e.g. a module imported from a hidden folder),
    # so a published run hashes the same code as a live one. hash_paths are left out (absolute).
    # (A CommandStep's code is its whole folder, listed above: its runner is not in it.)
    closure = step_code(step.script, source, (), cache).files if step.script_path.is_relative_to(source) else {}
    for rel in closure:
        if not rel.startswith("/"):
            files.setdefault(rel, source / rel)
    return sorted(files.items())


def _store_tree(step: Step, store: Datastore, cache: StatCache, checked: set[str]) -> str:
    entries: dict[str, dict[str, Any]] = {}
    for rel, path in snapshot_files(step, cache):
        st = path.stat()
        digest = hash_file(path, cache)
        if digest not in checked:
            _store_object(store, digest, path, step.name, rel)
            checked.add(digest)
        entries[rel] = {
            "digest": digest,
            "size": st.st_size,
            "executable": bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)),
        }
    tree = _plain({"format": _FORMAT, "name": Path(step.source_directory).name, "files": entries})
    digest = canonical_digest(tree, tag=_TREE_TAG)
    _store_record(store, layout.snapshot_tree(digest), tree, digest, _TREE_TAG)
    return digest


def _store_object(store: Datastore, digest: str, path: Path, step: str, rel: str) -> None:
    rel_object = layout.snapshot_object(digest)
    if store.exists(rel_object):
        if hash_bytes(store.read_bytes(rel_object)) == digest:
            return
        _logger.warning(
            "Code snapshot object %s on datastore '%s' was corrupted; rewriting it from %s.",
            digest,
            store.name,
            path,
        )
        store._write_record(rel_object, _read_checked(path, digest, step, rel))
        return
    store._create_record(rel_object, _read_checked(path, digest, step, rel))


def _read_checked(path: Path, digest: str, step: str, rel: str) -> bytes:
    data = path.read_bytes()
    if hash_bytes(data) != digest:
        raise SnapshotError(
            f"File '{rel}' of step '{step}' ({path}) changed while it was being published; "
            "publish again once it is saved."
        )
    return data


def _dump(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, indent=1, sort_keys=True).encode()


def _store_record(store: Datastore, rel: str, record: dict, digest: str, tag: str) -> None:
    """Create a content-addressed record once; rewrite it only if the stored one is corrupted."""
    if store._create_record(rel, _dump(record)):
        return
    try:
        _verified(store, rel, digest, tag, "record")
    except SnapshotError:
        _logger.warning(
            "Snapshot record %s on datastore '%s' was corrupted; rewriting it.", rel, store.name
        )
        store._write_record(rel, _dump(record))


# ---------------------------------------------------------------------------------------------
# Reading a snapshot (run side)


def _verified(store: Datastore, rel: str, digest: str, tag: str, what: str) -> dict[str, Any]:
    """A content-addressed JSON record, checked against its digest."""
    fix = (
        "Publish the pipeline again from the same code to restore it (or publish a new version), "
        "then run that."
    )
    try:
        data = store.read_bytes(rel)
    except DatastoreError as exc:
        raise SnapshotError(
            f"{what} {digest} is missing from datastore '{store.name}' ({store.uri(rel)}): the run "
            f"reads its records from the pipeline's datastore, which must be the one it was "
            f"published to. {fix}"
        ) from exc
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict) or canonical_digest(record, tag=tag) != digest:
        raise SnapshotError(
            f"{what} {digest} on datastore '{store.name}' ({store.uri(rel)}) is corrupted: its "
            f"content does not match its digest, so it is not used. {fix}"
        )
    return record


def load_snapshot(store: Datastore, digest: str) -> PipelineSnapshot:
    """A stored pipeline snapshot, verified against its digest."""
    record = _verified(
        store, layout.snapshot_record(digest), digest, _SNAPSHOT_TAG, "Code snapshot"
    )
    steps = record.get("steps") or {}
    return PipelineSnapshot(
        digest=digest,
        pipeline=str(record.get("pipeline", "")),
        trees={name: entry["tree"] for name, entry in steps.items()},
        structures={name: entry["structure"] for name, entry in steps.items()},
    )


def load_tree(store: Datastore, digest: str) -> dict[str, Any]:
    """A stored code tree, verified against its digest (and its paths checked)."""
    tree = _verified(store, layout.snapshot_tree(digest), digest, _TREE_TAG, "Code snapshot tree")
    name = tree.get("name")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise SnapshotError(
            f"Code snapshot tree {digest} names its folder {name!r}, which is not a folder name; "
            "it is refused. Publish the pipeline again."
        )
    for rel in tree.get("files", {}):
        parts = PurePosixPath(rel).parts
        if not rel or rel.startswith("/") or ".." in parts or "\\" in rel:
            raise SnapshotError(
                f"Code snapshot tree {digest} lists the path {rel!r}, which leaves its folder; "
                "it is refused. Publish the pipeline again."
            )
    return tree


def snapshot_cache_dir() -> Path:
    """Where materialized snapshots live on this machine: ``<cache>/snapshots``."""
    return default_cache_dir() / "snapshots"


def materialize_tree(store: Datastore, digest: str, cache_dir: Path | None = None) -> Path:
    """The local folder holding a code tree, downloaded (and hash-checked) on first use.

    A cached copy is checked against the tree (names, sizes, digests through the stat cache)
    each time; one that was modified is replaced. Concurrent callers each write their own
    temporary folder and rename it into place; the first rename wins, the others use it.
    """
    tree = load_tree(store, digest)
    root = Path(cache_dir) if cache_dir is not None else snapshot_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = root / digest
    folder = final / tree["name"]
    cache = open_stat_cache()
    try:
        for _ in range(5):
            if final.exists():
                problem = _local_problem(folder, tree, cache)
                if problem is None:
                    return folder
                _logger.warning(
                    "The cached code snapshot %s was modified (%s); downloading it again.",
                    final,
                    problem,
                )
                _discard(final, root)
            tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=root))
            try:
                _write_tree(store, tree, digest, tmp / tree["name"])
                os.rename(tmp, final)
                return folder
            except OSError:
                if not final.exists():
                    raise
                # Another process or thread put the same tree in place first: use theirs.
            finally:
                if tmp.exists():
                    make_writable(tmp)
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        cache.close()
    raise SnapshotError(
        f"Could not put code snapshot tree {digest} in place at {final}: it kept changing while "
        "it was checked. Make sure nothing writes into that folder, then run again."
    )


def _write_tree(store: Datastore, tree: Mapping[str, Any], digest: str, folder: Path) -> None:
    folder.mkdir(parents=True)
    for rel, entry in sorted(tree["files"].items()):
        rel_object = layout.snapshot_object(entry["digest"])
        where = f"file '{tree['name']}/{rel}' of code snapshot tree {digest}"
        try:
            data = store.read_bytes(rel_object)
        except DatastoreError as exc:
            raise SnapshotError(
                f"Code snapshot object {entry['digest']} ({where}) is missing from datastore "
                f"'{store.name}' ({store.uri(rel_object)}). Publish the pipeline again from the "
                "same code to restore it."
            ) from exc
        if hash_bytes(data) != entry["digest"]:
            raise SnapshotError(
                f"Code snapshot object {entry['digest']} ({where}) on datastore '{store.name}' "
                f"({store.uri(rel_object)}) is corrupted: its bytes hash to {hash_bytes(data)}. "
                "The published code is not run from it; publish the pipeline again from the same "
                "code to repair it (or publish a new version)."
            )
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        # Read-only, so a script cannot change the published code for the runs after it.
        target.chmod(0o555 if entry.get("executable") else 0o444)


def _local_problem(folder: Path, tree: Mapping[str, Any], cache: StatCache) -> str | None:
    """Why a cached copy differs from its tree, or None when it matches."""
    files = tree["files"]
    present = dict(walk_files(folder)) if folder.is_dir() else {}
    missing, extra = sorted(set(files) - set(present)), sorted(set(present) - set(files))
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    for rel, entry in files.items():
        path = present[rel]
        if path.stat().st_size != entry["size"] or hash_file(path, cache) != entry["digest"]:
            return f"'{rel}' changed"
    return None


#: A temporary folder older than this was left by a process that died while materializing.
_LEFTOVER_AGE_S = 24 * 3600


def _remove_leftovers(root: Path) -> None:
    """Remove temporary and discarded folders that dead processes left in the cache."""
    cutoff = time.time() - _LEFTOVER_AGE_S
    for entry in root.iterdir():
        try:
            if entry.name.startswith(".") and entry.is_dir() and entry.stat().st_mtime < cutoff:
                make_writable(entry)
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            continue  # another process removed it first


def _discard(final: Path, root: Path) -> None:
    stale = root / f".stale-{final.name[:16]}-{uuid.uuid4().hex}"
    try:
        os.rename(final, stale)
    except FileNotFoundError:
        return
    make_writable(stale)
    shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The step a run executes


def _published_label(tags: Mapping[str, str], digest: str) -> str:
    name, version = tags.get(PUBLISHED_NAME_TAG), tags.get(PUBLISHED_VERSION_TAG)
    if name:
        ident = tags.get(PUBLISHED_ID_TAG)
        return (
            f"published pipeline '{name}' version {version or '?'}"
            + (f" (id {ident})" if ident else "")
            + f", code snapshot {digest[:12]}"
        )
    return f"code snapshot {digest[:12]}"


def step_for_run(step: Step, tags: Mapping[str, str], store: Datastore, log: Any) -> Step:
    """The step as this run must execute it (``step`` itself unless the run is of a published
    version, whose scripts come from its code snapshot)."""
    digest = (tags.get(SNAPSHOT_TAG) or "").strip()
    if not digest:
        if tags.get(PUBLISHED_ID_TAG):
            raise SnapshotError(
                f"This run is tagged as a run of published pipeline {tags[PUBLISHED_ID_TAG]} but "
                f"has no '{SNAPSHOT_TAG}' tag, so step '{step.name}' cannot know which code to "
                "run. Start runs of a published pipeline with its run_tags()."
            )
        return step
    snapshot = load_snapshot(store, digest)
    if not step.runs_code:
        return step  # a DataTransferStep runs no code: nothing was frozen
    label = _published_label(tags, digest)
    if step.name not in snapshot.trees:
        raise SnapshotError(
            f"Step '{step.name}' is not part of {label}, whose steps are "
            f"{', '.join(sorted(snapshot.trees)) or 'none'}: the pipeline changed since it was "
            "published. Publish a new version (Pipeline.publish) and run that one."
        )
    differences = structure_differences(snapshot.structures[step.name], step_structure(step))
    if differences:
        raise SnapshotError(
            f"Step '{step.name}' no longer matches {label}: {'; '.join(differences)}. A published "
            "version runs its frozen scripts with the step as declared now, so the declaration "
            "must not change: publish a new version (Pipeline.publish) and run that one, or "
            "restore the step's declaration."
        )
    folder = materialize_tree(store, snapshot.trees[step.name])
    log.info(
        f"Step '{step.name}' runs {label}: scripts from the frozen snapshot at {folder}, "
        f"not from {step.source_directory}."
    )
    return dataclasses.replace(step, source_directory=folder)
