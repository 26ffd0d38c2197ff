"""Saved data is read-only to steps, even to a step running as root.

Published outputs are chmod 0444/0555 (``make_read_only``), which stops any non-root writer. A
script step reading saved data in place (mount, direct, tabular inputs on a local datastore)
could still change it as root, so its process gets a view in which those paths are read-only:
the supervisor's child (single-threaded, before the script runs) enters a private mount
namespace and bind-mounts each path read-only onto itself. Where that is impossible (not Linux,
no CAP_SYS_ADMIN), a root step receives private copies instead (``private_copies``); a non-root
step relies on the permission bits.

A Spark step runs in the Dagster process and cannot be isolated: ``snapshot`` before the script
and ``changes`` after it find an in-place input that was modified, and the step fails.

This module imports the standard library only: the script process imports it before anything
else, and ``python -I -S isolation.py --probe DIR`` is the capability probe.
"""

from __future__ import annotations

import ctypes
import os
import sys

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing alone costs milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

# Only what a script process needs before its script runs is imported at the top (the probe
# and the launcher import this module; each millisecond is paid on every step).

#: Paths the script must see read-only (JSON list); the same name as ``amlrun.launch.READONLY_ENV``.
READONLY_ENV = "AML_READONLY_PATHS"
#: ``copy`` forces private copies even where a read-only view is possible (tests, odd kernels).
MODE_ENV = "AML_READONLY_ISOLATION"

_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME = 16384, 1 << 18, 1 << 21
# statvfs f_flag bits -> the mount flags a read-only remount must keep (else EPERM when locked).
_KEEP = {1 << 1: _MS_NOSUID, 1 << 2: _MS_NODEV, 1 << 3: _MS_NOEXEC, 1 << 10: _MS_NOATIME,
         1 << 11: _MS_NODIRATIME, 1 << 12: _MS_RELATIME}


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_readonly_view(paths: Iterable[str]) -> None:
    """Enter a private mount namespace in which every path in ``paths`` is read-only.

    Call in a single-threaded process before it starts the script: the view is inherited by
    everything the script starts, and the rest of the system is unaffected.
    """
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Private, so the read-only binds never propagate back to the host's mounts.
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    for path in dict.fromkeys(os.path.realpath(p) for p in paths):
        if not os.path.exists(path):
            continue
        raw = os.fsencode(path)
        _check(libc.mount(raw, raw, None, _MS_BIND | _MS_REC, None), f"bind {path}")
        keep = os.statvfs(path).f_flag
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        for bit, flag in _KEEP.items():
            if keep & bit:
                flags |= flag
        _check(libc.mount(None, raw, None, flags, None), f"remount {path} read-only")


def _probe_in(folder: str) -> int:
    """In a fresh process: 0 when a read-only view works (a write is refused), else 1."""
    import errno

    try:
        enter_readonly_view([folder])
        with open(os.path.join(folder, "probe"), "w"):
            pass
    except OSError as exc:
        return 0 if exc.errno == errno.EROFS else 1
    return 1


_probed: list[bool] = []


def _probe_result() -> bool:
    if not _probed:
        _probed.append(_probe())
    return _probed[0]


def _probe() -> bool:
    import subprocess
    import tempfile

    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory(prefix="aml-isolation-probe-") as folder:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-S", __file__, "--probe", folder],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            return False
    return done.returncode == 0


def can_isolate() -> bool:
    """Whether a script process can get a read-only view of its inputs here (probed once)."""
    if os.environ.get(MODE_ENV, "").strip().lower() == "copy":
        return False
    return _probe_result()


def needs_copies() -> bool:
    """Whether saved inputs must be delivered as private copies: root, without a read-only view.

    A non-root step is stopped by the read-only permission bits of published data.
    """
    return hasattr(os, "geteuid") and os.geteuid() == 0 and not can_isolate()


def private_copies(paths: Iterable[str], dest: Path) -> dict[str, str]:
    """Copy each path (a file or a folder) under ``dest``; returns original -> copy."""
    import shutil
    from pathlib import Path

    out: dict[str, str] = {}
    for i, path in enumerate(dict.fromkeys(paths)):
        src = Path(path)
        target = dest / f"{i}" / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, copy_function=shutil.copyfile)
        elif src.exists():
            shutil.copyfile(src, target)
        else:
            continue
        out[path] = str(target)
    return out


# --- in-process steps: detect a change instead ----------------------------------------------------
Snapshot = dict[str, dict[str, tuple[int, ...]]]


def _stat_entry(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _snapshot_one(path: str) -> dict[str, tuple[int, ...]]:
    try:
        st = os.stat(path)
    except OSError:
        return {}
    entries = {".": _stat_entry(st)}
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                try:
                    entries[os.path.relpath(full, path)] = _stat_entry(os.lstat(full))
                except OSError:
                    pass
    return entries


def snapshot(paths: Iterable[str]) -> Snapshot:
    """What each path looks like (stat of every file and folder under it), to compare later."""
    return {path: _snapshot_one(path) for path in dict.fromkeys(paths)}


def changes(before: Snapshot) -> dict[str, list[str]]:
    """Path -> what changed under it since ``before`` (only paths that changed)."""
    out: dict[str, list[str]] = {}
    for path, then in before.items():
        now = _snapshot_one(path)
        found = [f"added {k}" for k in sorted(now.keys() - then.keys())]
        found += [f"removed {k}" for k in sorted(then.keys() - now.keys())]
        found += [f"changed {k}" for k in sorted(then.keys() & now.keys()) if then[k] != now[k]]
        if found:
            out[path] = found
    return out


def input_names(paths: Iterable[str], inputs: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """Path -> the name of the input delivered there (for messages)."""
    by_path = {str(h.get("path")): name for name, h in inputs.items()}
    return {p: by_path.get(p, "?") for p in paths}


if __name__ == "__main__" and sys.argv[1:2] == ["--probe"]:
    sys.exit(_probe_in(sys.argv[2]))
