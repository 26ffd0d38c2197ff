"""Content digests of files and folders: BLAKE3, the stat cache, data manifests.

Free of Dagster (and of everything above ``aml_assets.data``): the content hash of a dataset is
a small pure function of its bytes, used by datastores, datasets and step fingerprints alike.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pathspec

#: Bumped whenever the content encoding changes (what a dataset's ``content_hash`` means).
CONTENT_VERSION = 3

#: A stat-cache entry recorded less than this long after the file's mtime is "racily clean":
#: the file could have been rewritten within the same timestamp tick without changing its stat,
#: so it is re-hashed (git's racy-index rule). 2 s covers the coarsest common filesystem tick.
RACY_WINDOW_NS = 2_000_000_000

_READ_CHUNK = 8 * 1024 * 1024
# Multi-threaded hashing only pays off on large files.
_THREADED_THRESHOLD = 4 * 1024 * 1024


def hash_bytes(data: bytes) -> str:
    """BLAKE3 hex digest of a byte string."""
    return blake3.blake3(data).hexdigest()


def _hash_file_uncached(path: Path, size: int) -> str:
    with open(path, "rb") as fh:
        hasher, _ = _hash_stream(fh, None, size)
    return hasher.hexdigest()


def _hash_stream(fh: Any, limit: int | None, size_hint: int) -> tuple[Any, int]:
    """BLAKE3 of a file's bytes (its first ``limit`` bytes if given): returns the hasher and how
    many of the ``limit`` bytes were missing.

    Read through one reused buffer, multi-threaded for large files. Not a memory map: mapped
    pages count in the process's resident memory, so hashing a 1 GB input by mmap made the
    decision about a changed source peak at >1 GB RSS; the buffer keeps it at a few MB, at
    about the same speed (the bytes come from the page cache either way).
    """
    large = size_hint >= _THREADED_THRESHOLD
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO) if large else blake3.blake3()
    buf = bytearray(_READ_CHUNK if large else min(_READ_CHUNK, max(size_hint, 1 << 16)))
    view = memoryview(buf)
    remaining = limit
    while remaining is None or remaining > 0:
        want = len(buf) if remaining is None else min(len(buf), remaining)
        n = fh.readinto(view[:want])
        if not n:
            break
        hasher.update(view[:n])
        if remaining is not None:
            remaining -= n
    return hasher, remaining or 0


class StatCache:
    """Remembers file digests keyed by (device, inode, kind) and checked against the file's stat.

    An unchanged file then costs one ``stat``. ``kind`` names what was digested ("raw" bytes, a
    normalized Python token stream, a canonical Parquet encoding...), so one file can carry several
    digests. Stored in SQLite so that several step processes (the multiprocess executor) can share
    it safely. The cache is disposable: a corrupt or unreadable database is discarded and rebuilt,
    never fatal, since every entry can be recomputed from the file itself.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.OperationalError:
            # Busy or locked (another step process holds it): not corruption. Never discard a
            # database another process is using; let the caller see the error.
            raise
        except sqlite3.DatabaseError as exc:
            logging.getLogger(__name__).warning(
                "Stat cache %s is unreadable (%s); discarding it and starting a new one.", self.path, exc
            )
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        # Several step processes open a new cache at once (the multiprocess executor, concurrent
        # runs); switching a new database to WAL takes a lock that SQLite's busy timeout does not
        # wait for, so "database is locked" here is retried, not fatal.
        delay = 0.01
        for attempt in range(60):
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS file_digests (dev INTEGER, ino INTEGER, kind TEXT,"
                    " size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT,"
                    " recorded_ns INTEGER, PRIMARY KEY (dev, ino, kind))"
                )
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or attempt == 59:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except sqlite3.DatabaseError:
                conn.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def lookup(self, st: os.stat_result, kind: str = "raw") -> str | None:
        """The cached digest for a file with this stat, or None when unknown or racily clean."""
        row = self._conn.execute(
            "SELECT size, mtime_ns, ctime_ns, digest, recorded_ns FROM file_digests"
            " WHERE dev = ? AND ino = ? AND kind = ?",
            (st.st_dev, st.st_ino, kind),
        ).fetchone()
        if row is None:
            return None
        size, mtime_ns, ctime_ns, digest, recorded_ns = row
        if (size, mtime_ns, ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        if recorded_ns - mtime_ns < RACY_WINDOW_NS:
            return None
        return digest

    def store(self, st: os.stat_result, digest: str, kind: str = "raw") -> None:
        """Record a digest for a file with this stat."""
        self._conn.execute(
            "INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                st.st_dev,
                st.st_ino,
                kind,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                digest,
                time.time_ns(),
            ),
        )

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()


def cached_digest(
    path: Path | str, cache: StatCache | None, kind: str, compute: Callable[[Path, int], str]
) -> str:
    """``compute(path, size)``, answered from the stat cache under ``kind`` when it can be trusted."""
    path = Path(path)
    st = path.stat()
    if cache is not None:
        cached = cache.lookup(st, kind)
        if cached is not None:
            return cached
    digest = compute(path, st.st_size)
    if cache is not None:
        cache.store(st, digest, kind)
    return digest


def hash_file(path: Path | str, cache: StatCache | None = None) -> str:
    """BLAKE3 hex digest of a file's bytes, answered from the stat cache when it can be trusted."""
    return cached_digest(path, cache, "raw", _hash_file_uncached)


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a directory manifest.

    ``(path, size, digest)`` is the file's *identity*, what the dataset's content hash is made of:
    ``path`` is normalized (``normalize_data_path``) and ``digest`` may be a canonical digest that
    ignores writer noise (``parquet_digest``). ``file`` and ``raw`` are for *integrity*: the real
    relative file name and the BLAKE3 of its exact bytes, so a verifier can still detect any
    flipped byte, even one the identity deliberately does not see. Both default to "" for
    manifests that cannot know them (e.g. a remote listing).
    """

    path: str
    size: int
    digest: str
    file: str = ""
    raw: str = ""


# Files Spark and Hadoop write beside the data; they carry no content of their own.
_BOOKKEEPING = re.compile(r"(^|/)(_SUCCESS|_started_\d+|_committed_\d+|\.[^/]*\.crc)$")
# Spark names part files with a fresh UUID on every write; identical data must hash the same.
_UUID = re.compile(r"-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalize_data_path(rel: str) -> str | None:
    """The name a data file is hashed under, or None for writer bookkeeping files."""
    if _BOOKKEEPING.search(rel):
        return None
    return _UUID.sub("", rel)


def manifest_digest(entries: Iterable[ManifestEntry]) -> str:
    """Merkle digest of a manifest: sorted (path, size, digest) triples, canonically encoded.

    A canonical Parquet digest already commits to the data pages (their bytes, hence their length)
    and to everything the footer says about the data; the file's size adds only the length of the
    footer's encoding, which moves with writer noise (a longer ``created_by``). So for those
    entries the size is left out of the identity (``None``); every other digest keeps it.
    """
    return canonical_digest(
        sorted(
            (
                [e.path, None if e.digest.startswith(PARQUET_DIGEST_PREFIX) else e.size, e.digest]
                for e in entries
            ),
            key=lambda t: (t[0], t[2]),
        )
    )


def ignore_spec(source_directory: Path) -> pathspec.PathSpec | None:
    """Ignore rules of a source directory: ``.amlignore`` if present, else ``.gitignore``."""
    for name in (".amlignore", ".gitignore"):
        candidate = source_directory / name
        if candidate.is_file():
            return pathspec.PathSpec.from_lines("gitwildmatch", candidate.read_text().splitlines())
    return None


_ALWAYS_IGNORED_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache"}


def walk_files(root: Path, spec: pathspec.PathSpec | None = None) -> list[tuple[str, Path]]:
    """Every file below root as (posix relative path, path), sorted, minus ignored ones."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        kept = []
        for d in dirnames:
            if d in _ALWAYS_IGNORED_DIRS:
                continue
            if spec is not None and spec.match_file(prefix + d + "/"):
                continue
            kept.append(d)
        dirnames[:] = sorted(kept)
        for name in filenames:
            rel = prefix + name
            if name.endswith(".pyc") or (spec is not None and spec.match_file(rel)):
                continue
            out.append((rel, Path(dirpath) / name))
    return sorted(out)


def _manifest_entry(name: str, rel: str, path: Path, cache: StatCache | None) -> ManifestEntry:
    raw = hash_file(path, cache)
    digest = parquet_digest(path, cache) if is_parquet_name(rel) else raw
    return ManifestEntry(name, path.stat().st_size, digest, file=rel, raw=raw)


def data_manifest(path: Path, cache: StatCache | None = None) -> list[ManifestEntry]:
    """Manifest of a local file or directory of data, with writer bookkeeping normalized away.

    Each entry carries both the noise-free identity digest and the raw digest of the exact bytes;
    both come from the stat cache when it can be trusted, so an unchanged file costs a few stats.
    """
    path = Path(path)
    if path.is_file():
        return [_manifest_entry(path.name, path.name, path, cache)]
    entries = []
    for rel, p in walk_files(path):
        name = normalize_data_path(rel)
        if name is not None:
            entries.append(_manifest_entry(name, rel, p, cache))
    return entries


# ---------------------------------------------------------------------------------------------
# Canonical Parquet digests.
#
# What two JVMs writing the same rows actually produce (measured with Spark 4.3 / parquet-mr
# 1.17, the reference dataprep step run in two processes): byte-identical data pages, page
# indexes and row/column layout; the footers differ only in the order of each column chunk's
# ``ColumnMetaData.encodings`` list. parquet-mr collects the encodings in a HashSet of Java enum
# constants, whose iteration order follows identity hash codes, which differ from one JVM to
# the next; the list is a set by meaning (readers only ask "does this chunk use encoding X").
# Beyond that, the footer names its writer (``created_by``, ``org.apache.spark.version``, the
# pyarrow version in ``pandas`` metadata), which changes with an upgrade but not with the data,
# and its key-value metadata is a map whose order no reader depends on.
#
# So the canonical digest hashes the bytes before the footer raw (data pages, dictionary pages,
# page headers and their statistics, column/offset indexes, bloom filters: every byte a reader
# decodes values from) and a canonical form of the footer (the Thrift ``FileMetaData``), decoded
# generically so that every field, including ones added to the format later, is kept unless a
# rule below says it is noise. Anything not understood falls back to the raw digest.

#: Canonical Parquet digests start with this, so they never equal a raw (hex) digest.
PARQUET_DIGEST_PREFIX = "pq1:"
#: The stat-cache kind of canonical Parquet digests; it names the canonical form's own version
#: (also the digest's tag), so a cached digest never outlives a change to the rules below.
_PARQUET_KIND = "parquet-canonical-v1"
_PARQUET_MAGIC = b"PAR1"
_THRIFT_MAX_DEPTH = 64


def is_parquet_name(rel: str) -> bool:
    """Whether a data file is hashed as Parquet: ``*.parquet``, e.g. ``part-*.snappy.parquet``."""
    return rel.lower().endswith(".parquet")


def parquet_digest(path: Path | str, cache: StatCache | None = None) -> str:
    """Digest of a Parquet file's data and schema that ignores writer noise, cached by stat.

    ``pq1:``-prefixed; a file that is not (readable, unencrypted) Parquet gets its raw digest.
    """
    return cached_digest(path, cache, _PARQUET_KIND, _parquet_digest_uncached)


class _NotParquet(ValueError):
    pass


def _parquet_digest_uncached(path: Path, size: int) -> str:
    try:
        return _canonical_parquet_digest(path, size)
    except _NotParquet:
        return _hash_file_uncached(path, size)


def _canonical_parquet_digest(path: Path, size: int) -> str:
    # Layout: "PAR1" <pages...> <FileMetaData (Thrift compact)> <u32 LE footer length> "PAR1".
    if size < 12:
        raise _NotParquet("too short")
    with open(path, "rb") as fh:
        if fh.read(4) != _PARQUET_MAGIC:
            raise _NotParquet("no leading magic")
        fh.seek(size - 8)
        tail = fh.read(8)
        if len(tail) != 8 or tail[4:] != _PARQUET_MAGIC:  # "PARE" (encrypted footer) lands here too
            raise _NotParquet("no trailing magic")
        footer_len = struct.unpack("<I", tail[:4])[0]
        data_len = size - 8 - footer_len
        if data_len < 4:
            raise _NotParquet("footer length out of range")
        fh.seek(data_len)
        footer = fh.read(footer_len)
    if len(footer) != footer_len:
        raise _NotParquet("file shrank while reading")
    try:
        reader = _ThriftReader(footer)
        metadata = reader.struct(0)
        canonical_footer = _canonical_file_metadata(_plain(12, metadata))
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, struct.error) as exc:
        raise _NotParquet(f"unreadable footer: {exc}") from exc
    return PARQUET_DIGEST_PREFIX + canonical_digest(
        {
            "format": "parquet",
            "data_length": data_len,
            "data": _hash_file_prefix(path, data_len),
            "footer": canonical_footer,
            # Bytes after FileMetaData inside the footer (a signed plaintext footer's nonce and
            # tag); kept verbatim, never expected from the writers this is for.
            "footer_trailer": footer[reader.pos :],
        },
        tag=_PARQUET_KIND,
    )


def _hash_file_prefix(path: Path, length: int) -> str:
    """BLAKE3 of a file's first ``length`` bytes (see ``_hash_stream``)."""
    with open(path, "rb") as fh:
        hasher, missing = _hash_stream(fh, length, length)
    if missing:
        raise _NotParquet("file shrank while reading")
    return hasher.hexdigest()


# Thrift compact protocol types (the wire types, not the IDL types).
_T_TRUE, _T_FALSE, _T_BYTE, _T_I16, _T_I32, _T_I64 = 1, 2, 3, 4, 5, 6
_T_DOUBLE, _T_BINARY, _T_LIST, _T_SET, _T_MAP, _T_STRUCT, _T_UUID = 7, 8, 9, 10, 11, 12, 13


class _ThriftReader:
    """A schema-free decoder of the Thrift compact protocol, as Parquet footers are written.

    Values come out typed: a struct is ``{field_id: (type, value)}``, a list or set is
    ``(element_type, [values])``, a map is ``(key_type, value_type, [(key, value)])``; booleans
    have type ``_T_TRUE``. Malformed input raises ValueError/IndexError, never loops or allocates
    beyond the input's size.
    """

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def _byte(self) -> int:
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def _varint(self) -> int:
        result = shift = 0
        while True:
            b = self._byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ValueError("varint too long")

    def _zigzag(self) -> int:
        n = self._varint()
        return (n >> 1) ^ -(n & 1)

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError("length beyond the footer")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def _count(self, n: int) -> int:
        # Every element takes at least one byte: a count beyond the input is corrupt.
        if n > len(self.buf) - self.pos:
            raise ValueError("container larger than the footer")
        return n

    def value(self, ttype: int, depth: int) -> Any:
        if depth > _THRIFT_MAX_DEPTH:
            raise ValueError("nesting too deep")
        if ttype in (_T_TRUE, _T_FALSE):  # inside containers a bool is one byte
            return self._byte() == _T_TRUE
        if ttype == _T_BYTE:
            b = self._byte()
            return b - 256 if b > 127 else b
        if ttype in (_T_I16, _T_I32, _T_I64):
            return self._zigzag()
        if ttype == _T_DOUBLE:
            return struct.unpack("<d", self._take(8))[0]
        if ttype == _T_BINARY:
            return self._take(self._varint())
        if ttype in (_T_LIST, _T_SET):
            header = self._byte()
            n, etype = header >> 4, header & 0x0F
            if n == 15:
                n = self._varint()
            etype = _T_TRUE if etype == _T_FALSE else etype
            return (etype, [self.value(etype, depth + 1) for _ in range(self._count(n))])
        if ttype == _T_MAP:
            n = self._count(self._varint())
            if n == 0:
                return (0, 0, [])
            kv = self._byte()
            ktype, vtype = kv >> 4, kv & 0x0F
            return (
                ktype,
                vtype,
                [(self.value(ktype, depth + 1), self.value(vtype, depth + 1)) for _ in range(n)],
            )
        if ttype == _T_STRUCT:
            return self.struct(depth + 1)
        if ttype == _T_UUID:
            return self._take(16)
        raise ValueError(f"unknown Thrift compact type {ttype}")

    def struct(self, depth: int) -> dict[int, tuple[int, Any]]:
        fields: dict[int, tuple[int, Any]] = {}
        last = 0
        while True:
            header = self._byte()
            if header == 0:
                return fields
            ttype, delta = header & 0x0F, header >> 4
            fid = last + delta if delta else self._zigzag()
            last = fid
            if ttype in (_T_TRUE, _T_FALSE):  # a bool field's value is its type nibble
                fields[fid] = (_T_TRUE, ttype == _T_TRUE)
            else:
                fields[fid] = (ttype, self.value(ttype, depth))


def _plain(ttype: int, value: Any) -> Any:
    """A decoded Thrift value as plain data: structs become ``{"<field id>": ...}`` dicts."""
    if ttype == _T_STRUCT:
        return {str(fid): _plain(t, v) for fid, (t, v) in value.items()}
    if ttype in (_T_LIST, _T_SET):
        etype, items = value
        out = [_plain(etype, v) for v in items]
        return sorted(out, key=_sort_key) if ttype == _T_SET else out
    if ttype == _T_MAP:
        ktype, vtype, items = value
        return sorted(([_plain(ktype, k), _plain(vtype, v)] for k, v in items), key=_sort_key)
    return value


def _sort_key(value: Any) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


# Field ids from parquet.thrift.
_FMD_KEY_VALUE_METADATA, _FMD_CREATED_BY, _FMD_ROW_GROUPS = "5", "6", "4"
_RG_COLUMNS, _CC_META_DATA = "1", "3"
_CMD_ENCODINGS, _CMD_KEY_VALUE_METADATA, _CMD_ENCODING_STATS = "2", "8", "13"
_KV_KEY, _KV_VALUE = "1", "2"


def _canonical_file_metadata(fmd: dict[str, Any]) -> dict[str, Any]:
    """FileMetaData minus writer noise; every other field (schema, num_rows, row groups...) kept."""
    if not isinstance(fmd, dict) or not {"2", "3", "4"} <= fmd.keys():
        raise ValueError("not a FileMetaData (no schema, num_rows or row_groups)")
    # created_by names the writer library and its build ("parquet-mr version 1.17.0 (build
    # ...)"); readers use it only to distrust statistics of known-buggy writers, never to decode
    # values, and the statistics themselves stay in the digest.
    fmd.pop(_FMD_CREATED_BY, None)
    if _FMD_KEY_VALUE_METADATA in fmd:
        fmd[_FMD_KEY_VALUE_METADATA] = _canonical_key_values(
            (kv[_KV_KEY], kv.get(_KV_VALUE)) for kv in fmd[_FMD_KEY_VALUE_METADATA]
        )
    for row_group in fmd[_FMD_ROW_GROUPS]:
        for chunk in row_group.get(_RG_COLUMNS, []):
            meta = chunk.get(_CC_META_DATA)
            if meta is None:
                continue
            # A set by meaning, listed in JVM-dependent order (the measured cross-JVM noise).
            if _CMD_ENCODINGS in meta:
                meta[_CMD_ENCODINGS] = sorted(meta[_CMD_ENCODINGS])
            # (page type, encoding, count) per kind of page: also a set by meaning.
            if _CMD_ENCODING_STATS in meta:
                meta[_CMD_ENCODING_STATS] = sorted(meta[_CMD_ENCODING_STATS], key=_sort_key)
            if _CMD_KEY_VALUE_METADATA in meta:
                meta[_CMD_KEY_VALUE_METADATA] = _canonical_key_values(
                    (kv[_KV_KEY], kv.get(_KV_VALUE)) for kv in meta[_CMD_KEY_VALUE_METADATA]
                )
    return fmd


_SPARK_VERSION_KEY = b"org.apache.spark.version"
_ARROW_SCHEMA_KEY = b"ARROW:schema"
_PANDAS_KEY = b"pandas"


def _canonical_key_values(pairs: Iterable[tuple[bytes, bytes | None]]) -> list[list[Any]]:
    """Key-value metadata as an order-free list of (key, canonical value) pairs."""
    out = []
    for key, value in pairs:
        if isinstance(key, str):
            key = key.encode("utf-8")
        if isinstance(value, str):
            value = value.encode("utf-8")
        out.append([key, None if value is None else _canonical_metadata_value(key, value)])
    return sorted(out, key=_sort_key)


def _canonical_metadata_value(key: bytes, value: bytes) -> Any:
    if key == _SPARK_VERSION_KEY:
        # The Spark version that wrote the file. Spark's reader consults it only through two
        # string comparisons (DataSourceUtils): files from Spark < 3.0.0 hold dates/timestamps in
        # the hybrid Julian calendar, INT96 from Spark < 3.1.0 likewise, and both get rebased on
        # read. Those two answers change what the values mean; the rest just names the writer.
        version = value.decode("utf-8", "replace")
        return {"spark-rebase": [version < "3.0.0", version < "3.1.0"]}
    if key == _ARROW_SCHEMA_KEY:
        return _canonical_arrow_schema(value)
    if value[:1] in (b"{", b"["):
        try:
            parsed = json.loads(value)
        except ValueError:
            pass
        else:
            if key == _PANDAS_KEY and isinstance(parsed, dict):
                # pandas metadata's "creator" is {"library": "pyarrow", "version": ...}: the
                # writer's name only. Column names, dtypes and index layout stay.
                parsed.pop("creator", None)
            # JSON (e.g. Spark's org.apache.spark.sql.parquet.row.metadata, its schema with
            # nullability and field metadata): key order and whitespace carry no meaning; keys,
            # values and list order do.
            return {"json": parsed}
    return {"bytes": value}


def _canonical_arrow_schema(value: bytes) -> Any:
    """pyarrow's serialized Arrow schema, decoded: fields and metadata, metadata order-free.

    It restates the Parquet schema in Arrow terms plus the table's metadata (in its original
    order, and with pandas' ``creator``), so it gets the same rules as the footer's own metadata.
    """
    try:
        import base64

        import pyarrow as pa

        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(value, validate=True)))
        return {
            "arrow-schema": [_arrow_field(f) for f in schema],
            "metadata": _canonical_key_values((schema.metadata or {}).items()),
        }
    except Exception:  # whatever this pyarrow cannot decode is kept verbatim
        return {"bytes": value}


def _arrow_field(field: Any) -> dict[str, Any]:
    dtype = field.type
    out: dict[str, Any] = {
        "name": field.name,
        "type": str(dtype),
        "nullable": field.nullable,
        "metadata": _canonical_key_values((field.metadata or {}).items()),
        "children": [_arrow_field(dtype.field(i)) for i in range(dtype.num_fields)],
    }
    if hasattr(dtype, "extension_name"):
        serialize = getattr(dtype, "__arrow_ext_serialize__", None)
        out["extension"] = [
            dtype.extension_name,
            serialize() if serialize is not None else str(dtype),
            _arrow_field(field.with_type(dtype.storage_type)),
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Canonical encoding: type-tagged and length-prefixed, so no two distinct values share bytes
# ("ab"+"c" never collides with "a"+"bc"), and dict order never matters.


def _encode(value: Any, out: list[bytes]) -> None:
    if value is None:
        out.append(b"N")
    elif isinstance(value, bool):
        out.append(b"T" if value else b"F")
    elif isinstance(value, int):
        raw = str(value).encode()
        out.append(b"i" + struct.pack(">Q", len(raw)) + raw)
    elif isinstance(value, float):
        raw = repr(value).encode()
        out.append(b"f" + struct.pack(">Q", len(raw)) + raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"s" + struct.pack(">Q", len(raw)) + raw)
    elif isinstance(value, bytes):
        out.append(b"b" + struct.pack(">Q", len(value)) + value)
    elif isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        out.append(b"d" + struct.pack(">Q", len(items)))
        for k, v in items:
            _encode(str(k), out)
            _encode(v, out)
    elif isinstance(value, (list, tuple)):
        out.append(b"l" + struct.pack(">Q", len(value)))
        for v in value:
            _encode(v, out)
    else:
        raise TypeError(
            f"Cannot fingerprint a value of type {type(value).__name__}: {value!r}. "
            "Use str, int, float, bool, None, bytes, lists or dicts of those."
        )


def canonical_digest(value: Any, tag: str = f"aml-content/v{CONTENT_VERSION}") -> str:
    """BLAKE3 digest of a value's canonical encoding, prefixed by a version ``tag``."""
    out: list[bytes] = [f"{tag}\0".encode()]
    _encode(value, out)
    return hash_bytes(b"".join(out))
