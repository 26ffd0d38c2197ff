"""Where bytes live: datastores over fsspec, with atomic publish and exclusive create.

A datastore is a Dagster ``ConfigurableResource``. Every path a user gives is relative to the
datastore's root and may not escape it. Two primitives make outputs trustworthy on any store:

- ``publish_dir``: a finished local directory becomes visible under a new path in one step
  (a rename on a local disk; an upload to a fresh, never-reused prefix on object storage);
- ``create_exclusive``: a small record (a commit marker, a dataset version) is written atomically
  and never overwrites an existing one (hard link on a local disk; ``If-None-Match: *`` on blob).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import platformdirs
from dagster import ConfigurableResource
from pydantic import Field

from aml_assets.data import layout
from aml_assets.data.content import ManifestEntry, StatCache, data_manifest
from aml_assets.errors import DatastoreError

DEFAULT_ROOT_ENV = "AML_DATASTORE_ROOT"
CACHE_DIR_ENV = "AML_CACHE_DIR"


def default_local_root() -> Path:
    """``$AML_DATASTORE_ROOT`` if set, else ``~/.local/share/aml-assets/datastore`` (per platform)."""
    configured = os.environ.get(DEFAULT_ROOT_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(platformdirs.user_data_dir("aml-assets")) / "datastore"


def default_cache_dir() -> Path:
    """``$AML_CACHE_DIR`` if set, else the platform's user cache folder for aml-assets."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path(platformdirs.user_cache_dir("aml-assets"))


def default_work_dir() -> Path:
    """Where steps' private local folders live (input copies, scratch for remote stores), so
    ``aml-assets gc`` finds what a killed step left behind."""
    work = default_cache_dir() / "work"
    work.mkdir(parents=True, exist_ok=True)
    return work


def open_stat_cache() -> StatCache:
    """The machine's stat cache (file digests keyed by stat)."""
    return StatCache(default_cache_dir() / "stat-cache.sqlite")


def check_relative_path(datastore: str, rel: str) -> str:
    """Normalize a datastore-relative path, refusing any that escapes the root."""
    if not isinstance(rel, str) or rel.strip() == "":
        raise DatastoreError(
            f"Datastore '{datastore}': empty path. Give a path relative to the datastore root, "
            "e.g. 'titanic/titanic.csv'."
        )
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or "://" in rel:
        raise DatastoreError(
            f"Datastore '{datastore}': path '{rel}' escapes the datastore root. Use a path "
            "relative to the root without '..' or a scheme, e.g. 'titanic/titanic.csv'."
        )
    return posix.as_posix().strip("/")


class Datastore(ConfigurableResource, ABC):
    """Where data lives. Paths given to every method are relative to the datastore's root."""

    name: str = Field(default="workspace", description="Name shown in logs and errors.")

    # --- what an implementation provides -------------------------------------------------
    @abstractmethod
    def filesystem(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem behind this datastore."""

    @abstractmethod
    def root_path(self) -> str:
        """The root as a path on ``filesystem()`` (no scheme)."""

    @abstractmethod
    def uri(self, rel: str = "") -> str:
        """A URI for a path (``file:///...`` or ``abfs://container/...``), safe to show."""

    @abstractmethod
    def _create_exclusive(self, rel: str, data: bytes) -> bool:
        """Atomically create a small file; False (and no change) if it already exists."""

    @abstractmethod
    def _put(self, rel: str, data: bytes) -> None:
        """Atomically create or replace a small file: a reader sees the old or the new bytes."""

    @abstractmethod
    def publish_dir(self, local_dir: Path, rel: str) -> None:
        """Make a finished local directory visible at ``rel`` (which must not exist yet)."""

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for readers such as pandas/pyarrow (``storage_options=``)."""
        return {}

    def local_path(self, rel: str) -> Path | None:
        """A local path that reads the data in place, or None if the store is remote."""
        return None

    def scratch_dir(self, label: str) -> Path:
        """A fresh local directory for a step to write into before its outputs are published."""
        return Path(tempfile.mkdtemp(prefix=f"aml-{label}-scratch-", dir=default_work_dir()))

    def manifest(self, rel: str, cache: StatCache | None = None) -> list[ManifestEntry]:
        """Content manifest of a file or directory, using the store's checksums when remote."""
        fs, full = self.filesystem(), self.path(rel)
        info = self._info(rel)
        items = [info] if info["type"] == "file" else list(fs.find(full, detail=True).values())
        entries = []
        for item in items:
            rel_name = (
                PurePosixPath(item["name"]).name
                if info["type"] == "file"
                else PurePosixPath(item["name"]).relative_to(full.strip("/")).as_posix()
            )
            entries.append(ManifestEntry(rel_name, int(item.get("size") or 0), _remote_digest(item)))
        return entries

    # --- generic operations over fsspec ---------------------------------------------------
    def _nothing_at(self, rel: str, where: object) -> DatastoreError:
        return DatastoreError(
            f"Datastore '{self.name}': nothing at '{rel}' ({where}). Check the path, or upload "
            "the data first (Datastore.upload_files)."
        )

    def path(self, rel: str) -> str:
        """The full filesystem path of a datastore-relative path."""
        rel = check_relative_path(self.name, rel)
        return f"{self.root_path().rstrip('/')}/{rel}"

    def _info(self, rel: str) -> dict[str, Any]:
        try:
            return self.filesystem().info(self.path(rel))
        except FileNotFoundError as exc:
            raise self._nothing_at(rel, self.uri(rel)) from exc

    def exists(self, rel: str) -> bool:
        """Whether a file or directory exists at ``rel``."""
        fs = self.filesystem()
        full = self.path(rel)
        fs.invalidate_cache(full)
        return fs.exists(full)

    def is_dir(self, rel: str) -> bool:
        """Whether ``rel`` is a directory (a prefix, on object storage)."""
        return self.filesystem().isdir(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of a file."""
        try:
            return self.filesystem().cat_file(self.path(rel))
        except FileNotFoundError as exc:
            raise DatastoreError(
                f"Datastore '{self.name}': no file at '{rel}' ({self.uri(rel)})."
            ) from exc

    def _refuse_protected(self, rel: str, action: str) -> None:
        rel_path = check_relative_path(self.name, rel)
        if layout.is_protected(rel_path) or (action == "delete" and self._holds_records(rel_path)):
            raise DatastoreError(
                f"Datastore '{self.name}': cannot {action} '{rel}': it holds records aml-assets "
                "manages (published step outputs, the reuse ledger, registered dataset versions), "
                "which are never rewritten or removed by hand. Delete a version with "
                "DatasetRegistry.delete_version(..., force=True) (CLI: aml-assets datasets delete "
                "--force); remove unused step outputs with 'aml-assets gc'."
            )

    def _holds_records(self, rel: str) -> bool:
        """Whether deleting the folder ``rel`` would delete registered versions or tombstones
        (``datasets`` itself, or ``datasets/<name>``)."""
        parts = rel.split("/")
        if parts[0] != layout.DATASETS or len(parts) > 2:
            return False
        names = [parts[1]] if len(parts) == 2 else self.list_dir(layout.DATASETS)
        return any(
            self.list_dir(layout.versions_dir(name)) or self.list_dir(layout.tombstones_dir(name))
            for name in names
        )

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write (or replace) a small file atomically. Refused for aml-assets' own records."""
        self._refuse_protected(rel, "write")
        self._put(rel, data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Atomically create a small file; False (and no change) if it already exists."""
        self._refuse_protected(rel, "create")
        return self._create_exclusive(rel, data)

    # Records aml-assets itself writes (ledger, registry): the same primitives, unguarded.
    def _write_record(self, rel: str, data: bytes) -> None:
        self._put(rel, data)

    def _create_record(self, rel: str, data: bytes) -> bool:
        return self._create_exclusive(rel, data)

    def _delete_record(self, rel: str) -> None:
        self._remove(rel)

    def list_dir(self, rel: str) -> list[str]:
        """Names directly below ``rel`` (empty if it does not exist)."""
        fs = self.filesystem()
        full = self.path(rel)
        fs.invalidate_cache(full)
        if not fs.exists(full):
            return []
        return sorted(PurePosixPath(p).name for p in fs.ls(full, detail=False))

    def delete(self, rel: str) -> None:
        """Delete a file or directory tree. Refused for aml-assets' own records."""
        self._refuse_protected(rel, "delete")
        self._remove(rel)

    def _remove(self, rel: str) -> None:
        fs = self.filesystem()
        full = self.path(rel)
        if fs.exists(full):
            fs.rm(full, recursive=True)
        fs.invalidate_cache(full)

    def upload_files(
        self, files: Iterable[Path | str], target_path: str, overwrite: bool = False
    ) -> list[str]:
        """Upload local files under ``target_path`` (like Azure's ``datastore.upload_files``)."""
        written = []
        for f in files:
            f = Path(f)
            if not f.is_file():
                raise DatastoreError(f"Cannot upload '{f}' to datastore '{self.name}': no such file.")
            rel = f"{check_relative_path(self.name, target_path)}/{f.name}"
            self._refuse_protected(rel, "upload to")
            if not overwrite and self.exists(rel):
                raise DatastoreError(
                    f"Datastore '{self.name}' already has '{rel}'. Pass overwrite=True to replace it."
                )
            fs = self.filesystem()
            fs.makedirs(str(PurePosixPath(self.path(rel)).parent), exist_ok=True)
            fs.put_file(str(f), self.path(rel))
            written.append(rel)
        return written

    def download(self, rel: str, local_dir: Path) -> Path:
        """Copy a file or directory to ``local_dir``; returns the local copy's path."""
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        info = self._info(rel)
        fs, full = self.filesystem(), self.path(rel)
        target = local_dir / PurePosixPath(rel).name
        if info["type"] == "file":
            fs.get_file(full, str(target))
            return target
        sources = fs.find(full)
        dests = [str(target / PurePosixPath(src).relative_to(full)) for src in sources]
        for dest in dests:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)
        if sources:
            fs.get(sources, dests)  # one call: stores that can fetch concurrently do
        return target


def _remote_digest(item: dict[str, Any]) -> str:
    """A content identity for a remote object: its MD5 when the store keeps one, else its ETag."""
    settings = item.get("content_settings") or {}
    md5 = settings.get("content_md5") if isinstance(settings, dict) else getattr(settings, "content_md5", None)
    if md5:
        return "md5:" + (bytes(md5).hex() if not isinstance(md5, str) else md5)
    etag = item.get("etag") or item.get("ETag")
    if etag:
        return "etag:" + str(etag).strip('"')
    raise DatastoreError(
        f"Object '{item.get('name')}' has neither a content MD5 nor an ETag, so its content "
        "cannot be fingerprinted without downloading it."
    )


class LocalDatastore(Datastore):
    """A folder on this machine: the embedded default, zero set-up.

    Example (the Dagster UI shows this text as the resource's description):

        Definitions(resources={"workspace": LocalDatastore(root="/data/aml")})
    """

    root: str | None = Field(
        default=None,
        description=(
            "Folder that holds the data. Unset: $AML_DATASTORE_ROOT, else "
            "~/.local/share/aml-assets/datastore."
        ),
    )

    def root_dir(self) -> Path:
        """The root folder, created on first use."""
        root = Path(self.root).expanduser().resolve() if self.root else default_local_root()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def filesystem(self) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem("file")

    def root_path(self) -> str:
        return self.root_dir().as_posix()

    def uri(self, rel: str = "") -> str:
        return (self.root_dir() / check_relative_path(self.name, rel)).as_uri() if rel else self.root_dir().as_uri()

    def local_path(self, rel: str) -> Path:
        return self.root_dir() / check_relative_path(self.name, rel)

    def scratch_dir(self, label: str) -> Path:
        # On the datastore's own filesystem, so publishing is a rename, not a copy.
        scratch = self.root_dir() / layout.TMP
        scratch.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=scratch))

    def manifest(self, rel: str, cache: StatCache | None = None) -> list[ManifestEntry]:
        path = self.local_path(rel)
        if not path.exists():
            raise self._nothing_at(rel, path)
        return data_manifest(path, cache)

    def download(self, rel: str, local_dir: Path) -> Path:
        # A real copy (never a link: a script may write to its download), made by the kernel
        # (shutil uses sendfile/copy_file_range) instead of fsspec's Python read/write loop.
        source = self.local_path(rel)
        if not source.exists():
            raise self._nothing_at(rel, source)
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        target = local_dir / source.name
        if source.is_file():
            shutil.copyfile(source, target)
        else:
            shutil.copytree(source, target, copy_function=shutil.copyfile, dirs_exist_ok=True)
        return target

    def _put(self, rel: str, data: bytes) -> None:
        # Temp file + rename: a crash or a full disk leaves the old file or the new one, never
        # a truncated one (an emptied record once broke every later run).
        self._write_via_temp(rel, data, os.replace)

    def _write_via_temp(self, rel: str, data: bytes, install: Callable[[Path, Path], None]) -> None:
        """Write ``data`` beside the target, then ``install(tmp, target)`` it in one step."""
        target = self.local_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with self._disk_errors(rel):
                tmp.write_bytes(data)
                install(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _disk_errors(self, rel: str) -> Iterator[None]:
        """A full disk (or quota) becomes an error that names the store, the path and the fix."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DatastoreError(
                f"Datastore '{self.name}': no space left on the disk holding {self.root_dir()} "
                f"while writing '{rel}'. Nothing was committed or registered; free some space "
                "('aml-assets gc' removes what failed steps left behind) and run again."
            ) from exc

    def _remove(self, rel: str) -> None:
        target = self.local_path(rel)
        if target.is_dir() and not target.is_symlink():
            make_writable(target)  # published outputs are read-only
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def _create_exclusive(self, rel: str, data: bytes) -> bool:
        try:
            # link() fails if the target exists, and the target appears complete or not at all.
            self._write_via_temp(rel, data, os.link)
            return True
        except FileExistsError:
            return False

    def publish_dir(self, local_dir: Path, rel: str) -> None:
        target = self.local_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Files become read-only before they are visible; folders after the rename (moving a
        # folder to a new parent needs write permission on it, to update its '..').
        make_read_only(local_dir, folders=False)
        try:
            with self._disk_errors(rel):
                os.rename(local_dir, target)
        except OSError:
            if target.exists():
                raise DatastoreError(
                    f"Datastore '{self.name}': '{rel}' already exists; published data is never "
                    "overwritten."
                ) from None
            # Different filesystem (scratch given by the caller): copy, then rename into place.
            staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.staging"
            shutil.copytree(local_dir, staging)
            os.rename(staging, target)
            make_writable(local_dir)
            shutil.rmtree(local_dir, ignore_errors=True)
        make_read_only(target)


def make_read_only(root: Path, folders: bool = True) -> None:
    """Drop write permission on a published tree (files 0444, folders 0555), as Nix's store does.

    This stops any non-root writer; for root, steps receive inputs through a read-only view (see
    ``aml_assets.compute.isolation``), and every reuse re-verifies content against its record.
    """
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
    if not folders:
        return
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o555)
    os.chmod(root, 0o555)


def make_writable(root: Path) -> None:
    """Give the owner write permission on a tree again (before deleting it)."""
    os.chmod(root, 0o755)
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
