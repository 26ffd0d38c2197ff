"""What determines a step's result, hashed: file digests, the stat cache, manifests, fingerprints.

This module is deliberately free of Dagster imports: the cache key is a small pure function of its
components, testable on its own (the Hamilton pattern).
"""

from __future__ import annotations

import os
import re
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import pathspec

#: Bumped whenever the encoding or the set of components changes, so old ledgers never match.
FINGERPRINT_VERSION = 2

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
    """Remembers file digests keyed by (device, inode, size, mtime_ns, ctime_ns).

    An unchanged file then costs one ``stat``. Stored in SQLite so that several step processes
    (the multiprocess executor) can share it safely.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS stat_cache (dev INTEGER, ino INTEGER, size INTEGER,"
            " mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT, recorded_ns INTEGER,"
            " PRIMARY KEY (dev, ino))"
        )

    def lookup(self, st: os.stat_result) -> str | None:
        """The cached digest for a file with this stat, or None when unknown or racily clean."""
        row = self._conn.execute(
            "SELECT size, mtime_ns, ctime_ns, digest, recorded_ns FROM stat_cache"
            " WHERE dev = ? AND ino = ?",
            (st.st_dev, st.st_ino),
        ).fetchone()
        if row is None:
            return None
        size, mtime_ns, ctime_ns, digest, recorded_ns = row
        if (size, mtime_ns, ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        if recorded_ns - mtime_ns < RACY_WINDOW_NS:
            return None
        return digest

    def store(self, st: os.stat_result, digest: str) -> None:
        """Record a digest for a file with this stat."""
        self._conn.execute(
            "INSERT OR REPLACE INTO stat_cache VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                st.st_dev,
                st.st_ino,
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


def hash_file(path: Path | str, cache: StatCache | None = None) -> str:
    """BLAKE3 hex digest of a file's bytes, answered from the stat cache when it can be trusted."""
    path = Path(path)
    st = path.stat()
    if cache is not None:
        cached = cache.lookup(st)
        if cached is not None:
            return cached
    digest = _hash_file_uncached(path, st.st_size)
    if cache is not None:
        cache.store(st, digest)
    return digest


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


def imported_modules(py_file: Path) -> set[str]:
    """Top-level and dotted module names a Python file imports (statically)."""
    import ast

    try:
        tree = ast.parse(py_file.read_bytes(), filename=str(py_file))
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def code_manifest(
    source_directory: Path,
    hash_paths: Iterable[Path] = (),
    cache: StatCache | None = None,
    sibling_scripts: Iterable[str] = (),
) -> dict[str, str]:
    """Digest of every file that makes up a step's code, keyed by a readable path.

    Files of the source directory are keyed by their path relative to it; extra ``hash_paths``
    (files or directories outside it) by their absolute path. ``sibling_scripts`` are other
    steps' entry scripts in the same directory: they are left out unless this step's code
    imports them, so editing ``train.py`` does not rerun ``dataprep`` beside it.
    """
    source_directory = Path(source_directory)
    listed = walk_files(source_directory, ignore_spec(source_directory))
    siblings = set(sibling_scripts)
    if siblings:
        imported: set[str] = set()
        for rel, p in listed:
            if rel.endswith(".py") and rel not in siblings:
                imported |= imported_modules(p)
        module_of = {s: s.removesuffix(".py").replace("/", ".") for s in siblings}
        listed = [
            (rel, p)
            for rel, p in listed
            if rel not in siblings or module_of[rel] in imported
        ]
    files = {rel: hash_file(p, cache) for rel, p in listed}
    for extra in hash_paths:
        extra = Path(extra).resolve()
        if extra.is_dir():
            for rel, p in walk_files(extra, ignore_spec(extra)):
                files[f"{extra.as_posix()}/{rel}"] = hash_file(p, cache)
        else:
            files[extra.as_posix()] = hash_file(extra, cache)
    return files


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


def canonical_digest(value: Any) -> str:
    """BLAKE3 digest of a value's canonical, versioned encoding."""
    out: list[bytes] = [f"aml-fingerprint/v{FINGERPRINT_VERSION}\0".encode()]
    _encode(value, out)
    return hash_bytes(b"".join(out))


@dataclass
class StepFingerprint:
    """Everything that determines a step's result, grouped so a change can be named.

    Groups: ``code`` (path -> digest), ``arguments`` (the symbolic argument list), ``parameters``
    (name -> value), ``inputs`` (dataset name -> content digest), ``environment`` and ``settings``.
    """

    step: str
    code: dict[str, str] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def components(self) -> dict[str, Any]:
        """The groups as one plain dict (what the ledger stores)."""
        return {
            "format": FINGERPRINT_VERSION,
            "step": self.step,
            "code": self.code,
            "arguments": self.arguments,
            "parameters": self.parameters,
            "inputs": self.inputs,
            "environment": self.environment,
            "settings": self.settings,
        }

    @property
    def digest(self) -> str:
        """The fingerprint itself."""
        return canonical_digest(self.components())


def _describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def explain_difference(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], code_label: Callable[[str], str] = str
) -> list[str]:
    """Name every component that differs between two fingerprints' components, in plain words.

    ``code_label`` turns a code path into what a user recognizes (e.g. ``code/train.py``).
    """
    if old is None:
        return ["no previous run"]
    if old.get("format", 1) != new.get("format", 1):
        return [
            f"the fingerprint format changed (v{old.get('format', 1)} -> v{new.get('format', 1)}) "
            "with an aml-assets upgrade; each step reruns once"
        ]
    reasons: list[str] = []
    old_code, new_code = old.get("code", {}), new.get("code", {})
    for path in sorted(set(old_code) | set(new_code)):
        if path not in old_code:
            reasons.append(f"script {code_label(path)} was added")
        elif path not in new_code:
            reasons.append(f"script {code_label(path)} was removed")
        elif old_code[path] != new_code[path]:
            reasons.append(f"script {code_label(path)} changed")
    old_inputs, new_inputs = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(name) != new_inputs.get(name):
            verb = "changed" if name in old_inputs and name in new_inputs else (
                "was added" if name in new_inputs else "was removed"
            )
            reasons.append(f"input {name} {verb}")
    old_params, new_params = old.get("parameters", {}), new.get("parameters", {})
    for name in sorted(set(old_params) | set(new_params)):
        if old_params.get(name, "<unset>") != new_params.get(name, "<unset>"):
            reasons.append(
                f"parameter {name} changed ({_describe_value(old_params.get(name, '<unset>'))}"
                f" -> {_describe_value(new_params.get(name, '<unset>'))})"
            )
    if old.get("arguments") != new.get("arguments"):
        reasons.append(
            f"arguments changed ({_describe_value(old.get('arguments'))}"
            f" -> {_describe_value(new.get('arguments'))})"
        )
    for group in ("environment", "settings"):
        old_g, new_g = old.get(group, {}), new.get(group, {})
        for key in sorted(set(old_g) | set(new_g)):
            if old_g.get(key) != new_g.get(key):
                reasons.append(
                    f"{group} {key} changed ({_describe_value(old_g.get(key))}"
                    f" -> {_describe_value(new_g.get(key))})"
                )
    if old.get("step") != new.get("step"):
        reasons.append(f"step name changed ({old.get('step')} -> {new.get('step')})")
    return reasons
