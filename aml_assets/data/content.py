"""Content digests of files and folders: BLAKE3, the stat cache, data manifests.

Free of Dagster (and of everything above ``aml_assets.data``): the content hash of a dataset is
a small pure function of its bytes, used by datastores, datasets and step fingerprints alike.
"""

from __future__ import annotations

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
CONTENT_VERSION = 2

#: A stat-cache entry recorded less than this long after the file's mtime is "racily clean":
#: the file could have been rewritten within the same timestamp tick without changing its stat,
#: so it is re-hashed (git's racy-index rule). 2 s covers the coarsest common filesystem tick.
RACY_WINDOW_NS = 2_000_000_000

_READ_CHUNK = 8 * 1024 * 1024
# Memory-mapped, multi-threaded hashing only pays off on large files.
_MMAP_THRESHOLD = 4 * 1024 * 1024


def hash_bytes(data: bytes) -> str:
    """BLAKE3 hex digest of a byte string."""
    return blake3.blake3(data).hexdigest()


def _hash_file_uncached(path: Path, size: int) -> str:
    if size >= _MMAP_THRESHOLD:
        return blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(path).hexdigest()
    hasher = blake3.blake3()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


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
        except sqlite3.DatabaseError as exc:
            logging.getLogger(__name__).warning(
                "Stat cache %s is unreadable (%s); discarding it and starting a new one.", self.path, exc
            )
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS file_digests (dev INTEGER, ino INTEGER, kind TEXT,"
                " size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT, recorded_ns INTEGER,"
                " PRIMARY KEY (dev, ino, kind))"
            )
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

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
    """One file of a directory manifest."""

    path: str
    size: int
    digest: str


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
    """Merkle digest of a manifest: sorted (path, size, digest) triples, canonically encoded."""
    return canonical_digest(
        sorted(([e.path, e.size, e.digest] for e in entries), key=lambda t: (t[0], t[2]))
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


def data_manifest(path: Path, cache: StatCache | None = None) -> list[ManifestEntry]:
    """Manifest of a local file or directory of data, with writer bookkeeping normalized away."""
    path = Path(path)
    if path.is_file():
        return [ManifestEntry(path.name, path.stat().st_size, hash_file(path, cache))]
    entries = []
    for rel, p in walk_files(path):
        name = normalize_data_path(rel)
        if name is not None:
            entries.append(ManifestEntry(name, p.stat().st_size, hash_file(p, cache)))
    return entries


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


