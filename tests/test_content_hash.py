"""Content hashes of Parquet data: noise-free identity (canonical digest), exact-bytes integrity."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aml_assets.data import content
from aml_assets.data.content import (
    PARQUET_DIGEST_PREFIX,
    StatCache,
    _ThriftReader,
    data_manifest,
    hash_file,
    manifest_digest,
    parquet_digest,
)

SPARK_ROW_METADATA = "org.apache.spark.sql.parquet.row.metadata"


# ---------------------------------------------------------------------------------------------
# Helpers: write small Parquet files, and rewrite a file's footer (to fake another writer).


def table(**overrides) -> pa.Table:
    data = {"id": [1, 2, 3, 4], "name": ["a", "b", "a", None], "score": [0.5, 1.5, 2.5, 3.5]}
    data.update(overrides)
    return pa.table(data)


def write(path: Path, tbl: pa.Table | None = None, **kwargs) -> Path:
    pq.write_table(table() if tbl is None else tbl, path, **kwargs)
    return path


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _encode_value(ttype: int, value) -> bytes:
    """Thrift compact encoding of a value as ``_ThriftReader`` decodes it (the inverse)."""
    if ttype == 1:
        return b"\x01" if value else b"\x02"
    if ttype == 3:
        return bytes([value & 0xFF])
    if ttype in (4, 5, 6):
        return _zigzag(value)
    if ttype == 7:
        return struct.pack("<d", value)
    if ttype == 8:
        return _varint(len(value)) + value
    if ttype in (9, 10):
        etype, items = value
        header = (
            bytes([(len(items) << 4) | etype])
            if len(items) < 15
            else bytes([0xF0 | etype]) + _varint(len(items))
        )
        return header + b"".join(_encode_value(etype, v) for v in items)
    if ttype == 11:
        ktype, vtype, items = value
        if not items:
            return b"\x00"
        body = b"".join(_encode_value(ktype, k) + _encode_value(vtype, v) for k, v in items)
        return _varint(len(items)) + bytes([(ktype << 4) | vtype]) + body
    if ttype == 12:
        return _encode_struct(value)
    if ttype == 13:
        return value
    raise AssertionError(ttype)


def _encode_struct(fields: dict) -> bytes:
    out, last = bytearray(), 0
    for fid, (ttype, value) in fields.items():
        wire = (1 if value else 2) if ttype == 1 else ttype
        delta = fid - last
        out += bytes([(delta << 4) | wire]) if 0 < delta <= 15 else bytes([wire]) + _zigzag(fid)
        if ttype != 1:
            out += _encode_value(ttype, value)
        last = fid
    return bytes(out + b"\x00")


def split(path: Path) -> tuple[bytes, bytes]:
    """(bytes before the footer, footer) of a Parquet file."""
    blob = path.read_bytes()
    (footer_len,) = struct.unpack("<I", blob[-8:-4])
    start = len(blob) - 8 - footer_len
    return blob[:start], blob[start:-8]


def rewrite_footer(src: Path, dst: Path, mutate: Callable[[dict], None]) -> Path:
    """Copy a Parquet file with its decoded FileMetaData changed by ``mutate``, pages untouched."""
    data, footer = split(src)
    fmd = _ThriftReader(footer).struct(0)
    mutate(fmd)
    new_footer = _encode_struct(fmd)
    dst.write_bytes(data + new_footer + struct.pack("<I", len(new_footer)) + b"PAR1")
    return dst


def kv_list(fmd: dict) -> list[dict]:
    """The footer's key_value_metadata structs (created when missing)."""
    return fmd.setdefault(5, (9, (12, [])))[1][1]


def set_kv(fmd: dict, key: str, value: str) -> None:
    items = kv_list(fmd)
    items[:] = [kv for kv in items if kv[1][1] != key.encode()]
    items.append({1: (8, key.encode()), 2: (8, value.encode())})


def column_meta(fmd: dict) -> list[dict]:
    return [chunk[3][1] for rg in fmd[4][1][1] for chunk in rg[1][1][1]]


def raw_of(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Unit: pyarrow-written files.


def test_decoder_round_trips_real_footers(tmp_path):
    nested = pa.table(
        {
            "id": pa.array(range(1000), pa.int64()),
            "tags": pa.array([["x", "y"]] * 1000),
            "point": pa.array([{"x": 1.0, "y": None}] * 1000),
            "cat": pa.array(["p", "q"] * 500).dictionary_encode(),
        }
    )
    files = [
        write(tmp_path / "plain.parquet"),
        write(tmp_path / "nested.parquet", nested, row_group_size=300, write_page_index=True),
        write(tmp_path / "v2.parquet", nested, data_page_version="2.0", compression="zstd"),
    ]
    for f in files:
        _, footer = split(f)
        reader = _ThriftReader(footer)
        assert _encode_struct(reader.struct(0)) == footer
        assert reader.pos == len(footer)
        assert parquet_digest(f).startswith(PARQUET_DIGEST_PREFIX)


def test_key_value_metadata_order_does_not_matter(tmp_path):
    tbl = table()
    a = write(tmp_path / "a.parquet", tbl.replace_schema_metadata({"x": "1", "y": "2"}))
    b = write(tmp_path / "b.parquet", tbl.replace_schema_metadata({"y": "2", "x": "1"}))
    assert raw_of(a) != raw_of(b)  # the KV list and the embedded ARROW:schema differ in order
    assert parquet_digest(a) == parquet_digest(b)

    reversed_ = rewrite_footer(a, tmp_path / "r.parquet", lambda fmd: kv_list(fmd).reverse())
    assert raw_of(reversed_) != raw_of(a)
    assert parquet_digest(reversed_) == parquet_digest(a)

    c = write(tmp_path / "c.parquet", tbl.replace_schema_metadata({"x": "1", "y": "3"}))
    assert parquet_digest(c) != parquet_digest(a)


def test_writer_name_and_version_are_noise(tmp_path):
    a = write(tmp_path / "a.parquet")

    def other_writer(fmd):
        fmd[6] = (8, b"parquet-mr version 1.13.1 (build db4183109d5b734ec5930d870cdae161e408ddba)")

    b = rewrite_footer(a, tmp_path / "b.parquet", other_writer)
    assert pq.ParquetFile(b).metadata.created_by.startswith("parquet-mr")
    assert b.stat().st_size != a.stat().st_size
    assert parquet_digest(a) == parquet_digest(b)
    (tmp_path / "da").mkdir()
    (tmp_path / "db").mkdir()
    a.rename(tmp_path / "da" / "part.parquet")
    b.rename(tmp_path / "db" / "part.parquet")
    assert manifest_digest(data_manifest(tmp_path / "da")) == manifest_digest(
        data_manifest(tmp_path / "db")
    )
    a = tmp_path / "da" / "part.parquet"

    spark = {
        v: rewrite_footer(
            a,
            tmp_path / f"s{v}.parquet",
            lambda fmd, v=v: set_kv(fmd, "org.apache.spark.version", v),
        )
        for v in ("4.3.0", "4.3.1", "3.5.2", "3.0.3", "2.4.8")
    }
    digests = {v: parquet_digest(p) for v, p in spark.items()}
    assert digests["4.3.0"] == digests["4.3.1"] == digests["3.5.2"]
    # ...but the version ranges Spark's reader rebases dates (< 3.0) and INT96 (< 3.1) for differ.
    assert len({digests["4.3.0"], digests["3.0.3"], digests["2.4.8"]}) == 3


def test_pandas_creator_is_noise_but_pandas_metadata_is_not(tmp_path):
    tbl = pa.Table.from_pandas(table().to_pandas())
    meta = json.loads(tbl.schema.metadata[b"pandas"])
    assert "creator" in meta

    def with_pandas(m):
        return tbl.replace_schema_metadata(
            {**tbl.schema.metadata, b"pandas": json.dumps(m).encode()}
        )

    a = write(tmp_path / "a.parquet", tbl)
    b = write(
        tmp_path / "b.parquet",
        with_pandas({**meta, "creator": {"library": "pyarrow", "version": "9.0.0"}}),
    )
    assert raw_of(a) != raw_of(b)
    assert parquet_digest(a) == parquet_digest(b)
    c = write(tmp_path / "c.parquet", with_pandas({**meta, "index_columns": []}))
    assert parquet_digest(c) != parquet_digest(a)


def test_column_encodings_order_is_noise(tmp_path):
    a = write(tmp_path / "a.parquet", use_dictionary=True)
    assert any(len(m[2][1][1]) > 1 for m in column_meta(_ThriftReader(split(a)[1]).struct(0)))

    def permute(fmd):
        for meta in column_meta(fmd):
            meta[2][1][1].reverse()

    b = rewrite_footer(a, tmp_path / "b.parquet", permute)
    assert raw_of(a) != raw_of(b)
    assert parquet_digest(a) == parquet_digest(b)

    def drop_one(fmd):
        meta = next(m for m in column_meta(fmd) if len(m[2][1][1]) > 1)
        meta[2][1][1].pop()

    assert parquet_digest(rewrite_footer(a, tmp_path / "c.parquet", drop_one)) != parquet_digest(a)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda: table(score=[0.5, 1.5, 2.5, 3.25]), id="cell-value"),
        pytest.param(lambda: table().rename_columns(["id", "label", "score"]), id="renamed-column"),
        pytest.param(
            lambda: table().cast(
                pa.schema([("id", pa.int32()), ("name", pa.string()), ("score", pa.float64())])
            ),
            id="int64-to-int32",
        ),
        pytest.param(
            lambda: table().cast(
                pa.schema(
                    [
                        pa.field("id", pa.int64(), nullable=False),
                        ("name", pa.string()),
                        ("score", pa.float64()),
                    ]
                )
            ),
            id="nullability",
        ),
        pytest.param(
            lambda: table().cast(
                pa.schema(
                    [
                        pa.field("id", pa.int64(), metadata={"unit": "m"}),
                        ("name", pa.string()),
                        ("score", pa.float64()),
                    ]
                )
            ),
            id="field-metadata",
        ),
        pytest.param(
            lambda: table(id=pa.array([1, 2, 3, 4], pa.timestamp("ms"))), id="logical-type"
        ),
        pytest.param(lambda: table().slice(0, 3), id="row-dropped"),
    ],
)
def test_data_and_schema_changes_change_the_digest(tmp_path, change):
    base = parquet_digest(write(tmp_path / "base.parquet"))
    assert parquet_digest(write(tmp_path / "again.parquet")) == base
    assert parquet_digest(write(tmp_path / "changed.parquet", change())) != base


def test_footer_only_changes_to_the_data_description_change_the_digest(tmp_path):
    a = write(tmp_path / "a.parquet")

    def rename_in_footer(fmd):  # same length, pages untouched: a renamed column
        for element in fmd[2][1][1]:
            if element.get(4) == (8, b"name"):
                element[4] = (8, b"nome")

    def drop_statistics(fmd):
        for meta in column_meta(fmd):
            meta.pop(12, None)

    for mutate in (rename_in_footer, drop_statistics):
        b = rewrite_footer(a, tmp_path / f"{mutate.__name__}.parquet", mutate)
        assert parquet_digest(b) != parquet_digest(a), mutate.__name__


def spark_row_metadata(nullable: bool = True, comment: str = "an id") -> dict:
    return {
        "type": "struct",
        "fields": [
            {"name": "id", "type": "long", "nullable": nullable, "metadata": {"comment": comment}},
            {"name": "name", "type": "string", "nullable": True, "metadata": {}},
            {"name": "score", "type": "double", "nullable": True, "metadata": {}},
        ],
    }


def test_spark_row_metadata_is_compared_as_json(tmp_path):
    a = write(tmp_path / "a.parquet")

    def with_row_metadata(name: str, text: str) -> str:
        path = rewrite_footer(a, tmp_path / name, lambda fmd: set_kv(fmd, SPARK_ROW_METADATA, text))
        return parquet_digest(path)

    base = with_row_metadata(
        "base.parquet", json.dumps(spark_row_metadata(), separators=(",", ":"))
    )
    reordered = spark_row_metadata()
    reordered = {
        "fields": [dict(reversed(list(f.items()))) for f in reordered["fields"]],
        "type": "struct",
    }
    assert with_row_metadata("reordered.parquet", json.dumps(reordered, indent=2)) == base
    assert (
        with_row_metadata("comment.parquet", json.dumps(spark_row_metadata(comment="id"))) != base
    )
    assert (
        with_row_metadata("nullable.parquet", json.dumps(spark_row_metadata(nullable=False)))
        != base
    )
    fields_swapped = spark_row_metadata()
    fields_swapped["fields"].reverse()  # column order is meaning, not noise
    assert with_row_metadata("swapped.parquet", json.dumps(fields_swapped)) != base
    assert with_row_metadata("not-json.parquet", "{not json") not in (base, "")


def test_non_parquet_and_corrupt_parquet_fall_back_to_the_raw_digest(tmp_path):
    good = write(tmp_path / "good.parquet")
    data, footer = split(good)
    cases = {
        "text.parquet": b"id,name\n1,a\n",
        "empty.parquet": b"",
        "truncated.parquet": good.read_bytes()[:-20],
        "bad-length.parquet": data + footer + struct.pack("<I", 10**9) + b"PAR1",
        "garbage-footer.parquet": data
        + b"\xff" * len(footer)
        + struct.pack("<I", len(footer))
        + b"PAR1",
        "not-file-metadata.parquet": data + b"\x15\x02\x00" + struct.pack("<I", 3) + b"PAR1",
    }
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        assert parquet_digest(path) == hash_file(path) == blake3.blake3(blob).hexdigest(), name
    # A valid Parquet file under another name is hashed as plain bytes.
    other = tmp_path / "good.bin"
    other.write_bytes(good.read_bytes())
    [entry] = data_manifest(other)
    assert entry.digest == entry.raw == raw_of(good)


def test_raw_sees_every_byte_the_identity_ignores(tmp_path):
    a = write(tmp_path / "a.parquet", table().replace_schema_metadata({"x": "1"}))
    b = rewrite_footer(a, tmp_path / "b.parquet", lambda fmd: kv_list(fmd).reverse())
    [ea], [eb] = data_manifest(a), data_manifest(b)
    assert ea.digest == eb.digest and ea.raw != eb.raw
    assert (ea.raw, eb.raw) == (raw_of(a), raw_of(b))

    blob = bytearray(a.read_bytes())
    blob[10] ^= 0x01  # a flipped bit in the data pages changes both
    flipped = tmp_path / "flipped.parquet"
    flipped.write_bytes(bytes(blob))
    [ef] = data_manifest(flipped)
    assert ef.raw != ea.raw and ef.digest != ea.digest


def test_manifest_entries_carry_file_and_raw(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    uuid = "0f8e7a52-1c55-4c7c-9a6b-1234567890ab"
    part = write(out / f"part-00000-{uuid}-c000.snappy.parquet")
    (out / f".part-00000-{uuid}-c000.snappy.parquet.crc").write_bytes(b"crc")
    (out / "_SUCCESS").write_bytes(b"")
    (out / "sub").mkdir()
    (out / "sub" / "notes.csv").write_text("a,b\n1,2\n")
    entries = {e.path: e for e in data_manifest(out)}
    assert set(entries) == {"part-00000-c000.snappy.parquet", "sub/notes.csv"}
    pe, ce = entries["part-00000-c000.snappy.parquet"], entries["sub/notes.csv"]
    assert pe.file == part.name and pe.raw == raw_of(part) and pe.size == part.stat().st_size
    assert pe.digest.startswith(PARQUET_DIGEST_PREFIX) and pe.digest == parquet_digest(part)
    assert ce.file == "sub/notes.csv" and ce.digest == ce.raw == raw_of(out / "sub" / "notes.csv")
    [single] = data_manifest(part)
    assert (single.path, single.file, single.raw) == (part.name, part.name, pe.raw)


def test_manifest_uses_the_stat_cache_for_both_digests(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    write(out / "part-00000.parquet")
    (out / "notes.csv").write_text("a\n")
    past = time.time() - 60  # older than the racy window, so the cache may answer
    for f in out.iterdir():
        os.utime(f, (past, past))
    cache = StatCache(tmp_path / "stat.sqlite")
    first = data_manifest(out, cache)

    def fail(*_):
        raise AssertionError("re-hashed a file the stat cache knows")

    monkeypatch.setattr(content, "_hash_file_uncached", fail)
    monkeypatch.setattr(content, "_parquet_digest_uncached", fail)
    assert data_manifest(out, cache) == first
    cache.close()


def test_canonical_vs_raw_hashing_time(tmp_path):
    """Not a gate: prints how much the canonical Parquet digest costs over the raw one."""
    import numpy as np

    rng = np.random.default_rng(0)
    tbl = pa.table({f"c{i}": rng.random(650_000) for i in range(10)})
    path = write(
        tmp_path / "big.parquet",
        tbl,
        compression="none",
        use_dictionary=False,
        row_group_size=100_000,
    )
    size = path.stat().st_size

    def best(fn) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    raw = best(lambda: hash_file(path))
    canonical = best(lambda: parquet_digest(path))
    print(
        f"\n{size / 1e6:.1f} MB parquet: raw {raw * 1e3:.1f} ms, canonical {canonical * 1e3:.1f} ms,"
        f" ratio {canonical / raw:.2f}"
    )
    assert parquet_digest(path).startswith(PARQUET_DIGEST_PREFIX)


# ---------------------------------------------------------------------------------------------
# Real Spark: separate processes, so separate JVMs.

_SPARK_WRITER = textwrap.dedent(
    """
    import sys
    from pyspark.sql import SparkSession, functions as F

    out, changed = sys.argv[1], sys.argv[2] == "1"
    spark = (
        SparkSession.builder.master("local[1]").appName("content-hash")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.driver.memory", "512m")
        .getOrCreate()
    )
    rows = [(i, f"name-{i % 7}", i * 1.5, i % 3 == 0) for i in range(200)]
    if changed:
        rows[17] = (17, "name-3", 17 * 1.5, True)
    df = spark.createDataFrame(rows, "id int, name string, score double, flag boolean")
    df = df.withColumn("bucket", F.col("id") % 5).withColumn("label", F.upper("name"))
    df.coalesce(1).write.mode("overwrite").parquet(out)
    spark.stop()
    """
)


def _spark_writes(tmp_path: Path, jobs: dict[str, bool]) -> dict[str, Path]:
    """Run one Spark writer process per job (concurrently), each writing its own directory."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", _SPARK_WRITER, str(tmp_path / name), "1" if changed else "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, changed in jobs.items()
    }
    try:
        for name, proc in procs.items():
            output, _ = proc.communicate(timeout=240)
            assert proc.returncode == 0, f"Spark writer {name} failed:\n{output[-4000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {name: tmp_path / name for name in jobs}


def _parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.parquet"))


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_jvms_writing_the_same_rows_get_the_same_content_hash(tmp_path):
    dirs = _spark_writes(tmp_path, {"first": False, "second": False, "changed": True})
    manifests = {name: data_manifest(d) for name, d in dirs.items()}
    for entries in manifests.values():
        assert [e.path for e in entries] == ["part-00000-c000.snappy.parquet"]
        assert all(e.digest.startswith(PARQUET_DIGEST_PREFIX) for e in entries)
        assert entries[0].file != entries[0].path  # the real part name carries Spark's UUID

    first, second = manifest_digest(manifests["first"]), manifest_digest(manifests["second"])
    assert first == second
    assert manifest_digest(manifests["changed"]) != first

    # The writers' noise is real: each JVM lists a column chunk's encodings in its own order
    # (parquet-mr keeps them in a HashSet of enums). Two JVMs can draw the same order by chance
    # (a few percent), so a third writer is asked before concluding anything.
    raws = {manifests["first"][0].raw, manifests["second"][0].raw}
    if len(raws) == 1:
        third = _spark_writes(tmp_path, {"third": False})["third"]
        entries = data_manifest(third)
        assert manifest_digest(entries) == first
        raws.add(entries[0].raw)
    assert len(raws) > 1, (
        "every JVM wrote byte-identical files; the noise this guards against is gone"
    )
    data_regions = {split(_parts(d)[0])[0] for name, d in dirs.items() if name != "changed"}
    assert len(data_regions) == 1  # the pages are byte-identical: only the footers differ
