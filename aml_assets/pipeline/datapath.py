"""DataPath parameters (Azure ML's ``DataPath`` + ``PipelineParameter(default_value=DataPath)``).

A ``DataPathParameter`` is a pipeline parameter whose value is a path on a datastore. It is bound
as a step input like a source dataset (``.as_mount()``, ``.as_download()``, ``.as_direct()``,
``.as_named_input(name)``, passed directly, or Azure's ``(param, DataPathComputeBinding(mode))``);
each run may point it elsewhere (run config ``resources.pipeline.config.<name>`` =
``{"datastore": ..., "path_on_datastore": ...}``). What a reading step's fingerprint sees is the
content hash of the data, not its location: the same content at another path is reused,
changed content reruns the step::

    raw = DataPathParameter("raw", DataPath("workspace", "incoming/titanic.csv"), format="csv")
    PythonScriptStep("prep", "prep.py", code, arguments=["--raw", raw.as_mount(), "--out", out])
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from aml_assets.data.datasets import DatasetDef, InputMode, OutputFormat, SourceDataset
from aml_assets.data.datastore import check_relative_path
from aml_assets.errors import DatastoreError

_FORMATS = ("csv", "parquet", "files")
#: A datastore resource key at the start of "datastore:path/on/it".
_DATASTORE_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*):(?!//)(.*)$", re.S)
#: Keys of a DataPath given as a mapping, lower-cased: Azure's REST body and our run config.
_KEYS = {
    "datastorename": "datastore",
    "datastore": "datastore",
    "relativepath": "path",
    "path_on_datastore": "path",
}
_HOW = (
    "give 'datastore:path/on/it', a relative path (on the parameter's default datastore), "
    '{"DataStoreName": ..., "RelativePath": ...} or {"datastore": ..., "path_on_datastore": ...}'
)


@dataclass(frozen=True)
class DataPath:
    """A path on a datastore, named by the datastore's resource key (Azure's ``DataPath``)."""

    datastore: str
    path_on_datastore: str

    def __post_init__(self) -> None:
        if not isinstance(self.datastore, str):
            raise TypeError(
                f"DataPath datastore must be the datastore's resource key (a str such as "
                f"'workspace'), not {type(self.datastore).__name__}"
            )

    def to_record(self) -> dict[str, str]:
        """The run-config shape: ``{"datastore": ..., "path_on_datastore": ...}``."""
        return {"datastore": self.datastore, "path_on_datastore": self.path_on_datastore}

    def __str__(self) -> str:
        return f"{self.datastore}:{self.path_on_datastore}"


@dataclass(frozen=True)
class DataPathComputeBinding:
    """How a step receives a DataPath parameter (Azure's ``DataPathComputeBinding``).

    Use it as Azure does, ``(param, DataPathComputeBinding(mode="mount"))`` in ``arguments`` and
    ``inputs``; it means the same as ``param.as_mount()``.
    """

    mode: str = "mount"

    def __post_init__(self) -> None:
        InputMode(self.mode)  # ValueError naming the mode when it is not one


class DataPathParameter(DatasetDef):
    """A pipeline parameter whose value is a path on a datastore; a step input like a dataset.

    ``format`` says what is there: ``"files"`` (a file or a folder, delivered as files; the
    default), ``"csv"`` or ``"parquet"`` (tabular; ``separator``, ``header``, ``encoding``,
    ``column_types`` and ``options`` say how to read it, as for ``TabularDataset``). The
    parameter's name is also the name of its asset and of the run-config field.
    """

    def __init__(
        self,
        name: str,
        default_value: DataPath,
        description: str | None = None,
        format: OutputFormat = "files",
        *,
        separator: str = ",",
        header: bool = True,
        encoding: str = "utf-8",
        column_types: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
        checks: list[Any] | None = None,
    ):
        super().__init__(name=name, description=description, checks=list(checks or []))
        self.default_value = default_value
        self.format = format
        self.separator = separator
        self.header = header
        self.encoding = encoding
        self.column_types = dict(column_types or {})
        self.options = dict(options or {})

    # --- what a run reads ---------------------------------------------------------------------
    def source(self, value: DataPath) -> SourceDataset:
        """The source dataset this parameter reads in a run whose value is ``value``."""
        return SourceDataset(
            name=self.name,
            description=self.description,
            checks=self.checks,
            path=check_relative_path(value.datastore, value.path_on_datastore),
            datastore=value.datastore,
            format=self.format,
            separator=self.separator,
            header=self.header,
            encoding=self.encoding,
            column_types=dict(self.column_types),
            options=dict(self.options),
        )

    def definition(self) -> dict[str, Any]:
        """How the data is read, never where it is: the same content at another path is reused."""
        return {
            **super().definition(),
            "format": self.format,
            "separator": self.separator if self.format == "csv" else None,
            **self._reader(),
        }

    def _reader(self) -> dict[str, Any]:
        """How the data is read (the same options as a ``TabularDataset``'s)."""
        return SourceDataset(
            name=self.name, format=self.format, header=self.header, encoding=self.encoding,
            column_types=self.column_types, options=self.options,
        ).reader()

    # --- values -------------------------------------------------------------------------------
    def parse_value(self, value: Any) -> tuple[DataPath | None, str | None]:
        """(the DataPath a run value names, or None; why it is refused, or None).

        Accepts a ``DataPath``, ``"datastore:path"``, a bare relative path (on the default's
        datastore), Azure's ``{"DataStoreName", "RelativePath"}`` or the run-config mapping, or
        an object with ``datastore`` and ``path_on_datastore`` attributes (the settings model).
        """
        if isinstance(value, DataPath):
            return value, None
        if isinstance(value, str):
            match = _DATASTORE_PREFIX.match(value)
            if match:
                return DataPath(match.group(1), match.group(2)), None
            return DataPath(self.default_value.datastore, value), None
        if isinstance(value, Mapping):
            known = {_KEYS.get(str(k).lower()): v for k, v in value.items()}
            unknown = [str(k) for k in value if str(k).lower() not in _KEYS]
            if unknown:
                return None, f"has unknown key(s) {', '.join(repr(k) for k in unknown)}"
            if known.get("path") is None:
                return None, "has no RelativePath (path_on_datastore)"
            datastore = known.get("datastore", self.default_value.datastore)
            path = known["path"]
            if not isinstance(datastore, str) or not isinstance(path, str):
                return None, "must give the datastore and the path as strings"
            return DataPath(datastore, path), None
        if hasattr(value, "datastore") and hasattr(value, "path_on_datastore"):
            return self.parse_value({"datastore": value.datastore, "path_on_datastore": value.path_on_datastore})
        kind = type(value).__name__
        kind = "null" if value is None else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
        return None, f"is {kind}, not a path on a datastore"

    def checked(self, value: Any, datastores: Collection[str] | None = None) -> tuple[DataPath | None, str]:
        """(the normalized DataPath a run value names, or None; why not, or "").

        ``datastores``: the datastore resource keys a run may name (None: not known here).
        """
        datapath, reason = self.parse_value(value)
        if datapath is not None and (reason := _location_problem(datapath, datastores)) is None:
            path = check_relative_path(datapath.datastore, datapath.path_on_datastore)
            return DataPath(datapath.datastore, path), ""
        shown = str(datapath) if datapath is not None else repr(value)
        return None, f"DataPath parameter '{self.name}' = {shown} {reason}"

    def value_problem(
        self, value: Any, resource_key: str = "pipeline", datastores: Collection[str] | None = None
    ) -> str | None:
        """Why a run's value for this parameter is refused (a full sentence naming the fix), or None."""
        datapath, problem = self.checked(value, datastores)
        if datapath is not None:
            return None
        return (
            f"{problem}. Set resources.{resource_key}.config.{self.name} to "
            '{"datastore": <a datastore resource key>, "path_on_datastore": <a path relative to '
            f"its root>}}, or leave it out to use the default {self.default_value}."
        )

    def assignment_problem(
        self, value: Any, datastores: Collection[str] | None = None
    ) -> tuple[DataPath | None, str | None]:
        """(the DataPath, or None; a request's problem with the value as a sentence, or None)."""
        datapath, problem = self.checked(value, datastores)
        return (datapath, None) if datapath is not None else (None, f"{problem}; {_HOW}.")

    # --- the declaration ----------------------------------------------------------------------
    def declaration_problems(self, datastores: Collection[str] | None = None) -> list[str]:
        """Problems with the declared default and format (empty when valid)."""
        where = f"DataPath parameter '{self.name}'"
        if not isinstance(self.default_value, DataPath):
            return [
                f"{where} has default {self.default_value!r}; give a DataPath(datastore, "
                "path_on_datastore) as default_value"
            ]
        out = []
        if self.format not in _FORMATS:
            out.append(f"{where} has format {self.format!r}; use one of {', '.join(_FORMATS)}")
        if reason := _location_problem(self.default_value, datastores):
            out.append(f"{where}: default {self.default_value} {reason}; change default_value=")
        return out

    def same_declaration(self, other: Any) -> bool:
        """Whether two parameter objects declare the same default, format and reader."""
        return isinstance(other, DataPathParameter) and self.to_record() == other.to_record()

    def to_record(self) -> dict[str, Any]:
        """The declaration as JSON-able data (``parameter_from_record`` rebuilds it)."""
        default = self.default_value
        return {
            "kind": "datapath",
            "name": self.name,
            "default_value": default.to_record() if isinstance(default, DataPath) else default,
            "description": self.description,
            "format": self.format,
            "separator": self.separator,
            "header": self.header,
            "encoding": self.encoding,
            "column_types": dict(self.column_types),
            "options": dict(self.options),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DataPathParameter:
        """The parameter a ``to_record()`` describes."""
        default = record["default_value"]
        return cls(
            record["name"],
            DataPath(default["datastore"], default["path_on_datastore"]),
            record.get("description"),
            record.get("format", "files"),
            separator=record.get("separator", ","),
            header=record.get("header", True),
            encoding=record.get("encoding", "utf-8"),
            column_types=record.get("column_types") or {},
            options=record.get("options") or {},
        )

    def __repr__(self) -> str:
        return f"<DataPath parameter {self.name}={self.default_value} ({self.format})>"


def _location_problem(datapath: DataPath, datastores: Collection[str] | None) -> str | None:
    """Why a DataPath names an unknown datastore or an invalid path, or None."""
    if datastores is not None and datapath.datastore not in datastores:
        known = ", ".join(repr(d) for d in sorted(datastores)) or "none"
        return f"names datastore '{datapath.datastore}', which is not configured (configured: {known})"
    try:
        check_relative_path(datapath.datastore, datapath.path_on_datastore)
    except DatastoreError:
        return (
            "is not a valid path: give a path relative to the datastore root, without '..', a "
            "leading '/' or a scheme (e.g. 'incoming/titanic.csv')"
        )
    return None


def bind_input(item: Any) -> Any:
    """A DataPath parameter given directly (or as Azure's ``(param, binding)``) as a step input.

    Anything else is returned as it is. Bare, it is mounted, as Azure's binding is by default.
    """
    if isinstance(item, DataPathParameter):
        return item.as_mount()
    if (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], DataPathParameter)
        and isinstance(item[1], DataPathComputeBinding)
    ):
        return item[0].as_input(mode=item[1].mode)
    return item

