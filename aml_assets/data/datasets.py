"""Datasets: declarations (source and output datasets, input modes) and the runtime reference.

A *declaration* (``TabularDataset``, ``FileDataset``, ``OutputDataset``) is what a pipeline author
writes; it becomes a Dagster asset. A ``DatasetRef`` is what flows between steps at run time: where
the (immutable) data is, its format, and its content digest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

# tabular_stats lived here; it is re-exported for the code that imports it from here.
from aml_assets.data.stats import tabular_files, tabular_stats  # noqa: F401
from aml_assets.errors import DatasetError

if TYPE_CHECKING:
    from aml_assets.data.checks import DatasetCheck

TabularFormat = Literal["csv", "parquet"]
OutputFormat = Literal["csv", "parquet", "files"]


class InputMode(str, enum.Enum):
    """How a step receives a dataset (Azure ML's ``as_download`` / ``as_mount`` / direct)."""

    DOWNLOAD = "download"  #: copied into a private local folder the script may not change anything in
    MOUNT = "mount"  #: read in place when the store is local, staged from a remote store
    DIRECT = "direct"  #: the URI itself (local path for a local store), e.g. for Spark readers
    TABULAR = "tabular"  #: the script loads it through ``Run.input_datasets[name]``


@dataclass(frozen=True, eq=False)
class DatasetInput:
    """A dataset as one named input of a step; used as a placeholder in step arguments."""

    dataset: DatasetDef
    name: str
    mode: InputMode

    def __repr__(self) -> str:
        return f"<input {self.name}: {self.dataset.name} as {self.mode.value}>"

    def as_mount(self) -> DatasetInput:
        """The same input, read in place (v1's ``ds.as_named_input(name).as_mount()``)."""
        return DatasetInput(self.dataset, self.name, InputMode.MOUNT)

    def as_download(self) -> DatasetInput:
        """The same input, as a private local copy (v1's ``....as_download()``)."""
        return DatasetInput(self.dataset, self.name, InputMode.DOWNLOAD)

    def as_hdfs(self) -> DatasetInput:
        """The same input as a path Spark reads itself (v1's ``....as_hdfs()`` for a Synapse
        step): delivered direct."""
        return DatasetInput(self.dataset, self.name, InputMode.DIRECT)


@dataclass(eq=False)
class DatasetDef:
    """Common part of every dataset declaration: the asset's name and its checks."""

    name: str
    description: str | None = None
    checks: list[DatasetCheck] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def as_input(self, name: str | None = None, mode: InputMode | str = InputMode.DOWNLOAD) -> DatasetInput:
        """Use this dataset as a step input delivered in ``mode`` (default: download)."""
        return DatasetInput(self, name or self.name, InputMode(mode))

    def definition(self) -> dict[str, Any]:
        """Everything in this declaration that shapes what a reading step receives.

        Part of the fingerprint of every step that reads the dataset: change how it is read
        (a separator, an encoding, a column type, the path) and those steps rerun, even when the
        bytes on the datastore did not change.
        """
        return {"kind": type(self).__name__}

    def as_download(self, name: str | None = None) -> DatasetInput:
        """Deliver as a private local copy."""
        return self.as_input(name, InputMode.DOWNLOAD)

    def as_mount(self, name: str | None = None) -> DatasetInput:
        """Deliver as a local path read in place (staged when the store is remote)."""
        return self.as_input(name, InputMode.MOUNT)

    def as_direct(self, name: str | None = None) -> DatasetInput:
        """Deliver as the URI itself."""
        return self.as_input(name, InputMode.DIRECT)

    def as_named_input(self, name: str) -> DatasetInput:
        """Deliver as a tabular dataset the script loads via ``Run.input_datasets[name]``."""
        return self.as_input(name, InputMode.TABULAR)


@dataclass(eq=False)
class SourceDataset(DatasetDef):
    """Data that already lives on a datastore (or is seeded into it from a local file)."""

    path: str = ""
    datastore: str = "workspace"
    format: OutputFormat = "files"
    separator: str = ","
    #: Whether the first row of a delimited file names the columns.
    header: bool = True
    #: Text encoding of delimited files.
    encoding: str = "utf-8"
    #: Column name -> type ("int64", "double", "string", "bool", "timestamp[s]", ...) to read as.
    column_types: dict[str, str] = field(default_factory=dict)
    #: Further reader options, passed to Spark's reader as ``.option(k, v)`` (e.g. quote, escape,
    #: multiLine, recursiveFileLookup, basePath for partitioned folders).
    options: dict[str, str] = field(default_factory=dict)
    seed: Path | None = None

    def __post_init__(self) -> None:
        # Resolved where the dataset is declared, never against a later working directory.
        if self.seed is not None:
            self.seed = Path(self.seed).expanduser().resolve()

    @classmethod
    def _declare(cls, name: str, path: str, fmt: OutputFormat, seed: Path | str | None, **kw: Any):
        return cls(name=name, path=path, format=fmt, seed=Path(seed) if seed else None, **kw)

    def reader(self) -> dict[str, Any]:
        """How the data is read (what ``DatasetRef.reader`` carries to steps and checks)."""
        if self.format != "csv":
            return {"options": dict(self.options)} if self.options else {}
        return {
            "header": self.header,
            "encoding": self.encoding,
            "column_types": dict(self.column_types),
            "options": dict(self.options),
        }

    def definition(self) -> dict[str, Any]:
        return {
            **super().definition(),
            "datastore": self.datastore,
            "path": self.path,
            "format": self.format,
            "separator": self.separator if self.format == "csv" else None,
            **self.reader(),
        }


@dataclass(eq=False)
class TabularDataset(SourceDataset):
    """Delimited or Parquet files on a datastore, readable as pandas or Spark DataFrame."""

    @classmethod
    def from_delimited_files(
        cls,
        name: str,
        path: str,
        *,
        datastore: str = "workspace",
        separator: str = ",",
        header: bool = True,
        encoding: str = "utf-8",
        column_types: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
        seed: Path | str | None = None,
        description: str | None = None,
        checks: list[DatasetCheck] | None = None,
    ) -> TabularDataset:
        """Declare CSV (or other delimited) files; ``seed`` uploads a local copy if it is absent.

        ``header``, ``encoding``, ``column_types`` and ``options`` say how to read them; they are
        part of the fingerprint of every step that reads the dataset.
        """
        return cls._declare(
            name, path, "csv", seed, datastore=datastore, separator=separator, header=header,
            encoding=encoding, column_types=dict(column_types or {}), options=dict(options or {}),
            description=description, checks=list(checks or []),
        )

    @classmethod
    def from_parquet_files(
        cls,
        name: str,
        path: str,
        *,
        datastore: str = "workspace",
        options: dict[str, str] | None = None,
        seed: Path | str | None = None,
        description: str | None = None,
        checks: list[DatasetCheck] | None = None,
    ) -> TabularDataset:
        """Declare Parquet files (a file or a folder of part files)."""
        return cls._declare(
            name, path, "parquet", seed, datastore=datastore, options=dict(options or {}),
            description=description, checks=list(checks or []),
        )


@dataclass(eq=False)
class FileDataset(SourceDataset):
    """Any files on a datastore, delivered to scripts as files."""

    @classmethod
    def from_files(
        cls,
        name: str,
        path: str,
        *,
        datastore: str = "workspace",
        seed: Path | str | None = None,
        description: str | None = None,
    ) -> FileDataset:
        """Declare a file or folder of files."""
        return cls._declare(name, path, "files", seed, datastore=datastore, description=description)


@dataclass(eq=False)
class OutputDataset(DatasetDef):
    """A step's output: a folder the script writes, published atomically and content-addressed.

    ``register()`` makes it a registered dataset: named, with immutable versions 1, 2, 3...
    """

    format: OutputFormat = "files"
    datastore: str = "workspace"
    registered: bool = False
    separator: str = ","

    def register(
        self,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        checks: list[DatasetCheck] | None = None,
    ) -> OutputDataset:
        """Register this output as a versioned dataset when its step completes."""
        self.registered = True
        if description:
            self.description = description
        if tags:
            self.tags.update(tags)
        if checks:
            self.checks.extend(checks)
        return self

    def as_input(self, name: str | None = None, mode: InputMode | str = InputMode.DOWNLOAD) -> DatasetInput:
        """Use this output as another step's input (the edge the DAG follows)."""
        return DatasetInput(self, name or self.name, InputMode(mode))

    def definition(self) -> dict[str, Any]:
        return {
            **super().definition(),
            "format": self.format,
            "separator": self.separator if self.format == "csv" else None,
        }


class DatasetRef(BaseModel):
    """Run-time reference to immutable dataset content on a datastore (what steps pass on)."""

    name: str
    datastore: str
    path: str
    uri: str
    format: OutputFormat
    content_hash: str
    separator: str = ","
    file_count: int = 0
    byte_count: int = 0
    version: int | None = None
    producer: dict[str, Any] | None = None
    input_versions: dict[str, Any] = {}
    #: How to read the data (header, encoding, column_types, options), from its declaration.
    reader: dict[str, Any] = {}
    #: Integrity record of a published output: [{file, size, raw, stored}], checked before reuse.
    files: list[dict[str, Any]] = []

    @property
    def is_tabular(self) -> bool:
        """Whether the content is a table (CSV or Parquet)."""
        return self.format in ("csv", "parquet")


def _csv_options(separator: str, reader: dict[str, Any] | None):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    reader = reader or {}
    column_types = {k: pa.type_for_alias(v) for k, v in (reader.get("column_types") or {}).items()}
    return (
        pacsv.ReadOptions(
            encoding=reader.get("encoding", "utf-8"),
            autogenerate_column_names=not reader.get("header", True),
        ),
        # Quoted values may hold newlines: without this, pyarrow's parallel chunker splits a
        # record across blocks and a file over ~1 MB fails ("CSV parser got out of sync").
        pacsv.ParseOptions(delimiter=separator, newlines_in_values=True),
        pacsv.ConvertOptions(column_types=column_types),
    )


def read_arrow_table(
    local_path: Path, fmt: str, separator: str = ",", dataset: str = "?", reader: dict[str, Any] | None = None
):
    """Read a local tabular dataset into a pyarrow Table, with errors naming dataset and file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    tables = []
    for f in tabular_files(Path(local_path), fmt):
        try:
            if fmt == "parquet":
                tables.append(pq.read_table(f))
            else:
                if f.stat().st_size == 0:
                    raise DatasetError(
                        f"Dataset '{dataset}': file '{f}' is empty. A delimited file needs at least "
                        "a header row; check the upload."
                    )
                read_opts, parse_opts, convert_opts = _csv_options(separator, reader)
                table = pacsv.read_csv(
                    f, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
                )
                # Arrow falls back to binary for text that is not valid UTF-8: say so plainly.
                binary = [fld.name for fld in table.schema if pa.types.is_binary(fld.type)]
                if binary:
                    raise DatasetError(
                        f"Dataset '{dataset}': file '{f}' has invalid UTF8 data in column(s) "
                        f"{', '.join(binary)}. Re-save the file as UTF-8 and run again."
                    )
                tables.append(table)
        except DatasetError:
            raise
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
            raise DatasetError(
                f"Dataset '{dataset}': cannot read {fmt} file '{f}': {exc}. Fix the file (every "
                "row needs the same number of fields; text must be UTF-8) and run again."
            ) from exc
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def read_pandas(
    local_path: Path, fmt: str, separator: str = ",", dataset: str = "?", reader: dict[str, Any] | None = None
):
    """Read a local tabular dataset as a pandas DataFrame."""
    return read_arrow_table(local_path, fmt, separator, dataset, reader).to_pandas()
