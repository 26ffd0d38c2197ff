"""The cache key as a pure function: encoding, file digests, the stat cache, manifests."""

from __future__ import annotations

import hashlib
import os
import time

import blake3

from aml_assets.data.content import (
    RACY_WINDOW_NS,
    StatCache,
    canonical_digest,
    data_manifest,
    hash_file,
    manifest_digest,
)
from aml_assets.reuse.code import step_code
from aml_assets.reuse.fingerprint import StepFingerprint, explain_difference


def test_canonical_encoding_is_unambiguous_and_order_free():
    assert canonical_digest(["ab", "c"]) != canonical_digest(["a", "bc"])
    assert canonical_digest({"a": 1, "b": 2}) == canonical_digest({"b": 2, "a": 1})
    assert canonical_digest(1) != canonical_digest("1") != canonical_digest(1.0)
    assert canonical_digest(True) != canonical_digest(1)
    assert canonical_digest(None) != canonical_digest("")


def test_hash_file_is_blake3_of_the_bytes(tmp_path):
    f = tmp_path / "f.bin"
    data = os.urandom(5 * 1024 * 1024 + 7)  # over the mmap threshold
    f.write_bytes(data)
    assert hash_file(f) == blake3.blake3(data).hexdigest()
    assert hash_file(f) != hashlib.sha256(data).hexdigest()


def _backdate(path, past=None):
    past = past or time.time_ns() - 10 * 1_000_000_000
    os.utime(path, ns=(past, past))
    return past


def test_stat_cache_answers_unchanged_files_without_reading(tmp_path):
    cache = StatCache(tmp_path / "c.sqlite")
    f = tmp_path / "f.txt"
    f.write_text("hello")
    past = _backdate(f)
    first = hash_file(f, cache)
    assert cache.lookup(f.stat()) == first
    # Same size, same mtime, different bytes (the trap the key guards against): the inode's
    # ctime still changes, so the cache misses and the new content is hashed.
    f.write_text("HELLO")
    _backdate(f, past)
    assert f.stat().st_mtime_ns == past and f.stat().st_size == 5
    assert cache.lookup(f.stat()) is None
    assert hash_file(f, cache) == blake3.blake3(b"HELLO").hexdigest()


def test_racily_clean_entries_are_rehashed(tmp_path):
    cache = StatCache(tmp_path / "c.sqlite")
    f = tmp_path / "f.txt"
    f.write_text("fresh")  # mtime is now: an entry recorded now is within the racy window
    hash_file(f, cache)
    assert cache.lookup(f.stat()) is None, "an entry recorded in the file's own tick must not be trusted"
    assert RACY_WINDOW_NS >= 1_000_000_000


def test_step_code_respects_amlignore_then_gitignore(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.tmp").write_text("y")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.csv").write_text("z")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_text("c")
    (tmp_path / ".gitignore").write_text("*.tmp\n")
    assert set(step_code("a.py", tmp_path).files) == {".gitignore", "a.py", "data/big.csv"}
    (tmp_path / ".amlignore").write_text("data/\n")
    assert set(step_code("a.py", tmp_path).files) == {".amlignore", ".gitignore", "a.py", "notes.tmp"}


def test_data_manifest_ignores_writer_bookkeeping_and_part_uuids(tmp_path):
    def write(dirname, uuid):
        d = tmp_path / dirname
        d.mkdir()
        (d / f"part-00000-{uuid}-c000.snappy.parquet").write_bytes(b"rows")
        (d / f".part-00000-{uuid}-c000.snappy.parquet.crc").write_bytes(b"crc")
        (d / "_SUCCESS").write_bytes(b"")
        return d

    a = write("a", "0f8e7a52-1c55-4c7c-9a6b-1234567890ab")
    b = write("b", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
    assert manifest_digest(data_manifest(a)) == manifest_digest(data_manifest(b))
    [entry] = data_manifest(a)
    assert entry.path == "part-00000-c000.snappy.parquet"
    (b / "part-00001-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee-c000.snappy.parquet").write_bytes(b"more")
    assert manifest_digest(data_manifest(a)) != manifest_digest(data_manifest(b))


def test_fingerprint_changes_with_each_component_and_explains_it():
    base = StepFingerprint("train", code={"train.py": "1"}, arguments=["--x"], parameters={"n": 1},
                           inputs={"data": "h1"}, environment={"python": "3.11"}, settings={"kind": "python"})
    variants = {
        "script code/train.py changed": StepFingerprint(**{**base.__dict__, "code": {"train.py": "2"}}),
        "input data changed": StepFingerprint(**{**base.__dict__, "inputs": {"data": "h2"}}),
        "parameter n changed (1 -> 2)": StepFingerprint(**{**base.__dict__, "parameters": {"n": 2}}),
        "environment changed: python 3.11 -> 3.12": StepFingerprint(**{**base.__dict__, "environment": {"python": "3.12"}}),
        "settings kind changed ('python' -> 'spark')": StepFingerprint(**{**base.__dict__, "settings": {"kind": "spark"}}),
        "arguments changed (['--x'] -> ['--y'])": StepFingerprint(**{**base.__dict__, "arguments": ["--y"]}),
    }
    for reason, fp in variants.items():
        assert fp.digest != base.digest
        assert explain_difference(base.components(), fp.components(), lambda p: f"code/{p}") == [reason]
    assert explain_difference(None, base.components()) == ["no previous run"]
    older_format = {**base.components(), "format": 1}
    assert explain_difference(older_format, base.components()) == [
        f"the fingerprint format changed (v1 -> v{base.components()['format']}) with an aml-assets "
        "upgrade; each step reruns once"
    ]
    assert explain_difference(base.components(), base.components()) == []


def _open_and_use_cache(path: str, worker: int, barrier, results) -> None:
    try:
        barrier.wait()
        cache = StatCache(path)
        st = os.stat(path)
        cache.store(st, f"digest{worker}", kind=f"worker{worker}")
        cache.close()
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_many_processes_opening_a_new_stat_cache_at_once(tmp_path):
    """Concurrent step processes create the cache together: none may fail ("database is
    locked" on switching a new database to WAL) and none may discard another's database."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    failures = []
    for trial in range(8):
        path = tmp_path / f"cache{trial}.sqlite"
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [
            ctx.Process(target=_open_and_use_cache, args=(str(path), i, barrier, results)) for i in range(6)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        failures += [r for r in (results.get(timeout=10) for _ in procs) if r != "ok"]
        # Every process's entry is in the one database (none wrote into a discarded file).
        cache = StatCache(path)
        rows = cache._conn.execute("SELECT kind, digest FROM file_digests").fetchall()
        cache.close()
        assert sorted(rows) == [(f"worker{i}", f"digest{i}") for i in range(6)], rows
    assert failures == []
