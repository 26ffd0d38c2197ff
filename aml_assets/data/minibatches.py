"""Mini-batches: how a ParallelRunStep's inputs are cut, and what each piece holds.

A tabular input is cut per file, never across two files: delimited files at record boundaries
into pieces of about ``mini_batch_size`` bytes (or ``"N rows"``), Parquet files into row ranges of
about that many bytes. A file input is cut into groups of ``mini_batch_size`` files, in the
order of their relative paths. So a changed file changes only the mini-batches holding it.

Each mini-batch carries its *content identity*: a digest of exactly what the entry script's
``run()`` is built from (the header and the records' bytes; the Parquet file's bytes and the row
range; each file's relative path and bytes). ``reuse.minibatch_cache`` makes the cache key of it.
No Dagster here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aml_assets.data.content import (
    StatCache,
    canonical_digest,
    data_manifest,
    hash_bytes,
    hash_file,
)
from aml_assets.data.stats import tabular_files
from aml_assets.errors import DatasetError

__all__ = ["BatchSize", "MiniBatch", "parse_mini_batch_size", "plan_input"]

Kind = Literal["csv", "parquet", "files"]
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|mb|gb|rows?|files?)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
#: Azure's defaults: 1 MB of a tabular input, 10 files of a file input.
DEFAULT_TABULAR_BYTES = 1024**2
DEFAULT_FILE_COUNT = 10


@dataclass(frozen=True)
class BatchSize:
    """How big a mini-batch is: ``bytes`` (tabular, Azure's meaning), ``rows`` (tabular, ours)
    or ``files`` (a file input)."""

    unit: Literal["bytes", "rows", "files"]
    amount: int

    def describe(self) -> str:
        return f"{self.amount} {self.unit}"


def parse_mini_batch_size(value: int | str | None, tabular: bool) -> BatchSize:
    """Azure's ``mini_batch_size``: for a tabular input a size in bytes (``1024``, ``"64KB"``,
    ``"10MB"``, ``"1GB"``; ours too: ``"1000 rows"``), for a file input a number of files."""
    if value is None:
        return BatchSize("bytes", DEFAULT_TABULAR_BYTES) if tabular else BatchSize("files", DEFAULT_FILE_COUNT)
    match = _SIZE.match(str(value))
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(
            f"mini_batch_size {value!r} is not a size: give a positive number of files (file "
            "inputs) or of bytes ('1024', '64KB', '10MB', '1GB') or rows ('1000 rows') for "
            "tabular inputs."
        )
    amount, unit = int(match.group(1)), (match.group(2) or "").lower()
    if not tabular:
        if unit not in ("", "file", "files"):
            raise ValueError(
                f"mini_batch_size {value!r}: a file input is cut into a number of files (e.g. 10)."
            )
        return BatchSize("files", amount)
    if unit.startswith("file"):
        raise ValueError(f"mini_batch_size {value!r}: a tabular input is cut by bytes or rows.")
    if unit.startswith("row"):
        return BatchSize("rows", amount)
    return BatchSize("bytes", amount * _UNITS.get(unit or "b", 1))


@dataclass(frozen=True)
class MiniBatch:
    """One piece of an input, as the runner rebuilds it and as the cache knows it."""

    input: str
    kind: Kind
    #: Rows (tabular) or files in it: what error_threshold counts.
    items: int
    #: Digest of exactly what run() is built from (see the module docstring).
    content: str
    #: How the runner rebuilds it, relative to the input's delivered path.
    spec: dict[str, Any] = field(default_factory=dict)
    label: str = ""


def plan_input(
    name: str, root: Path, fmt: str, size: BatchSize, reader: Mapping[str, Any], cache: StatCache | None
) -> list[MiniBatch]:
    """The mini-batches of one delivered input (a local file or folder), in input order."""
    root = Path(root)
    if fmt == "files":
        return _file_batches(name, root, size.amount, cache)
    encoding = str(reader.get("encoding", "utf-8")).lower().replace("_", "-")
    if fmt == "csv" and encoding.startswith(("utf-16", "utf-32", "utf16", "utf32")):
        raise DatasetError(
            f"Input '{name}': {encoding} files cannot be cut into mini-batches at record "
            "boundaries; convert them to UTF-8 (or read the input whole in a PythonScriptStep)."
        )
    out: list[MiniBatch] = []
    for path in tabular_files(root, fmt):
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        if fmt == "parquet":
            out += _parquet_batches(name, path, rel, size, cache)
        else:
            out += _csv_batches(name, path, rel, size, bool(reader.get("header", True)))
    return out


def _file_batches(name: str, root: Path, count: int, cache: StatCache | None) -> list[MiniBatch]:
    entries = sorted(data_manifest(root, cache), key=lambda e: e.file or e.path)
    out = []
    for start in range(0, len(entries), count):
        group = entries[start : start + count]
        files = [e.file or e.path for e in group]
        out.append(
            MiniBatch(
                input=name,
                kind="files",
                items=len(group),
                # The files' names within the input and their exact bytes: what run() can read.
                content=canonical_digest([[e.file or e.path, e.raw or e.digest] for e in group]),
                spec={"files": files, "single": root.is_file()},
                label=f"files {files[0]}" + (f" .. {files[-1]}" if len(files) > 1 else ""),
            )
        )
    return out


def _record_ends(data: bytes, start: int) -> list[int]:
    """Offsets just past each record from ``start``: a newline outside double quotes ends one
    (RFC 4180 doubles a quote inside a quoted value, so quote parity tells inside from outside)."""
    ends, pos, inside = [], start, False
    while pos < len(data):
        nl = data.find(b"\n", pos)
        stop = len(data) if nl < 0 else nl + 1
        inside ^= data.count(b'"', pos, stop) % 2 == 1
        if not inside or nl < 0:
            ends.append(stop)
            inside = False
        pos = stop
    return ends


def _csv_batches(name: str, path: Path, rel: str, size: BatchSize, header: bool) -> list[MiniBatch]:
    data = path.read_bytes()
    ends = _record_ends(data, 0)
    header_end = ends.pop(0) if header and ends else 0
    head = data[:header_end]
    # Blank records (a trailing newline, an empty last line) hold no row.
    records = [(s, e) for s, e in zip([header_end, *ends[:-1]], ends, strict=True) if data[s:e].strip()]
    out: list[MiniBatch] = []
    i = 0
    while i < len(records):
        first = records[i][0]
        j = i
        if size.unit == "rows":
            j = min(len(records), i + size.amount)
        else:  # the first record boundary at or past ``amount`` bytes
            while j < len(records) and (j == i or records[j - 1][1] - first < size.amount):
                j += 1
        last = records[j - 1][1]
        out.append(
            MiniBatch(
                input=name,
                kind="csv",
                items=j - i,
                # The header and the records' exact bytes: run() gets them parsed, nothing else.
                content=hash_bytes(len(head).to_bytes(8, "big") + head + data[first:last]),
                spec={"file": rel, "offset": first, "length": last - first, "header": header_end},
                label=f"{rel} rows {i + 1}-{j}",
            )
        )
        i = j
    return out


def _parquet_batches(name: str, path: Path, rel: str, size: BatchSize, cache: StatCache | None) -> list[MiniBatch]:
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(path).metadata.num_rows
    if size.unit == "rows":
        per = size.amount
    else:
        per = max(1, int(rows * size.amount / max(1, path.stat().st_size)))
    digest = hash_file(path, cache)
    out = []
    for start in range(0, rows, per):
        stop = min(rows, start + per)
        out.append(
            MiniBatch(
                input=name,
                kind="parquet",
                items=stop - start,
                # The file's exact bytes and the row range read from it.
                content=canonical_digest([digest, start, stop]),
                spec={"file": rel, "start": start, "stop": stop},
                label=f"{rel} rows {start + 1}-{stop}",
            )
        )
    return out
