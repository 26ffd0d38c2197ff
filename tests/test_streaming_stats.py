"""Statistics and checks read tables as streams: exact on small files, bounded on large ones."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from aml_assets import ExpectedColumns, NotNull, RowCount, SchemaDrift, UniqueKey
from aml_assets.data import stats as stats_module
from aml_assets.data.checks import run_checks
from aml_assets.data.datasets import DatasetRef, read_arrow_table
from aml_assets.data.stats import HEAD_BLOCKS, tabular_stats
from aml_assets.errors import DatasetError

REPO = Path(__file__).resolve().parent.parent


def _whole_file_stats(path: Path, separator: str = ",", reader: dict | None = None) -> dict:
    """The statistics as they were computed before streaming: the file read whole, via pandas."""
    table = read_arrow_table(path, "csv", separator, "d", reader)
    return {
        "row_count": table.num_rows,
        "columns": [[f.name, str(f.type)] for f in table.schema],
        "preview": table.slice(0, 5).to_pandas().to_markdown(index=False),
    }


SMALL_FILES = {
    "numbers": (b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(20)), ",", None),
    "quotes-and-newlines": (
        b'id,text,x\n1,"a, b",1.5\n2,"line1\nline2",\n3,"say ""hi""",2\n4,,3.25\n5,plain,1e10\n6,z,-0.0\n',
        ",",
        None,
    ),
    "nulls-in-every-type": (
        b"a,b,c,d,e,f\n1,x,true,2020-01-01,2020-01-01 10:00:00,\n2,,false,2020-02-01,2021-01-01 00:00:01,\n"
        b",y,,,2022-01-01 00:00:00,\n",
        ",",
        None,
    ),
    "ints-and-floats": (b"a,b\n1,1.5\n2,2.5\n12345678,3\n", ",", None),
    "booleans": (b"a,b\ntrue,false\nfalse,true\n", ",", None),
    "booleans-with-nulls": (b"a,b\ntrue,1\n,2\n", ",", None),
    "numeric-looking-text": (b"a,b\n007,1e3\n0x10,abc\n", ",", None),
    "timestamps-only": (b"a,b\n2020-01-01 10:00:00,2020-01-01 00:00:00\n2020-01-02 10:00:00,2020-01-03 00:00:00\n", ",", None),
    "fractional-timestamps": (b"a,b\n2020-01-01 10:00:00.5,1\n", ",", None),
    "time-zones": (b"a,b\n2020-01-01T10:00:00Z,1\n2020-01-01T10:00:00+02:00,2\n", ",", None),
    "times": (b"a,b\n10:00:00,1\n", ",", None),
    "semicolons": (b"a;b\n1;x,y\n2;z\n", ";", None),
    "tabs": (b"a\tb\n1\tx\n", "\t", None),
    "unicode": ("name,v\ncafé,1\nnaïve,2\n".encode(), ",", None),
    "latin-1": ("name,v\ncafé,1\n".encode("latin-1"), ",", {"encoding": "latin-1"}),
    "no-header": (b"1,x\n2,y\n3,z\n", ",", {"header": False}),
    "column-types": (b"id,value\n1,2\n3,4\n", ",", {"column_types": {"id": "string", "value": "double"}}),
    "header-only": (b"id,value\n", ",", None),
    "many-rows-preview-of-five": (b"a,b\n" + b"".join(b"%d,w%d\n" % (i, i) for i in range(3000)), ",", None),
}


@pytest.mark.parametrize("name", list(SMALL_FILES))
def test_small_csv_stats_are_those_of_reading_the_file_whole(tmp_path, name):
    content, separator, reader = SMALL_FILES[name]
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    assert tabular_stats(path, "csv", separator, "d", reader) == _whole_file_stats(path, separator, reader)


def test_preview_of_quoted_values(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b'id,text,score\n1,"a, b",1.5\n2,"two\nlines",\n3,"say ""hi""",2\n')
    stats = tabular_stats(path, "csv")
    assert stats["row_count"] == 3
    assert stats["columns"] == [["id", "int64"], ["text", "string"], ["score", "double"]]
    assert stats["preview"] == (
        "|   id | text     |   score |\n"
        "|-----:|:---------|--------:|\n"
        "|    1 | a, b     |     1.5 |\n"
        "|    2 | two      |   nan   |\n"
        "|      | lines    |         |\n"
        '|    3 | say "hi" |     2   |'
    )


def test_folder_of_part_files_is_described_as_their_concatenation(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-0.csv").write_bytes(b"id,v\n1,\n2,\n")  # v: all null here
    (folder / "part-1.csv").write_bytes(b"id,v,w\n3,4.5,x\n4,5,y\n5,6,z\n6,7,q\n")
    (folder / "_SUCCESS").write_bytes(b"")
    stats = tabular_stats(folder, "csv")
    assert stats == _whole_file_stats(folder)
    assert stats["columns"] == [["id", "int64"], ["v", "double"], ["w", "string"]]


def test_stats_import_no_pandas(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(SMALL_FILES["nulls-in-every-type"][0])
    code = (
        "import sys; from pathlib import Path; from aml_assets.data.stats import tabular_stats; "
        f"tabular_stats(Path({str(path)!r}), 'csv'); print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# --- types across blocks ---------------------------------------------------------------------

VALUES = ["", "1", "true", "2020-01-01", "12:00:00", "2020-01-01 00:00:00", "2020-01-01 00:00:00.5",
          "2020-01-01T00:00:00Z", "1.5", "x"]


def test_types_widen_across_blocks_as_read_csv_widens_them(tmp_path):
    # Every pair: the first value fills the first blocks, the second comes blocks later. The
    # streaming reader alone would fail (it fixes types on the first block); read_csv widens.
    path = tmp_path / "data.csv"
    wrong = []
    for first, later in itertools.product(VALUES, VALUES):
        rows = [first] * 30 + [later] + [first] * 5
        content = ("c,k\n" + "".join(f"{v},{i}\n" for i, v in enumerate(rows))).encode()
        path.write_bytes(content)
        small = pacsv.ReadOptions(block_size=128)
        expected = str(pacsv.read_csv(io.BytesIO(content), read_options=small).schema.field("c").type)
        stats = tabular_stats(path, "csv", block_size=128)
        if (dict(stats["columns"])["c"], stats["row_count"]) != (expected, len(rows)):
            wrong.append((first, later, expected, stats["columns"], stats["row_count"]))
    assert not wrong


def test_quoted_newlines_never_change_the_row_count(tmp_path):
    rows = 3000
    path = tmp_path / "notes.csv"
    path.write_bytes(
        b"id,note\n" + b"".join(b'%d,"first line\nsecond, line ""%d""\n"\n' % (i, i) for i in range(rows))
    )
    assert path.read_bytes().count(b"\n") == 1 + 3 * rows  # what counting newlines would say
    for block_size in (256, 4096, stats_module.BLOCK_SIZE):  # the file spans 1 to 600 blocks
        stats = tabular_stats(path, "csv", block_size=block_size)
        assert stats["row_count"] == rows
        assert stats["columns"] == [["id", "int64"], ["note", "string"]]


def test_rows_beyond_the_head_are_counted_and_typed_by_the_head(tmp_path):
    path = tmp_path / "long.csv"
    head_rows = 2000  # far more than HEAD_BLOCKS blocks of 64 bytes
    path.write_bytes(b"id,c\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(head_rows)) + b"9,later text\n")
    stats = tabular_stats(path, "csv", block_size=64)
    assert stats["row_count"] == head_rows + 1
    assert stats["columns"] == [["id", "int64"], ["c", "int64"]]  # the head's types
    assert len(path.read_bytes()) > HEAD_BLOCKS * 64


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty. A delimited file needs at least a header row"),
        (b"id,name\n1,caf\xe9\n", "has invalid UTF8 data in column(s) name"),
        (b"id,value\n1,1\n2,4,8\n3,9\n", "Expected 2 columns, got 3"),
        # The ragged row far beyond the head: found by the counting pass, same error.
        (b"id,value\n" + b"1,1\n" * 2000 + b"2,4,8\n", "Expected 2 columns, got 3"),
    ],
    ids=["empty", "bad-encoding", "ragged-row", "ragged-row-beyond-the-head"],
)
def test_malformed_csv_gives_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="Dataset 'bad'") as info:
        tabular_stats(path, "csv", dataset="bad", block_size=64)
    assert expected in str(info.value) and "bad.csv" in str(info.value)


def test_header_only_file_has_no_rows(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"id,value\n")
    stats = tabular_stats(path, "csv")
    assert stats["row_count"] == 0
    assert stats["columns"] == [["id", "null"], ["value", "null"]]


# --- Parquet ---------------------------------------------------------------------------------


def test_parquet_row_count_and_schema_come_from_the_footer(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    table = pa.table({"id": list(range(30_000)), "name": [f"n{i}" for i in range(30_000)]})
    pq.write_table(table, path, row_group_size=10_000)
    expected_preview = pq.read_table(path).slice(0, 5).to_pandas().to_markdown(index=False)
    batch_sizes = []
    original = pq.ParquetFile.iter_batches

    def iter_batches(self, batch_size=65536, **kw):
        batch_sizes.append(batch_size)
        return original(self, batch_size=batch_size, **kw)

    def no_reading(*args, **kwargs):
        raise AssertionError("the data must not be read for statistics")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    for name in ("read", "read_row_group", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, name, no_reading)
    stats = tabular_stats(path, "parquet")
    assert stats == {
        "row_count": 30_000,
        "columns": [["id", "int64"], ["name", "string"]],
        "preview": expected_preview,
    }
    assert batch_sizes == [5]  # only the preview's first rows


# --- checks ----------------------------------------------------------------------------------


def _ref(datastore, path: str, fmt: str = "csv") -> DatasetRef:
    return DatasetRef(name="d", datastore="workspace", path=path, uri=datastore.uri(path), format=fmt,
                      content_hash="test")


def _results(datastore, ref, checks, **kw) -> dict[str, tuple[bool, str]]:
    results, _ = run_checks("d", checks, ref, datastore, **kw)
    return {r.check_name: (r.passed, r.description) for r in results}


def _table_with_flaws(rows: int = 2000) -> bytes:
    lines = ["id,v,s"]
    for i in range(rows):
        v = "" if i == 700 else ("nan" if i == 1500 else f"{i / 2}")
        s = "" if i in (10, 1900) else f"s{i % 50}"
        lines.append(f"{1 if i == 1999 else i},{v},{s}")  # id 1 twice
    return ("\n".join(lines) + "\n").encode()


CHECKS = [
    NotNull(columns=["v", "s", "gone"]),
    UniqueKey(columns=["id"]),
    RowCount(min=1, max=10_000),
    ExpectedColumns(columns={"id": "int", "v": "float", "s": "string"}),
]
EXPECTED = {
    "not_null": (False, "nulls found: v=2, gone=missing"),  # NaN counts; "" in a text column does not
    "unique_key": (False, "1 duplicate key(s) on id"),
    "row_count": (True, "2000 rows, expected [1, 10000]"),
    "expected_columns": (True, "all 3 expected columns present with their types"),
}


@pytest.mark.parametrize("block_size", [256, stats_module.BLOCK_SIZE], ids=["many-blocks", "one-block"])
def test_checks_stream_over_csv_blocks(datastore, block_size):
    datastore.write_bytes("t/data.csv", _table_with_flaws())
    assert _results(datastore, _ref(datastore, "t/data.csv"), CHECKS, block_size=block_size) == EXPECTED


def test_checks_stream_over_parquet_batches(datastore, monkeypatch):
    table = pacsv.read_csv(io.BytesIO(_table_with_flaws()))
    path = datastore.local_path("p/part-0.parquet")
    path.parent.mkdir(parents=True)
    pq.write_table(table, path, row_group_size=300)
    monkeypatch.setattr(stats_module, "PARQUET_BATCH_ROWS", 128)
    assert _results(datastore, _ref(datastore, "p", "parquet"), CHECKS) == EXPECTED


def test_unique_key_over_several_columns_compares_as_pandas_did(datastore):
    # null == null, NaN == null in a float column, -0.0 == 0.0
    datastore.write_bytes("k.csv", b"a,b\n1,0.0\n1,-0.0\n2,\n2,nan\n3,\n3,\n4,1\n")
    found = _results(datastore, _ref(datastore, "k.csv"), [UniqueKey(columns=["a", "b"])], block_size=16)
    assert found == {"unique_key": (False, "3 duplicate key(s) on a, b")}


def test_a_check_column_that_widens_later_is_read_with_its_whole_file_type(datastore):
    # 'c' looks like integers for far more than the head, then holds text: read whole, it is a
    # text column, whose empty values are "" (not null), as read_csv has always read it.
    rows = [f"{i},{i}" for i in range(2000)] + ["2000,text", "2001,"]
    datastore.write_bytes("w.csv", ("id,c\n" + "\n".join(rows) + "\n").encode())
    ref = _ref(datastore, "w.csv")
    whole = read_arrow_table(datastore.local_path("w.csv"), "csv")
    assert str(whole.schema.field("c").type) == "string" and whole["c"].null_count == 0
    found = _results(datastore, ref, [NotNull(columns=["c"]), UniqueKey(columns=["c"])], block_size=64)
    assert found == {"not_null": (True, "no nulls in c"), "unique_key": (True, "keys are unique")}


def test_checks_see_a_part_file_without_a_column_as_nulls_in_it(datastore):
    datastore.write_bytes("parts/part-0.csv", b"id,v\n1,1\n2,2\n")
    datastore.write_bytes("parts/part-1.csv", b"id\n3\n4\n5\n")
    found = _results(datastore, _ref(datastore, "parts"), [NotNull(columns=["v"]), RowCount(min=5)])
    assert found == {"not_null": (False, "nulls found: v=3"), "row_count": (True, "5 rows, expected [5, inf]")}


def test_schema_drift_compares_with_the_schema_stats_record(datastore):
    datastore.write_bytes("d.csv", b"id,v\n1,x\n")
    previous = tabular_stats(datastore.local_path("d.csv"), "csv")["columns"]
    found = _results(datastore, _ref(datastore, "d.csv"), [SchemaDrift()], previous_columns=previous)
    assert found == {"schema_drift": (True, "schema unchanged")}


def test_a_missing_unique_key_column_fails_the_check(datastore):
    datastore.write_bytes("m.csv", b"id\n1\n")
    found = _results(datastore, _ref(datastore, "m.csv"), [UniqueKey(columns=["id", "nope"])])
    assert found == {"unique_key": (False, "key column(s) missing: nope")}


# --- memory ----------------------------------------------------------------------------------

MEASURE = """
import json, sys
from pathlib import Path
from aml_assets.data.stats import tabular_stats, scan_table
path, work = Path(sys.argv[1]), sys.argv[2] == "work"
if work:
    stats = tabular_stats(path, "csv")
    nulls = []
    summary = scan_table(path, "csv", columns=["v"], consumer=lambda: (lambda b: nulls.append(b.column(0).null_count)))
    out = {"rows": stats["row_count"], "scanned": summary.num_rows, "nulls": sum(nulls)}
elif sys.argv[2] == "whole":  # what the statistics did before: the file read whole
    from aml_assets.data.datasets import read_arrow_table
    out = {"rows": read_arrow_table(path, "csv").num_rows}
else:
    import pyarrow.csv  # the same imports, no work: the baseline
    out = {}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child forked from a large pytest
# process starts with the parent's peak (CI once measured a 582 MB "baseline" that hid the work).
# VmHWM belongs to this program's own address space.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
out["maxrss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def _write_big_csv(path: Path, megabytes: int) -> int:
    chunk = "".join(f"{i},{i * 0.5},name {i % 97},{'' if i % 1000 == 0 else 'x'}\n" for i in range(20_000))
    chunk_bytes = chunk.encode()
    copies = megabytes * 1024 * 1024 // len(chunk_bytes) + 1
    with open(path, "wb") as fh:
        fh.write(b"id,v,name,flag\n")
        for _ in range(copies):
            fh.write(chunk_bytes)
    return copies * 20_000


def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    small_rows, rows = _write_big_csv(small, 20), _write_big_csv(big, 160)
    size_mb = big.stat().st_size / 2**20

    def measure(path: Path, mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", MEASURE, str(path), mode], capture_output=True,
                             text=True, cwd=REPO, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    baseline = measure(big, "baseline")
    work_small, work, whole = measure(small, "work"), measure(big, "work"), measure(big, "whole")
    assert work_small["rows"] == work_small["scanned"] == small_rows
    assert work["rows"] == work["scanned"] == whole["rows"] == rows and work["nulls"] == 0
    # Streaming costs a near-fixed amount (Arrow's pools and reader threads, ~80-110 MB here):
    # eight times the file measured 30-50 MB more (allocator pools vary run to run), where a whole
    # read grows by about four times the 140 MB difference. Half the difference separates them.
    grew_with_file = work["maxrss_mb"] - work_small["maxrss_mb"]
    bound = (size_mb - small.stat().st_size / 2**20) / 2
    assert grew_with_file < bound, f"a 160 MB CSV took {grew_with_file:.0f} MB more than a 20 MB one"
    grew = work["maxrss_mb"] - baseline["maxrss_mb"]
    assert grew < 200, f"stats and a column scan of a {size_mb:.0f} MB CSV took {grew:.0f} MB"
    # The control shows the measure sees a whole read (as the statistics did before streaming).
    whole_grew = whole["maxrss_mb"] - baseline["maxrss_mb"]
    assert whole_grew > max(size_mb / 2, grew + 100), (whole_grew, grew, size_mb)


def test_loading_a_large_csv_with_quoted_newlines_gives_every_row(tmp_path):
    """What a step receives (``read_arrow_table``) agrees with the stats: quoted newlines in a
    file of several MB do not break or shift the rows."""
    from aml_assets.data.datasets import read_arrow_table
    from aml_assets.data.stats import tabular_stats

    path = tmp_path / "notes.csv"
    rows = 200_000  # ~4 MB: pyarrow's default 1 MB blocks split some records inside quotes
    with path.open("w") as fh:
        fh.write("id,note,value\n")
        for i in range(rows):
            fh.write(f'{i},"first\nsecond {i}\nthird, with a comma",{i * 0.5}\n')
    assert path.stat().st_size > 4_000_000
    table = read_arrow_table(path, "csv", ",", "notes")
    assert table.num_rows == rows
    assert table.column("note")[rows - 1].as_py() == f"first\nsecond {rows - 1}\nthird, with a comma"
    assert tabular_stats(path, "csv", ",", "notes")["row_count"] == rows
