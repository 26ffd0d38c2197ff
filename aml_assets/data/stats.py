"""Statistics of tabular files (row count, column types, a preview), read in bounded memory.

A CSV file is never loaded whole: pyarrow's streaming reader hands it over one block (1 MiB) at a
time. Column types and the preview come from the file's head, the first ``HEAD_BLOCKS`` blocks
(16 MiB), typed exactly as ``pyarrow.csv.read_csv`` types a file: the same inference, loosened
the same way when a later block needs a wider type. A file no longer than the head is therefore
described exactly as reading it whole would describe it; a longer file keeps the types of its
head. The row count of a longer file comes from a second pass that parses every row (so quoted
newlines and ragged rows are seen) but converts no value. Parquet answers row count and schema
from its footers.

Checks use the same reading (``scan_table``): the schema of the head, the row count, and only
the columns they look at, batch by batch, with their exact types over the whole file.

Nothing here imports pandas: a preview of common column types is rendered the way
``DataFrame.to_markdown(index=False)`` renders it, without building a DataFrame.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aml_assets.errors import DatasetError

#: Bytes per block of the CSV reader: pyarrow's own default, so a file of one block is typed
#: from one block, as ``read_csv`` types it.
BLOCK_SIZE = 1 << 20
#: Blocks of each CSV file whose values decide the column types (and whose rows make the preview).
HEAD_BLOCKS = 16
#: Rows in the preview table.
PREVIEW_ROWS = 5
#: Rows per batch when a check reads columns of a Parquet file.
PARQUET_BATCH_ROWS = 64 * 1024


def tabular_files(root: Path, fmt: str) -> list[Path]:
    """Data files of a tabular dataset folder, without writer bookkeeping, in a stable order."""
    if root.is_file():
        return [root]
    suffixes = {"parquet": (".parquet",), "csv": (".csv", ".tsv", ".txt", "")}[fmt]
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not p.name.startswith(("_", "."))
        and (p.suffix in suffixes or (fmt == "csv" and p.name.startswith("part-")))
    ]
    if not files:
        raise DatasetError(
            f"No {fmt} files under '{root}'. A tabular dataset needs at least one data file; "
            "check that the step wrote its output in the declared format."
        )
    return files


@dataclass(frozen=True)
class TableSummary:
    """What a whole table is, without its data: schema and row count."""

    schema: Any  #: pyarrow.Schema
    num_rows: int

    @property
    def column_names(self) -> list[str]:
        """Column names, in order."""
        return list(self.schema.names)

    @property
    def columns(self) -> list[list[str]]:
        """[name, Arrow type name] of every column, as stats and schema-drift records keep them."""
        return [[f.name, str(f.type)] for f in self.schema]


def tabular_stats(
    local_path: Path,
    fmt: str,
    separator: str = ",",
    dataset: str = "?",
    reader: dict[str, Any] | None = None,
    *,
    block_size: int = BLOCK_SIZE,
) -> dict[str, Any]:
    """Row count, column types and a 5-row preview of a local tabular dataset, in bounded memory."""
    files = tabular_files(Path(local_path), fmt)
    if fmt == "parquet":
        summary, preview = _parquet_summary(files, dataset, preview=True)
    else:
        csv_files = [_CsvFile(f, separator, reader or {}, dataset, block_size) for f in files]
        heads = [c.head() for c in csv_files]
        schema = _unified([h.schema for h in heads], dataset)
        summary = TableSummary(schema, _scan_csv(csv_files, heads, schema, [], None))
        preview = _first_rows([h.preview for h in heads], schema)
    return {
        "row_count": summary.num_rows,
        "columns": summary.columns,
        "preview": preview_markdown(preview),
    }


def scan_table(
    local_path: Path,
    fmt: str,
    separator: str = ",",
    dataset: str = "?",
    reader: dict[str, Any] | None = None,
    *,
    columns: Sequence[str] = (),
    consumer: Callable[[], Callable[[Any], None]] | None = None,
    block_size: int = BLOCK_SIZE,
) -> TableSummary:
    """The table's schema and row count; every batch of ``columns`` goes to a consumer.

    ``consumer()`` makes a fresh batch callback for one pass over the data. It is called again
    when a pass has to start over (a column of a CSV file needs a wider type than its head's),
    so whatever a callback accumulates is never counted twice. Batches hold the requested
    columns the table has; a file without one of them gives nulls in it, as concatenating the
    files would. The schema is the one ``tabular_stats`` reports.
    """
    files = tabular_files(Path(local_path), fmt)
    if fmt == "parquet":
        summary, _ = _parquet_summary(files, dataset, preview=False)
        wanted = [c for c in dict.fromkeys(columns) if c in summary.column_names]
        if wanted and consumer is not None:
            feed = consumer()
            for f in files:
                for batch in _parquet_batches(f, wanted, summary.schema, dataset):
                    feed(batch)
        return summary
    csv_files = [_CsvFile(f, separator, reader or {}, dataset, block_size) for f in files]
    heads = [c.head() for c in csv_files]
    schema = _unified([h.schema for h in heads], dataset)
    wanted = [c for c in dict.fromkeys(columns) if c in schema.names] if consumer is not None else []
    return TableSummary(schema, _scan_csv(csv_files, heads, schema, wanted, consumer))


def _scan_csv(
    csv_files: list[_CsvFile], heads: list[_CsvHead], schema: Any, wanted: list[str], consumer: Any
) -> int:
    """Rows of all files; with ``wanted`` columns, a pass feeding them to a fresh ``consumer()``."""
    widened: list[dict[str, Any]] = [{} for _ in heads]
    while True:
        feed = _padding(consumer(), schema, wanted) if wanted else None
        try:
            return sum(
                _scan_csv_file(*file, wanted, feed)
                for file in zip(csv_files, heads, widened, strict=True)
            )
        except _Widen as widen:  # a file needs a wider type in a column: start the pass over
            widened[csv_files.index(widen.csv_file)].update(widen.types)


def _scan_csv_file(
    csv_file: _CsvFile, head: _CsvHead, widened: dict[str, Any], wanted: list[str], feed: Any
) -> int:
    present = [c for c in wanted if c in head.names]
    if present:
        return csv_file.feed(present, head, widened, feed)
    rows = head.rows if head.complete else csv_file.count_rows()
    if feed is not None:  # the file has none of the columns: all its rows are null in them
        for start in range(0, rows, _NULL_BATCH_ROWS):
            feed(_no_columns(min(_NULL_BATCH_ROWS, rows - start)))
    return rows


_NULL_BATCH_ROWS = 64 * 1024


def _padding(feed: Callable[[Any], None], schema: Any, wanted: list[str]) -> Callable[[Any], None]:
    return lambda batch: feed(_padded(batch, schema, wanted))


def _no_columns(rows: int):
    """A batch of ``rows`` rows and no columns."""
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.nulls(rows)], names=["_"]).select([])


def _padded(batch: Any, schema: Any, wanted: list[str]):
    """``batch`` with the ``wanted`` columns it lacks added as nulls of the table's types."""
    import pyarrow as pa

    missing = [c for c in wanted if c not in batch.schema.names]
    if not missing:
        return batch
    arrays = list(batch.columns) + [pa.nulls(batch.num_rows, schema.field(c).type) for c in missing]
    return pa.RecordBatch.from_arrays(arrays, names=[*batch.schema.names, *missing])


# ---------------------------------------------------------------------------------------------
# CSV


def _inference_order() -> list[Any]:
    """pyarrow's CSV type inference, narrowest first (``InferStatus::LoosenType`` in Arrow).

    A column whose values do not all convert to one type is read as the next one that takes
    them all; ``read_csv`` does this over the whole file, the streaming reader does not.
    """
    import pyarrow as pa

    return [
        pa.null(), pa.int64(), pa.bool_(), pa.date32(), pa.time32("s"), pa.timestamp("s"),
        pa.timestamp("ns"), pa.timestamp("s", tz="UTC"), pa.timestamp("ns", tz="UTC"),
        pa.float64(), pa.string(), pa.binary(),
    ]


#: The column ``count_rows`` asks for: no file has it (and one that did would still count right).
_NO_SUCH_COLUMN = "\x00aml-assets: no such column"
_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to ([^:]+): ")


class _Widen(Exception):
    """A block of ``csv_file`` needs wider types for some columns: read it again with ``types``."""

    def __init__(self, csv_file: _CsvFile, types: dict[str, Any]):
        super().__init__(f"{csv_file.path}: " + ", ".join(f"{k}: {v}" for k, v in types.items()))
        self.csv_file, self.types = csv_file, types


@dataclass
class _CsvHead:
    """What the head of one CSV file says: column names, types, preview, rows read."""

    names: list[str]
    schema: Any
    preview: Any
    rows: int
    complete: bool  #: the file ended within the head, so ``rows`` is its row count


@dataclass(frozen=True)
class _CsvFile:
    """One delimited file and how it is read (separator, header, encoding, declared types)."""

    path: Path
    separator: str
    reader: dict[str, Any]
    dataset: str
    block_size: int = BLOCK_SIZE

    def _declared(self) -> dict[str, Any]:
        import pyarrow as pa

        return {k: pa.type_for_alias(v) for k, v in (self.reader.get("column_types") or {}).items()}

    def _open(self, types: dict[str, Any], columns: Sequence[str] = (), missing: bool = False):
        import pyarrow.csv as pacsv

        read = pacsv.ReadOptions(
            encoding=self.reader.get("encoding", "utf-8"),
            autogenerate_column_names=not self.reader.get("header", True),
            block_size=self.block_size,
        )
        # A block boundary must never fall inside a quoted value: that would split its row.
        parse = pacsv.ParseOptions(delimiter=self.separator, newlines_in_values=True)
        convert = pacsv.ConvertOptions(
            column_types={**self._declared(), **types},
            include_columns=list(columns),
            include_missing_columns=missing,
        )
        return pacsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        import pyarrow as pa

        try:
            yield
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
            raise DatasetError(
                f"Dataset '{self.dataset}': cannot read csv file '{self.path}': {exc}. Fix the file "
                "(every row needs the same number of fields; text must be UTF-8) and run again."
            ) from exc

    def _wider(self, exc: Exception, names: list[str], types: dict[str, Any]) -> dict[str, Any] | None:
        """``types`` with the column that failed to convert widened, or None if it cannot be."""
        found = _CONVERSION_ERROR.search(str(exc))
        if found is None or int(found[1]) >= len(names):
            return None
        name, failed = names[int(found[1])], found[2]
        if name in self._declared():  # the user's own type: a value that does not fit is an error
            return None
        order = [str(t) for t in _inference_order()]
        if failed not in order[:-1]:
            return None
        return {**types, name: _inference_order()[order.index(failed) + 1]}

    def head(self) -> _CsvHead:
        """Types, preview and (for a short file) row count from the first ``HEAD_BLOCKS`` blocks."""
        import pyarrow as pa

        if self.path.stat().st_size == 0:
            raise DatasetError(
                f"Dataset '{self.dataset}': file '{self.path}' is empty. A delimited file needs at "
                "least a header row; check the upload."
            )
        types: dict[str, Any] = {}
        names: list[str] = []
        with self._errors():
            while True:
                try:
                    stream = self._open(types)
                    names = names or list(stream.schema.names)
                    head = self._read_head(stream, names)
                    break
                except pa.ArrowInvalid as exc:
                    wider = self._wider(exc, names, types)
                    if wider is None:
                        raise
                    types = wider
        binary = [f.name for f in head.schema if pa.types.is_binary(f.type)]
        if binary:  # Arrow falls back to binary for text that is not valid UTF-8: say so plainly.
            raise DatasetError(
                f"Dataset '{self.dataset}': file '{self.path}' has invalid UTF8 data in column(s) "
                f"{', '.join(binary)}. Re-save the file as UTF-8 and run again."
            )
        return head

    def _read_head(self, stream: Any, names: list[str]) -> _CsvHead:
        import pyarrow as pa

        rows, complete, preview = 0, False, []
        try:
            for _ in range(HEAD_BLOCKS):
                try:
                    batch = stream.read_next_batch()
                except StopIteration:
                    complete = True
                    break
                if rows < PREVIEW_ROWS:
                    preview.append(batch.slice(0, PREVIEW_ROWS - rows))
                rows += batch.num_rows
            schema = stream.schema
        finally:
            stream.close()
        return _CsvHead(names, schema, pa.Table.from_batches(preview, schema=schema), rows, complete)

    def count_rows(self) -> int:
        """Rows of the whole file: every row parsed (quotes, field counts), no value converted."""
        with self._errors():
            # A column the file lacks, asked for with include_missing_columns, comes out as
            # nulls without buffers: the reader parses each row and converts nothing.
            stream = self._open({}, [_NO_SUCH_COLUMN], missing=True)
            try:
                return sum(batch.num_rows for batch in stream)
            finally:
                stream.close()

    def feed(self, columns: list[str], head: _CsvHead, widened: dict[str, Any], feed: Callable) -> int:
        """Send every batch of ``columns`` to ``feed``, typed as the head types them; rows read.

        Raises ``_Widen`` when a later block needs a wider type for one of them.
        """
        import pyarrow as pa

        types = {c: widened.get(c, head.schema.field(c).type) for c in columns}
        rows = 0
        with self._errors():
            try:
                stream = self._open(types, columns)
                try:
                    for batch in stream:
                        feed(batch)
                        rows += batch.num_rows
                finally:
                    stream.close()
            except pa.ArrowInvalid as exc:
                wider = self._wider(exc, head.names, types)
                if wider is None:
                    raise
                raise _Widen(self, wider) from exc
        return rows


def _unified(schemas: list[Any], dataset: str):
    """One schema for several files (a column that is all null in one file takes the others' type)."""
    import pyarrow as pa

    if len(schemas) == 1:
        return schemas[0]
    try:
        return pa.unify_schemas(schemas, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DatasetError(
            f"Dataset '{dataset}': its files disagree on column types ({exc}). Write every part "
            "with the same columns and types, or declare column_types, and run again."
        ) from exc


def _first_rows(previews: list[Any], schema: Any):
    """The first ``PREVIEW_ROWS`` rows over several files' previews, in the unified schema."""
    import pyarrow as pa

    if len(previews) == 1:
        return previews[0]
    empty = pa.Table.from_batches([], schema=schema)  # (schema.empty_table() imports pandas)
    table = pa.concat_tables([empty, *previews], promote_options="default")
    return table.slice(0, PREVIEW_ROWS)


# ---------------------------------------------------------------------------------------------
# Parquet


def _parquet_summary(files: list[Path], dataset: str, preview: bool) -> tuple[TableSummary, Any]:
    """Row count and schema from the footers; with ``preview``, the first rows of the first file."""
    import pyarrow as pa

    rows, schemas = 0, []
    for f in files:
        with _parquet_file(f, dataset) as pf:
            rows += pf.metadata.num_rows
            schemas.append(pf.schema_arrow)
    summary = TableSummary(_unified(schemas, dataset), rows)
    if not preview:
        return summary, None
    with _parquet_file(files[0], dataset) as pf:  # reads one row group at most
        batch = next(pf.iter_batches(batch_size=PREVIEW_ROWS), None)
    if batch is None:
        return summary, pa.Table.from_batches([], schema=schemas[0])
    return summary, pa.Table.from_batches([batch])


def _parquet_file(path: Path, dataset: str):
    """An open ``pyarrow.parquet.ParquetFile`` (its footer read), or a DatasetError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        what = "is empty (0 bytes)" if path.stat().st_size == 0 else f"is not a readable Parquet file ({exc})"
        raise DatasetError(
            f"Dataset '{dataset}': file '{path}' {what}. Re-upload the file or have the "
            "step write valid Parquet, then run again."
        ) from exc


def _parquet_batches(path: Path, columns: list[str], schema: Any, dataset: str) -> Iterator[Any]:
    """Batches of ``columns`` of one Parquet file (nulls for those it lacks)."""
    import pyarrow as pa

    with _parquet_file(path, dataset) as pf:
        present = [c for c in columns if c in pf.schema_arrow.names]
        if not present:
            rows = pf.metadata.num_rows
            for start in range(0, rows, PARQUET_BATCH_ROWS):
                yield _padded(_no_columns(min(PARQUET_BATCH_ROWS, rows - start)), schema, columns)
            return
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=present):
                yield _padded(batch, schema, columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(
                f"Dataset '{dataset}': cannot read parquet file '{path}': {exc}. Re-upload the "
                "file or have the step write valid Parquet, then run again."
            ) from exc


# ---------------------------------------------------------------------------------------------
# Preview


def preview_markdown(table: Any) -> str:
    """A pyarrow Table as ``table.to_pandas().to_markdown(index=False)`` renders it.

    Columns of common types (numbers, booleans, text, dates, whole-microsecond timestamps) are
    turned into the values pandas would hold, without pandas (importing it costs a quarter of a
    second per run); any other table is rendered through pandas itself.
    """
    from tabulate import tabulate

    if not _renders_without_pandas(table):
        return table.to_pandas().to_markdown(index=False)
    values = _interleaved([_pandas_values(col) for col in table.columns], table.num_rows)
    return tabulate(
        [list(row) for row in values],
        headers=[str(name) for name in table.column_names],
        tablefmt="pipe",
        showindex=False,
    )


def _renders_without_pandas(table: Any) -> bool:
    import pyarrow as pa

    def simple(col: Any) -> bool:
        t = col.type
        if pa.types.is_timestamp(t):  # as datetime objects, which print as Timestamps do
            return t.tz is None and t.unit in ("s", "ms", "us") and col.null_count == 0
        return (
            pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
            or pa.types.is_date32(t)
        )

    columns = table.columns
    # A frame of nothing but timestamps is one datetime64 block: pandas prints those otherwise.
    all_timestamps = bool(columns) and all(pa.types.is_timestamp(c.type) for c in columns)
    return bool(columns) and not all_timestamps and all(simple(c) for c in columns)


def _pandas_values(col: Any):
    """A (short) column as the NumPy array ``to_pandas`` would hold: nulls as NaN or None.

    Built from Python values: pyarrow's own ``to_numpy`` imports pandas.
    """
    import numpy as np
    import pyarrow as pa

    t, values = col.type, col.to_pylist()
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
    if numeric and col.null_count:  # pandas holds integers with nulls as floats, nulls as NaN
        dtype = np.float64 if pa.types.is_integer(t) else _NUMPY_FLOATS[str(t)]
        return np.array([np.nan if v is None else v for v in values], dtype=dtype)
    if numeric or (pa.types.is_boolean(t) and not col.null_count):
        return np.array(values, dtype=_NUMPY_FLOATS.get(str(t), str(t)))
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


#: NumPy's names of Arrow's floating-point types (the others are spelled alike).
_NUMPY_FLOATS = {"halffloat": "float16", "float": "float32", "double": "float64"}


def _interleaved(columns: list[Any], rows: int):
    """The 2-D array ``DataFrame.values`` would give for these columns (pandas' common type)."""
    import numpy as np

    dtypes = [c.dtype for c in columns]
    if all(d == dtypes[0] for d in dtypes):
        common = dtypes[0]
    elif any(d.kind == "b" for d in dtypes) and any(d.kind in "iufc" for d in dtypes):
        common = np.dtype(object)  # pandas never mixes booleans into numbers
    else:
        try:
            common = np.result_type(*dtypes)
        except TypeError:
            common = np.dtype(object)
        if common.kind in "mMSU":
            common = np.dtype(object)
    values = np.empty((rows, len(columns)), dtype=common)
    for i, col in enumerate(columns):
        values[:, i] = col
    return values
