"""``DataTransferStep``: copy a file or folder from one datastore to another (e.g. the local store
to Azure Blob), reused by content.

The step runs no code of its own. Its fingerprint is the source's content and declaration and
the destination (datastore key, path, type); its ledger is on the pipeline's datastore like any
step's. A rerun whose source is unchanged is reused **when the destination still holds what was
copied there** (checked file by file against the integrity records made at the copy, on blob
storage from the listing, without downloading); otherwise the data is copied again.

The destination folder is the step's: after a copy it holds exactly the source's files (files
of an earlier copy that the source no longer has are removed). The copy itself is not atomic (a
reader during the copy may see a mix), but nothing reuses or reads it downstream before it is
complete and committed. Downstream steps read the destination through ``step.output``
(Azure's ``get_output()``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from aml_assets.data import layout
from aml_assets.data.content import data_manifest, manifest_digest, walk_files
from aml_assets.data.datasets import DatasetDef, DatasetInput, OutputDataset
from aml_assets.data.datastore import Datastore, default_work_dir
from aml_assets.errors import StepFailedError
from aml_assets.pipeline.execution import StepExecution, StepResult
from aml_assets.pipeline.steps import Step
from aml_assets.reuse.decision import Decision
from aml_assets.reuse.fingerprint import StepFingerprint
from aml_assets.reuse.ledger import StepLedger
from aml_assets.reuse.records import Commit, PublishedOutput, RunRecord
from aml_assets.reuse.verify import file_records, with_stored_digests

__all__ = ["DataTransferStep", "TransferDestination"]

ReferenceType = Literal["file", "directory"]
_TYPES = (None, "file", "directory")


@dataclass(frozen=True)
class TransferDestination:
    """Where a DataTransferStep copies to: a datastore (its resource key), a path on it, and the
    name of the dataset it becomes."""

    datastore: str
    path: str
    #: The dataset's (asset's) name; "": the step's name with ``_output``.
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path).strip().strip("/"))


def _store_key(value: Any) -> str:
    """A datastore named by its resource key (str) or an object with ``.name``."""
    if isinstance(value, str):
        return value
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(
        f"{value!r} names no datastore; give the resource key (a str) of a datastore configured "
        "in your Definitions' resources"
    )


def as_destination(value: Any) -> TransferDestination:
    """A destination from ``TransferDestination``, ``(datastore, path)``, or a data reference
    (anything with ``datastore`` and ``path_on_datastore``, e.g. ``DataReference``)."""
    if isinstance(value, TransferDestination):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return TransferDestination(_store_key(value[0]), str(value[1]))
    datastore = getattr(value, "datastore", None)
    path = getattr(value, "path_on_datastore", None) or getattr(value, "path", None)
    if datastore is not None and path:
        name = getattr(value, "data_reference_name", None) or getattr(value, "name", None) or ""
        return TransferDestination(_store_key(datastore), str(path), str(name))
    raise TypeError(
        f"DataTransferStep: destination {value!r} says no datastore and path; give "
        "TransferDestination(datastore, path), a (datastore, path) tuple or a DataReference"
    )


def as_source(value: Any) -> DatasetInput:
    """The source as a step input: a dataset (or ``dataset.as_mount()``...), an earlier step's
    ``OutputDataset``, or a data reference (anything with ``as_mount()``)."""
    if isinstance(value, DatasetInput):
        return value
    if callable(getattr(value, "step_input", None)):  # a DataReference: in its own mode
        return value.step_input()
    if isinstance(value, DatasetDef):
        return value.as_mount()
    if callable(getattr(value, "as_mount", None)):
        found = value.as_mount()
        if isinstance(found, DatasetInput):
            return found
    raise TypeError(
        f"DataTransferStep: source {value!r} is not a dataset; give a FileDataset / "
        "TabularDataset, an OutputDataset of an earlier step, or a DataReference"
    )


class TransferExecution(StepExecution):
    """Copies the source to the destination, or reuses an earlier copy still in place."""

    step: DataTransferStep

    def destination_store(self) -> Datastore:
        return self.input_stores[self.step.destination.datastore]

    def fingerprint(self) -> tuple[StepFingerprint, list[str]]:
        step, source = self.step, self.step.source_input
        dest = step.destination
        fp = StepFingerprint(
            step=step.name,
            inputs={source.dataset.name: self.input_refs[source.dataset.name].content_hash},
            settings={
                "kind": step.kind,
                "inputs": {source.name: {"dataset": source.dataset.name, **source.dataset.definition()}},
                "source_type": step.source_reference_type,
                "destination": {
                    "datastore": dest.datastore, "path": dest.path, "type": step.destination_reference_type,
                },
                # Only when given, as for every step.
                **({"version": step.version} if step.version is not None else {}),
            },
        )
        return fp, []

    def decide(self, fp: StepFingerprint, ledger: StepLedger, previous: RunRecord | None) -> Decision:
        # Checked where the copy is (the destination store), not on the pipeline's store.
        store, self.datastore = self.datastore, self.destination_store()
        try:
            decision = super().decide(fp, ledger, previous)
        finally:
            self.datastore = store
        # A destination that no longer holds what was copied is expected (another copy, an
        # edit): say so plainly, and copy again; no alarm.
        for warning in decision.warnings:
            self.log.info(f"Step '{self.step.name}': {warning.split(':')[0]}; copying again")
        reasons = [
            f"the destination {self.destination_store().uri(self.step.destination.path)} no longer "
            "holds what was copied there; copying again" if r.startswith("its published outputs") else r
            for r in decision.reasons
        ]
        return replace(decision, warnings=[], reasons=reasons)

    def _run_and_publish(self, ledger: StepLedger, digest: str, components: dict[str, Any]) -> Commit:
        step, source = self.step, self.step.source_input
        ref = self.input_refs[source.dataset.name]
        src_store, dest_store = self.input_stores[ref.datastore], self.destination_store()
        workdir = Path(tempfile.mkdtemp(prefix=f"aml-{step.name}-inputs-", dir=default_work_dir()))
        try:
            local = src_store.local_path(ref.path)
            if local is None:
                self.log.info(f"Step '{step.name}': fetching {ref.uri}")
                local = src_store.download(ref.path, workdir / "source")
            rel = step.destination_path(local.is_file(), local.name)
            entries = data_manifest(local, self.stat_cache)
            if not entries:
                raise StepFailedError(
                    f"Step '{step.name}': source '{source.dataset.name}' ({ref.uri}) holds no files; "
                    "nothing was copied."
                )
            self.log.info(f"Step '{step.name}': copying {ref.uri} to {dest_store.uri(rel)}")
            copied = _mirror(local, dest_store, rel)
            files = with_stored_digests(dest_store, rel, file_records(entries))
            output = PublishedOutput(
                path=rel,
                content_hash=manifest_digest(entries),
                file_count=len(entries),
                byte_count=sum(e.size for e in entries),
                files=files,
            )
            commit = Commit(
                fingerprint=digest,
                run_id=self.run_id,
                outputs={step.output.name: output},
                components=components,
                created=time.time(),
                metrics={"files_copied": copied, "bytes_copied": output.byte_count},
            )
            ledger.commit(commit, f"{self.run_id[:8]}-{uuid.uuid4().hex[:8]}")
            return commit
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _result(self, commit: Commit, reused: bool, reasons: list[str]) -> StepResult:
        result = super()._result(commit, reused, reasons)
        dest, store = self.step.destination, self.destination_store()
        result.refs = {
            name: ref.model_copy(update={"datastore": dest.datastore, "uri": store.uri(ref.path)})
            for name, ref in result.refs.items()
        }
        return result


def _mirror(local: Path, store: Datastore, rel: str) -> int:
    """Make ``rel`` on ``store`` hold exactly the file or folder ``local``; returns the number of
    files copied."""
    fs, base = store.filesystem(), store.path(rel)
    if local.is_file():
        names = [("", local)]
    else:
        names = walk_files(local)
    if store.exists(rel) and (local.is_file() != (not store.is_dir(rel))):
        store.delete(rel)  # a file where a folder goes (or the reverse): replaced whole
    targets = [f"{base}/{name}" if name else base for name, _ in names]
    if store.local_path(rel) is not None:
        for target in targets:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
    if names:
        fs.put([str(p) for _, p in names], targets)
    if not local.is_file():
        keep = {name for name, _ in names}
        fs.invalidate_cache(base)
        prefix = base.rstrip("/") + "/"
        for found in fs.find(base):
            name = found[found.find(prefix.lstrip("/")) + len(prefix.lstrip("/")):]
            if name not in keep:
                fs.rm(found)
    return len(names)


@dataclass(eq=False)
class DataTransferStep(Step):
    """Copies ``source`` (a file or folder dataset) to ``destination`` on another datastore
    (Azure's ``DataTransferStep``); reused while the source is unchanged and the destination
    still holds the copy. ``allow_reuse=False`` copies on every run.

    ``destination`` is ``TransferDestination(datastore, path, name)``, a ``(datastore, path)``
    tuple or a ``DataReference``; the copy becomes the dataset ``step.output`` (named after the
    destination), which later steps read like any output. ``source_reference_type`` /
    ``destination_reference_type`` ("file" / "directory"): what the source must be, and whether
    a file is copied as the destination path itself ("file") or into it ("directory", the
    default for a folder). The copy runs in the step's op on ``compute_target`` (a CPU cluster).

    Example::

        DataTransferStep(
            name="to_blob",
            source=FileDataset.from_files("images", "raw/images"),
            destination=TransferDestination("blob", "landing/images"),
        )
    """

    kind: ClassVar[str] = "transfer"
    runs_code: ClassVar[bool] = False
    execution_type: ClassVar[type] = TransferExecution
    compute_target: str = "cpucluster"
    source: Any = None
    destination: Any = None
    source_reference_type: ReferenceType | None = None
    destination_reference_type: ReferenceType | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DataTransferStep needs a name= (Azure's is required too).")
        if self.source is None or self.destination is None:
            raise ValueError(
                f"DataTransferStep '{self.name}': give source= (the data to copy) and destination= "
                "(where to copy it)."
            )
        if self.script or self.arguments or self.hash_paths:
            raise ValueError(
                f"DataTransferStep '{self.name}' runs no script; it takes no script=, arguments= "
                "or hash_paths=."
            )
        for label in ("source_reference_type", "destination_reference_type"):
            if getattr(self, label) not in _TYPES:
                raise ValueError(
                    f"DataTransferStep '{self.name}': {label} is {getattr(self, label)!r}; use "
                    "'file', 'directory' or None."
                )
        self.source = as_source(self.source)
        self.destination = as_destination(self.destination)
        if not self.destination.name:
            self.destination = replace(self.destination, name=f"{self.name}_output")
        # A copy of the step (dataclasses.replace) passes its output back in: keep that object.
        kept = [o for o in self.outputs if o.name == self.destination.name]
        # The copy reads as its source does (a table stays a table).
        source = self.source.dataset
        self.outputs = kept or [
            OutputDataset(
                self.destination.name,
                format=getattr(source, "format", "files"),
                separator=getattr(source, "separator", ","),
                datastore=self.destination.datastore,
            )
        ]
        self.inputs = [self.source]
        if self.description is None:
            self.description = (
                f"Copies '{self.source.dataset.name}' to '{self.destination.path}' on datastore "
                f"'{self.destination.datastore}'"
            )
        super().__post_init__()

    @property
    def source_input(self) -> DatasetInput:
        """The source, as this step's input."""
        return self.inputs[0]

    @property
    def output(self) -> OutputDataset:
        """The copy at the destination, as a dataset later steps read (``.as_input()``...)."""
        return self.outputs[0]

    def get_output(self) -> OutputDataset:
        """Azure's name for ``output``."""
        return self.output

    def destination_path(self, source_is_file: bool, file_name: str) -> str:
        """Where the copy goes: a folder copies to the destination path; a file to the path
        itself ("file") or into it under its own name ("directory", the default)."""
        dest = self.destination.path
        if not source_is_file:
            if self.source_reference_type == "file" or self.destination_reference_type == "file":
                raise StepFailedError(
                    f"Step '{self.name}': the source is a folder but a file was declared "
                    "(source_reference_type / destination_reference_type='file'); nothing was copied."
                )
            return dest
        if self.source_reference_type == "directory":
            raise StepFailedError(
                f"Step '{self.name}': the source is a file but source_reference_type='directory'; "
                "nothing was copied."
            )
        return dest if self.destination_reference_type == "file" else f"{dest}/{file_name}"

    def own_problems(self, where: str, resources: Any) -> list[str]:
        dest, out = self.destination, []
        if not dest.path:
            out.append(f"{where}: the destination path is empty; copy to a folder, not the datastore's root")
        elif layout.is_protected(dest.path):
            out.append(
                f"{where}: destination '{dest.path}' is inside aml-assets' own records; copy elsewhere"
            )
        src = self.source.dataset
        src_store, src_path = getattr(src, "datastore", None), str(getattr(src, "path", "") or "").strip("/")
        if src_store == dest.datastore and src_path and dest.path and (
            f"{dest.path}/".startswith(f"{src_path}/") or f"{src_path}/".startswith(f"{dest.path}/")
        ):
            out.append(
                f"{where}: source '{src_path}' and destination '{dest.path}' overlap on datastore "
                f"'{dest.datastore}'; copy to another path"
            )
        if resources is not None and not isinstance(resources.get(dest.datastore), Datastore):
            configured = sorted(k for k, v in resources.items() if isinstance(v, Datastore))
            out.append(
                f"{where} copies to datastore '{dest.datastore}', which is not configured "
                f"(configured: {', '.join(configured) or 'none'}); add it to the resources or fix the name"
            )
        return out
