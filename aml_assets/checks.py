"""Dataset checks, declared with the dataset and run as Dagster asset checks.

A blocking check that fails stops the steps downstream of its dataset and fails the run.
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
    multi_asset_check,
)

from aml_assets.datasets import DatasetRef, read_arrow_table
from aml_assets.datastore import Datastore

#: Type families a user can name instead of exact Arrow types.
_FAMILIES = {
    "int": ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    "float": ("float", "double", "halffloat"),
    "number": ("int8", "int16", "int32", "int64", "float", "double"),
    "string": ("string", "large_string"),
    "bool": ("bool",),
}


def type_matches(actual: str, expected: str) -> bool:
    """Whether an Arrow type name satisfies an expected type or family (int, float, string...)."""
    return actual == expected or actual in _FAMILIES.get(expected, ())


@dataclass
class DatasetCheck(ABC):
    """A check on a tabular dataset. ``blocking`` checks stop downstream steps when they fail."""

    blocking: bool = field(default=True, kw_only=True)

    @property
    @abstractmethod
    def check_name(self) -> str:
        """The check's name in Dagster."""

    @abstractmethod
    def evaluate(self, table: Any, context: CheckContext) -> tuple[bool, str, dict[str, Any]]:
        """(passed, description, metadata) for a pyarrow Table."""

    def describe(self) -> str:
        """A one-line description for the UI."""
        return self.__class__.__doc__.splitlines()[0] if self.__class__.__doc__ else self.check_name


@dataclass
class CheckContext:
    """What a check may look at beside the table: the previous registered version's schema."""

    previous_columns: list[list[str]] | None = None


@dataclass
class ExpectedColumns(DatasetCheck):
    """Required columns exist with the expected types."""

    columns: Mapping[str, str] = field(default_factory=dict)

    @property
    def check_name(self) -> str:
        return "expected_columns"


    def evaluate(self, table, context):
        actual = {f.name: str(f.type) for f in table.schema}
        problems = []
        for name, expected in self.columns.items():
            if name not in actual:
                problems.append(f"missing column '{name}'")
            elif not type_matches(actual[name], expected):
                problems.append(f"column '{name}' is {actual[name]}, expected {expected}")
        text = "; ".join(problems) or f"all {len(self.columns)} expected columns present with their types"
        return not problems, text, {"columns": MetadataValue.json(actual)}


@dataclass
class NotNull(DatasetCheck):
    """The listed columns contain no nulls (NaN counts as null)."""

    columns: Sequence[str] = ()

    @property
    def check_name(self) -> str:
        return "not_null"


    def evaluate(self, table, context):
        import pyarrow.compute as pc

        nulls = {}
        for name in self.columns:
            if name not in table.column_names:
                nulls[name] = "missing"
                continue
            col = table[name]
            count = col.null_count
            if str(col.type) in ("float", "double"):
                count += pc.sum(pc.is_nan(col).cast("int64")).as_py() or 0
            if count:
                nulls[name] = count
        text = (
            "no nulls in " + ", ".join(self.columns)
            if not nulls
            else "nulls found: " + ", ".join(f"{k}={v}" for k, v in nulls.items())
        )
        return not nulls, text, {"null_counts": MetadataValue.json(nulls)}


@dataclass
class UniqueKey(DatasetCheck):
    """The listed columns together identify each row."""

    columns: Sequence[str] = ()

    @property
    def check_name(self) -> str:
        return "unique_key"


    def evaluate(self, table, context):
        df = table.select(list(self.columns)).to_pandas()
        dupes = int(df.duplicated().sum())
        text = f"{dupes} duplicate key(s) on {', '.join(self.columns)}" if dupes else "keys are unique"
        return dupes == 0, text, {"duplicates": MetadataValue.int(dupes)}


@dataclass
class RowCount(DatasetCheck):
    """The row count lies within [min, max]."""

    min: int | None = None
    max: int | None = None

    @property
    def check_name(self) -> str:
        return "row_count"


    def evaluate(self, table, context):
        rows = table.num_rows
        ok = (self.min is None or rows >= self.min) and (self.max is None or rows <= self.max)
        bounds = f"[{self.min if self.min is not None else '-inf'}, {self.max if self.max is not None else 'inf'}]"
        return ok, f"{rows} rows, expected {bounds}", {"row_count": MetadataValue.int(rows)}


@dataclass
class SchemaDrift(DatasetCheck):
    """The schema matches the previous registered version (warns unless blocking)."""

    blocking: bool = field(default=False, kw_only=True)

    @property
    def check_name(self) -> str:
        return "schema_drift"


    def evaluate(self, table, context):
        current = [[f.name, str(f.type)] for f in table.schema]
        if context.previous_columns is None:
            return True, "no previous version to compare with", {}
        previous = {n: t for n, t in context.previous_columns}
        now = dict(current)
        changes = [f"added {n} ({t})" for n, t in now.items() if n not in previous]
        changes += [f"removed {n}" for n in previous if n not in now]
        changes += [f"{n}: {previous[n]} -> {t}" for n, t in now.items() if n in previous and previous[n] != t]
        return not changes, "; ".join(changes) or "schema unchanged", {"changes": MetadataValue.json(changes)}


def _load_table(ref: DatasetRef, store: Datastore):
    local = store.local_path(ref.path)
    if local is not None:
        return read_arrow_table(local, ref.format, ref.separator, ref.name)
    with tempfile.TemporaryDirectory(prefix=f"aml-check-{ref.name}-") as tmp:
        return read_arrow_table(store.download(ref.path, Path(tmp)), ref.format, ref.separator, ref.name)


def build_asset_checks(
    dataset: str, checks: Sequence[DatasetCheck], io_manager_key: str
) -> list[AssetChecksDefinition]:
    """Turn a dataset's declared checks into Dagster asset checks.

    All checks of one dataset run in one Dagster step over one read of the table: each extra step
    costs a run tens of milliseconds of event-log writes, and each extra read a full scan.
    """
    if not checks:
        return []
    names = [c.check_name for c in checks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Dataset '{dataset}' declares the check(s) {', '.join(duplicates)} more than once; "
            "merge them into one (e.g. one NotNull listing every column)."
        )
    specs = [
        AssetCheckSpec(
            name=c.check_name, asset=AssetKey(dataset), description=c.describe(), blocking=c.blocking
        )
        for c in checks
    ]

    @multi_asset_check(
        name=f"{dataset}_checks", specs=specs, required_resource_keys={io_manager_key}
    )
    def _checks(context):
        io = getattr(context.resources, io_manager_key)
        ref = io.load_ref(dataset, context.run.run_id)
        table = _load_table(ref, io.datastore)
        for check in checks:
            previous = (
                _previous_columns(io.datastore, dataset, ref)
                if isinstance(check, SchemaDrift)
                else None
            )
            passed, text, metadata = check.evaluate(table, CheckContext(previous_columns=previous))
            yield AssetCheckResult(
                asset_key=AssetKey(dataset),
                check_name=check.check_name,
                passed=passed,
                severity=AssetCheckSeverity.ERROR if check.blocking else AssetCheckSeverity.WARN,
                description=text,
                metadata=metadata,
            )

    return [_checks]


def _previous_columns(store: Datastore, dataset: str, ref: DatasetRef) -> list[list[str]] | None:
    """Column (name, type) pairs of the registered version before ``ref``'s, if any."""
    from aml_assets.registry import DatasetRegistry

    registry = DatasetRegistry(store)
    older = [v for v in registry.versions(dataset) if ref.version is None or v < ref.version]
    if not older:
        return None
    producer = registry.get(dataset, older[-1]).record["ref"].get("producer") or {}
    return (producer.get("stats") or {}).get("columns")
