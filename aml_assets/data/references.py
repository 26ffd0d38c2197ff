"""Azure ML SDK v1's data references: ``DataReference``, ``PipelineData`` and
``OutputFileDatasetConfig``, as our dataset declarations.

- A ``DataReference`` is data already on a datastore (a file or a folder), read by a step in
  ``mount`` (the default), ``download`` or ``direct`` mode. It is a source dataset: the run hashes
  its content first, and a reading step's fingerprint sees that content, not its location (as
  for a ``DataPath``), so the same bytes at another path are reused and changed bytes rerun it.
- A ``PipelineData`` is intermediate data: an output of the step that lists it in ``outputs=``,
  an input (mounted, unless ``as_download()``) of every other step that names it.
- An ``OutputFileDatasetConfig`` is a step output wherever it is given bare; the next step reads
  it through ``as_input()`` (or ``as_mount()``/``as_download()`` of that), as a table after
  ``read_delimited_files()`` / ``read_parquet_files()``. ``destination=(datastore, path)``
  copies each run's result there (``{run-id}`` and ``{output-name}`` are replaced), besides
  the content-addressed copy the next steps read and reuse keeps.

Every output is still published atomically on the pipeline's datastore; ``datastore=`` of a
``PipelineData`` must be that datastore (``Pipeline(default_datastore=...)``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from aml_assets.data import layout
from aml_assets.data.datasets import DatasetInput, InputMode, OutputDataset, SourceDataset
from aml_assets.data.datastore import Datastore, check_relative_path, make_writable
from aml_assets.errors import DatastoreError

__all__ = [
    "DataReference",
    "OutputFileDatasetConfig",
    "PipelineData",
    "bind_references",
    "deliver_destinations",
    "destination_datastores",
    "reference_env",
    "reference_problems",
]

_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
#: The placeholders a destination path may hold (Azure's names).
PLACEHOLDERS = ("run-id", "output-name")
_MODES = ("mount", "download", "direct")


def _name_from_path(path: str) -> str:
    """A dataset name made of a path's last part (``20newsgroups/20news.pkl`` -> ``20news``)."""
    stem = PurePosixPath(path.rstrip("/")).name.split(".")[0] or "data"
    stem = _NOT_NAME.sub("_", stem)
    return f"ref_{stem}" if stem[0].isdigit() else stem


class DataReference(SourceDataset):
    """A file or folder already on a datastore, as a step input (Azure's ``DataReference``).

    ``datastore`` is the datastore's resource key; ``data_reference_name`` names the input (and
    its asset; default: the path's last part); ``mode`` is how steps receive it when it is given
    bare: ``"mount"`` (read in place, staged from a remote store), ``"download"`` (a private
    copy) or ``"direct"`` (the URI). ``as_download()`` / ``as_mount()`` choose per use.
    """

    def __init__(
        self,
        datastore: str = "workspace",
        data_reference_name: str | None = None,
        path_on_datastore: str | None = None,
        mode: str = "mount",
        *,
        description: str | None = None,
    ):
        if mode not in _MODES:
            raise ValueError(
                f"DataReference '{data_reference_name or path_on_datastore}': mode {mode!r} is not "
                f"one of {', '.join(_MODES)}."
            )
        if not isinstance(datastore, str):
            raise TypeError(
                f"DataReference datastore must be the datastore's resource key (a str such as "
                f"'workspace'), not {type(datastore).__name__}"
            )
        path = path_on_datastore or ""
        super().__init__(
            name=data_reference_name or _name_from_path(path or "data"),
            description=description,
            path=path.lstrip("/"),
            datastore=datastore,
            format="files",
        )
        self.mode = InputMode(mode)

    @property
    def data_reference_name(self) -> str:
        """Azure's name for the reference: the input's (and its asset's) name."""
        return self.name

    @property
    def path_on_datastore(self) -> str:
        """The file or folder on the datastore, relative to its root."""
        return self.path

    def definition(self) -> dict[str, Any]:
        """How the data is read, never where it is (as for a ``DataPath``): the same content
        at another path is reused, changed content reruns every reading step."""
        return {"kind": "DataReference", "format": self.format}

    def step_input(self) -> DatasetInput:
        """The reference given bare to a step: an input in its own ``mode``."""
        return DatasetInput(self, self.name, self.mode)

    def as_download(self, path_on_compute: str | None = None, overwrite: bool = False) -> DatasetInput:  # type: ignore[override]
        """A private local copy for the step (Azure's ``as_download``)."""
        _no_path_on_compute(self.name, path_on_compute)
        return DatasetInput(self, self.name, InputMode.DOWNLOAD)

    def as_mount(self) -> DatasetInput:  # type: ignore[override]
        """Read in place (staged from a remote store) (Azure's ``as_mount``)."""
        return DatasetInput(self, self.name, InputMode.MOUNT)

    def __repr__(self) -> str:
        return f"<DataReference {self.name}: {self.datastore}:{self.path_on_datastore} ({self.mode.value})>"


def _no_path_on_compute(name: str, path_on_compute: str | None) -> None:
    if path_on_compute:
        raise ValueError(
            f"'{name}': path_on_compute={path_on_compute!r} has no counterpart: a step receives "
            "its inputs in a private folder. Read the path from the script's argument (or "
            "Run.input_datasets) instead of a fixed path."
        )


class PipelineData(OutputDataset):
    """Intermediate data between steps (Azure's ``PipelineData``): an output of the step that
    lists it in ``outputs=``, an input of every other step that names it (mounted, unless
    ``as_download()`` says otherwise).

    ``datastore``: None or the pipeline's datastore (outputs are published there, where the
    reuse ledger is). ``output_name`` is accepted for v1 code and changes nothing.
    """

    def __init__(
        self,
        name: str,
        datastore: str | None = None,
        output_name: str | None = None,
        output_mode: str = "mount",
        is_directory: bool | None = None,
        *,
        description: str | None = None,
    ):
        if output_mode not in ("mount", "upload"):
            raise ValueError(f"PipelineData '{name}': output_mode {output_mode!r} is not 'mount' or 'upload'.")
        super().__init__(name=name, description=description, format="files", datastore=datastore or "workspace")
        self.output_name = output_name or name

    def as_input(self, input_name: str | None = None, mode: InputMode | str = InputMode.MOUNT) -> DatasetInput:
        """This data as another step's input, mounted by default (Azure's default)."""
        return DatasetInput(self, input_name or self.name, InputMode(mode))

    def as_download(self, input_name: str | None = None, path_on_compute: str | None = None, overwrite: bool | None = None) -> DatasetInput:  # type: ignore[override]
        """A private local copy in the reading step."""
        _no_path_on_compute(self.name, path_on_compute)
        return self.as_input(input_name, InputMode.DOWNLOAD)

    def as_mount(self, input_name: str | None = None) -> DatasetInput:  # type: ignore[override]
        """Read in place in the reading step."""
        return self.as_input(input_name, InputMode.MOUNT)

    def as_dataset(self) -> PipelineData:
        """This data as a file dataset (Azure's ``as_dataset``): ``as_named_input(name)``,
        ``as_mount()`` or ``as_download()`` of it make the reading step's input."""
        return self

    def __repr__(self) -> str:
        return f"<PipelineData {self.name}>"


class OutputFileDatasetConfig(OutputDataset):
    """A step's output (Azure's ``OutputFileDatasetConfig``): given bare to a step it is that
    step's output; ``as_input()`` makes it the next step's input.

    ``destination=(datastore, path)``: after each run of the step (or reuse of its result), its
    files are also copied to ``path`` on ``datastore`` (a resource key), with ``{run-id}``
    replaced by the run's id and ``{output-name}`` by the output's name; a destination already
    holding the same content is left as it is, other content there is replaced.
    """

    def __init__(
        self,
        name: str | None = None,
        destination: tuple[str, str] | None = None,
        *,
        description: str | None = None,
    ):
        super().__init__(name=name or "", description=description, format="files")
        self.destination = _destination(self.name, destination)
        self.input_mode = InputMode.MOUNT

    # --- how the producing step writes it (accepted for v1 code; outputs are always written
    # to a private local folder and published atomically when the step succeeds) ----------------
    def as_upload(self, overwrite: bool = False, source_globs: Any = None) -> OutputFileDatasetConfig:
        """Azure's upload mode; the same as any output here."""
        return self

    def as_mount(self, disable_metadata_cache: bool = False) -> OutputFileDatasetConfig:  # type: ignore[override]
        """Azure's mount mode for the writing step; the same as any output here."""
        return self

    # --- how the next steps read it ----------------------------------------------------------------
    def as_input(self, name: str | None = None, mode: InputMode | str | None = None) -> DatasetInput:
        """This output as the next step's input: mounted files, or after
        ``read_delimited_files()``/``read_parquet_files()`` a table the script loads through
        ``Run.input_datasets[name]`` (or its path in the arguments)."""
        if not self.name:
            raise ValueError(
                "OutputFileDatasetConfig without a name has none until a step writes it: give it "
                "name=, or declare the writing step before calling as_input()."
            )
        chosen = InputMode(mode) if mode is not None else (
            InputMode.TABULAR if self.format in ("csv", "parquet") else self.input_mode
        )
        return DatasetInput(self, name or self.name, chosen)

    def read_delimited_files(
        self,
        include_path: bool = False,
        separator: str = ",",
        header: Any = True,
        partition_format: str | None = None,
        path_glob: str | None = None,
        set_column_types: Mapping[str, Any] | None = None,
    ) -> OutputFileDatasetConfig:
        """The output as a table of delimited files (Azure's ``read_delimited_files``): the
        writing step must write CSV files; readers get a table (``Run.input_datasets``)."""
        self._tabular_only("read_delimited_files", include_path, partition_format, path_glob, set_column_types, header)
        self.format, self.separator = "csv", separator
        return self

    def read_parquet_files(
        self,
        include_path: bool = False,
        partition_format: str | None = None,
        path_glob: str | None = None,
        set_column_types: Mapping[str, Any] | None = None,
    ) -> OutputFileDatasetConfig:
        """The output as a table of Parquet files (Azure's ``read_parquet_files``)."""
        self._tabular_only("read_parquet_files", include_path, partition_format, path_glob, set_column_types, True)
        self.format = "parquet"
        return self

    def _tabular_only(self, what: str, include_path, partition_format, path_glob, column_types, header) -> None:
        unsupported = {
            "include_path": include_path, "partition_format": partition_format,
            "path_glob": path_glob, "set_column_types": column_types,
        }
        given = [k for k, v in unsupported.items() if v]
        if header is not True:
            given.append("header")
        if given:
            raise ValueError(
                f"Output '{self.name or '?'}': {what}({', '.join(given)}=...) has no counterpart for "
                "a step output; write the files the way readers need them (CSV with a header row, "
                "or Parquet), or cast columns in the reading script."
            )

    def register_on_complete(
        self, name: str, description: str | None = None, tags: dict[str, str] | None = None
    ) -> OutputFileDatasetConfig:
        """Register the output as dataset ``name`` (a new version per new content) when its step
        completes (Azure's ``register_on_complete``). The output takes that name."""
        self.name = name
        self.register(description=description, tags=tags)
        return self

    def destination_for(self, run_id: str) -> tuple[str, str] | None:
        """(datastore key, path) the output is copied to in run ``run_id``; None: none."""
        if self.destination is None:
            return None
        store, path = self.destination
        path = path.replace("{run-id}", run_id).replace("{output-name}", self.name)
        return store, check_relative_path(store, path)

    def __repr__(self) -> str:
        where = f" -> {self.destination[0]}:{self.destination[1]}" if self.destination else ""
        return f"<OutputFileDatasetConfig {self.name or '(unnamed)'}{where}>"


def _destination(name: str, destination: Any) -> tuple[str, str] | None:
    if destination is None:
        return None
    if not (isinstance(destination, tuple) and len(destination) == 2 and all(isinstance(x, str) for x in destination)):
        raise TypeError(
            f"Output '{name or '?'}': destination {destination!r} is not (datastore key, 'path/on/it')."
        )
    return destination[0], destination[1].lstrip("/")


# --- what a step does with them ---------------------------------------------------------------------
def bind_references(
    step_name: str, arguments: Sequence[Any], inputs: Sequence[Any], outputs: Sequence[Any]
) -> tuple[list[Any], list[Any]]:
    """A step's arguments and inputs with the v1 references resolved: a bare ``DataReference``
    is an input in its mode; a ``PipelineData`` the step does not list in ``outputs=`` is a
    (mounted) input. An unnamed ``OutputFileDatasetConfig`` the step writes takes a name after
    the step (``<step>_output``, ``<step>_output_2``, ...). Idempotent."""
    own = {id(o) for o in outputs}

    def bind(item: Any) -> Any:
        if isinstance(item, DataReference):
            return item.step_input()
        if isinstance(item, PipelineData) and id(item) not in own:
            return item.as_mount()
        return item

    bound_arguments, bound_inputs = [bind(a) for a in arguments], [bind(i) for i in inputs]
    unnamed = [
        o for o in [*bound_arguments, *outputs]
        if isinstance(o, OutputFileDatasetConfig) and not o.name
    ]
    for n, out in enumerate(dict.fromkeys(unnamed), start=1):
        out.name = f"{step_name}_output" + (f"_{n}" if n > 1 else "")
    return bound_arguments, bound_inputs


def destination_datastores(outputs: Sequence[Any]) -> set[str]:
    """The datastores the ``destination=`` of these outputs name."""
    return {
        o.destination[0] for o in outputs
        if isinstance(o, OutputFileDatasetConfig) and o.destination is not None
    }


def reference_problems(outputs: Sequence[Any], where: str, resources: Mapping[str, Any] | None) -> list[str]:
    """What is wrong with the destinations of a step's outputs (empty: nothing)."""
    out = []
    for o in outputs:
        if not isinstance(o, OutputFileDatasetConfig) or o.destination is None:
            continue
        store, path = o.destination
        unknown = [p for p in _PLACEHOLDER.findall(path) if p not in PLACEHOLDERS]
        if unknown:
            out.append(
                f"{where}: output '{o.name}' has destination '{path}' with unknown placeholder(s) "
                f"{', '.join('{' + p + '}' for p in unknown)}; use {{run-id}} and {{output-name}}"
            )
            continue
        try:
            rel = check_relative_path(store, path.replace("{run-id}", "run").replace("{output-name}", o.name or "out"))
        except DatastoreError as exc:
            out.append(f"{where}: output '{o.name}' destination: {exc}")
            continue
        if layout.is_protected(rel):
            out.append(
                f"{where}: output '{o.name}' has destination '{path}', inside the folders "
                "aml-assets manages (published outputs, the reuse ledger, registered datasets); "
                "choose another path"
            )
        if resources is not None and not isinstance(resources.get(store), Datastore):
            out.append(
                f"{where}: output '{o.name}' is copied to datastore '{store}', which is not "
                f"configured; add a Datastore resource named '{store}' or fix destination="
            )
    return out


def deliver_destinations(
    outputs: Sequence[Any],
    refs: Mapping[str, Any],
    stores: Mapping[str, Datastore],
    source: Datastore,
    run_id: str,
    log: Any,
) -> dict[str, str]:
    """Copy each output that has a ``destination=`` there; output name -> the copy's URI.

    A destination already holding the same content is left alone (a reused step whose
    destination has no ``{run-id}`` copies nothing); other content there is replaced.
    """
    from aml_assets.data.content import manifest_digest

    copied = {}
    for o in outputs:
        if not isinstance(o, OutputFileDatasetConfig) or o.destination is None:
            continue
        key, rel = o.destination_for(run_id)  # type: ignore[misc]
        store, ref = stores[key], refs[o.name]
        if store.exists(rel):
            if manifest_digest(store.manifest(rel)) == ref.content_hash:
                log.info(f"Output '{o.name}': {store.uri(rel)} already holds this content")
                copied[o.name] = store.uri(rel)
                continue
            store.delete(rel)
        with tempfile.TemporaryDirectory(prefix=f"aml-{o.name}-destination-") as tmp:
            local = source.download(ref.path, Path(tmp) / "download")
            staged = Path(tmp) / "staged"
            if local.is_dir():
                local.rename(staged)
            else:  # an output is a folder; kept general for a single published file
                staged.mkdir()
                shutil.move(str(local), staged / local.name)
            store.publish_dir(staged, rel)
        if (local_copy := store.local_path(rel)) is not None:
            make_writable(local_copy)  # the user's folder, not a published output: theirs to delete
        log.info(f"Output '{o.name}' copied to {store.uri(rel)}")
        copied[o.name] = store.uri(rel)
    return copied


def reference_env(
    inputs: Sequence[DatasetInput], outputs: Sequence[Any], handles: Mapping[str, Mapping[str, Any]],
    out_dirs: Mapping[str, Any],
) -> dict[str, str]:
    """``AZUREML_DATAREFERENCE_<name>``: where a step finds each DataReference and PipelineData
    it reads or writes, the environment variable v1 sets for them."""
    env = {
        f"{REFERENCE_ENV_PREFIX}{i.name}": str(handles[i.name]["path"])
        for i in inputs
        if isinstance(i.dataset, (DataReference, PipelineData)) and i.name in handles
    }
    env.update({
        f"{REFERENCE_ENV_PREFIX}{o.name}": str(out_dirs[o.name])
        for o in outputs
        if isinstance(o, PipelineData) and o.name in out_dirs
    })
    return env


#: The prefix of the variables ``reference_env`` sets (v1's).
REFERENCE_ENV_PREFIX = "AZUREML_DATAREFERENCE_"
