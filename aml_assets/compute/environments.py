"""Per-step Python environments: resolved to a lock with uv, built once per lock, shared.

A step asks for packages (``Environment(pip=["scikit-learn==1.5.2"], python="3.11")``). Two
steps turn that request into an interpreter:

- ``resolve``: the request becomes a **lock** (``uv pip compile``: every package pinned). The lock
  is recorded (on the workspace datastore, ``_environments/locks/<request_digest>.json``, else
  under ``environments_root()/locks``) and reused for the same request until ``refresh=True``,
  so an unpinned request resolved today still means the same packages next month. The
  environment's **key** is the hash of the lock, the exact Python version, the platform and the
  script-side runtime pin (``dagster-pipes``): two requests resolving to the same packages share
  one environment, and any change to what would be installed is a new key.
- ``ensure_built``: the environment ``<root>/<key>/`` is built at most once per machine.
  ``uv venv --relocatable`` then ``uv pip sync`` (exactly the lock, plus ``dagster-pipes``) into
  a private folder under ``<root>/.tmp/``, a marker written last, then one ``os.rename``: a reader
  sees a complete environment or none. An ``fcntl`` lock per key makes concurrent builders of
  one key (threads, processes, runs) build it once; the others wait and reuse it. A failed build
  removes its folder and raises ``EnvironmentBuildError`` naming the step, the package and uv's
  message. An existing key costs one ``stat`` (and a ``utime`` recording its use): no uv call.

Network: resolving a new request asks the package index (falling back to uv's cache when the
index is unreachable); building from a lock tries uv's cache first (``--offline``) and goes to
the index only for packages the cache lacks. ``AML_OFFLINE=1`` (or uv's own ``UV_OFFLINE=1``)
never uses the network; an error then says which package is missing from uv's cache.

Environments live in ``$AML_ENV_DIR``, else the user's cache folder (``~/.cache/aml-assets/envs``,
honouring ``XDG_CACHE_HOME``), deliberately *not* under ``$AML_CACHE_DIR``: an environment is
addressed by its full content, so it is safe to share between projects, datastores and test
runs, and building one costs seconds (uv's own cache, hard-linked into it, is shared the same way).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from aml_assets.data import layout
from aml_assets.data.content import hash_bytes
from aml_assets.errors import AmlAssetsError, DatastoreError

if TYPE_CHECKING:
    from aml_assets.data.datastore import Datastore

ENV_DIR_ENV = "AML_ENV_DIR"
OFFLINE_ENV = "AML_OFFLINE"
#: Written last into a complete environment: its description. A folder without it is never used.
MARKER = ".aml-env.json"
#: The script-side runtime every environment gets (``amlrun`` itself reaches scripts on PYTHONPATH).
RUNTIME_PACKAGES = ("dagster-pipes",)
_KEY_LENGTH = 32  # hex characters (128 bits) of the content address
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,2}$")
_LOCK_LINE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(==|@)\s*([^\s;\\]+)")
_INCLUDE_RE = re.compile(r"^\s*(?:-r|--requirement|-c|--constraint)[\s=]+(\S+)")
_NETWORK_FAILURES = (
    "Failed to fetch",
    "error sending request",
    "tcp connect error",
    "dns error",
    "Network is unreachable",
    "timed out",
    "Connection refused",
)
_CACHE_MISSES = ("not found in the cache", "network was disabled", "Network connectivity is disabled")

_log = logging.getLogger(__name__)


class EnvironmentBuildError(AmlAssetsError):
    """A step's environment could not be resolved or built; names the step, the package and
    the resolver's message."""

    def __init__(self, message: str, *, step: str | None, package: str | None, resolver_message: str):
        self.step = step
        self.package = package
        self.resolver_message = resolver_message
        super().__init__(message)


# --- the request ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Environment:
    """The Python environment a step's script runs in.

    ``pip`` (requirement strings) and ``requirements_file`` ask for an isolated environment,
    resolved and locked with uv and built once per lock; ``python="3.11"`` asks for that Python
    version (uv finds it, or installs it). ``env_vars`` are set in the script's process.
    ``refresh=True`` re-resolves instead of using the recorded lock.

    Legacy, for steps without an isolated environment: ``packages`` are names whose *installed*
    versions join the step's fingerprint; ``python`` as a path or command name (``"python3"``)
    runs the script with that interpreter (it needs ``dagster-pipes`` importable).

    >>> Environment(pip=("scikit-learn==1.5.2", "pandas>=2"), python="3.11").isolated
    True
    """

    packages: tuple[str, ...] = ()
    python: str | None = None
    pip: tuple[str, ...] = ()
    requirements_file: str | Path | None = None
    name: str | None = None
    env_vars: tuple[tuple[str, str], ...] | Mapping[str, str] = ()
    refresh: bool = False

    def __post_init__(self) -> None:
        # Frozen and hashable: lists become tuples, a dict of env_vars sorted pairs; a
        # requirements file is resolved where the environment is declared (never a later cwd).
        object.__setattr__(self, "packages", tuple(self.packages))
        object.__setattr__(self, "pip", tuple(str(p).strip() for p in self.pip if str(p).strip()))
        pairs = self.env_vars.items() if isinstance(self.env_vars, Mapping) else self.env_vars
        object.__setattr__(self, "env_vars", tuple(sorted((str(k), str(v)) for k, v in pairs)))
        if self.requirements_file is not None:
            object.__setattr__(
                self, "requirements_file", Path(self.requirements_file).expanduser().resolve()
            )
        if self.python is not None and not str(self.python).strip():
            raise ValueError("Environment(python=...) is empty; give a version such as '3.11' or leave it out.")

    @property
    def python_is_version(self) -> bool:
        """Whether ``python`` names a version for uv to provide (``"3.11"``), not an interpreter."""
        return bool(self.python and _VERSION_RE.match(self.python.strip()))

    @property
    def isolated(self) -> bool:
        """Whether the step runs in a built environment (pip, a requirements file, or a Python
        version)."""
        return bool(self.pip or self.requirements_file or self.python_is_version)

    def requirements_text(self) -> str:
        """The requirements as resolved: the ``pip`` lines, then the requirements file's content
        (and the content of the files it includes with ``-r``/``-c``)."""
        parts = list(self.pip)
        if self.requirements_file is not None:
            parts.extend(_requirements_content(Path(self.requirements_file), seen=set()))
        return "\n".join(parts)

    def request_digest(self) -> str:
        """Hash of the unresolved request: the requirements (file *content*, not its path), the
        Python asked for (``None``: this interpreter's minor version) and the platform, which a
        resolution depends on. ``name``, ``env_vars`` and ``refresh`` are not part of it."""
        python = self.python.strip() if self.python else f"current:{_minor(platform.python_version())}"
        body = {"requirements": self.requirements_text(), "python": python, "platform": platform_tag()}
        return hash_bytes(json.dumps(body, sort_keys=True).encode())[:_KEY_LENGTH]

    def env_var_dict(self) -> dict[str, str]:
        """``env_vars`` as a dict."""
        return dict(self.env_vars)  # type: ignore[arg-type]

    def describe(self) -> str:
        """How a user names this environment in a message."""
        if self.name:
            return f"environment '{self.name}'"
        what = ", ".join(self.pip) or (str(self.requirements_file) if self.requirements_file else "")
        return f"environment ({what or 'python ' + str(self.python)})"


def _requirements_content(path: Path, seen: set[Path]) -> list[str]:
    if path in seen:
        return []
    seen.add(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise EnvironmentBuildError(
            f"Cannot read requirements file '{path}': {exc}. Check the path given as "
            "Environment(requirements_file=...) (relative paths are resolved where the "
            "environment is declared).",
            step=None, package=None, resolver_message=str(exc),
        ) from exc
    lines = [f"# {path.name}", text]
    for line in text.splitlines():
        included = _INCLUDE_RE.match(line)
        if included:
            lines.extend(_requirements_content((path.parent / included.group(1)).resolve(), seen))
    return lines


# --- the resolution --------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedEnvironment:
    """A request resolved to a lock: what would be installed, and where it is built."""

    key: str
    lock: str
    packages: dict[str, str]
    python_version: str
    env_vars: dict[str, str] = field(default_factory=dict)
    #: The base interpreter to build from (a path); None or missing: any ``python_version``.
    base_python: str | None = None
    #: The runtime pins installed beside the lock (``dagster-pipes==...``); part of the key.
    runtime: tuple[str, ...] = ()

    def interpreter(self, root: Path | None = None) -> Path:
        """``<root>/<key>/bin/python`` (the environment may not be built yet)."""
        return Path(root or environments_root()) / self.key / "bin" / "python"

    def describe(self) -> str:
        """``key (six 1.17.0, attrs 26.1.0; Python 3.11.7)``, for logs."""
        shown = ", ".join(f"{n} {v}" for n, v in sorted(self.packages.items())[:6])
        more = f" and {len(self.packages) - 6} more" if len(self.packages) > 6 else ""
        return f"{self.key[:12]} ({shown}{more}; Python {self.python_version})"


def environments_root() -> Path:
    """``$AML_ENV_DIR``, else ``<user cache>/aml-assets/envs`` (independent of ``$AML_CACHE_DIR``,
    see the module's docstring)."""
    configured = os.environ.get(ENV_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("aml-assets")) / "envs"


def platform_tag() -> str:
    """The platform a lock and an environment are for, e.g. ``cpython-linux-x86_64``."""
    return f"{sys.implementation.name}-{sysconfig.get_platform()}"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def normalize_name(name: str) -> str:
    """PEP 503 normalised project name (``Scikit_Learn`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_packages(lock: str) -> dict[str, str]:
    """Normalised name -> version (or URL) of every package pinned in a lock."""
    found: dict[str, str] = {}
    for line in lock.splitlines():
        match = _LOCK_LINE_RE.match(line.strip())
        if match:
            found[normalize_name(match.group(1))] = match.group(3)
    return found


def environment_key(lock: str, python_version: str, platform: str, runtime: Sequence[str]) -> str:
    """The content address of an environment: what is installed, for which Python and platform."""
    body = {"lock": lock.strip(), "python": python_version, "platform": platform, "runtime": list(runtime)}
    return hash_bytes(json.dumps(body, sort_keys=True).encode())[:_KEY_LENGTH]


def runtime_pins() -> tuple[str, ...]:
    """``dagster-pipes==<the version installed here>``: scripts talk to this process with it."""
    from importlib.metadata import version

    return tuple(f"{name}=={version(name)}" for name in RUNTIME_PACKAGES)


def resolve(
    env: Environment, *, store: Datastore | None = None, step: str | None = None, log: Any = None
) -> ResolvedEnvironment:
    """The environment's lock (recorded for its request, or resolved now with uv and recorded)
    and its key. Builds nothing."""
    log = log or _log
    digest = env.request_digest()
    rel = layout.environment_lock_record(digest)
    where = store.uri(rel) if store is not None else str(environments_root() / "locks" / f"{digest}.json")
    record = None if env.refresh else _read_lock_record(rel, digest, store)
    if record is None:
        started = time.perf_counter()
        record = _resolve_with_uv(env, digest, step)
        record = _write_lock_record(rel, digest, record, store, replace=env.refresh)
        log.info(
            f"{_who(step)}resolved {env.describe()} to {len(lock_packages(record['lock']))} "
            f"package(s) in {time.perf_counter() - started:.1f} s; lock recorded at {where}."
        )
    runtime = runtime_pins()
    lock = record["lock"]
    python_version, base_python = record["python_version"], record.get("base_python")
    if not env.python_is_version:
        # This interpreter (or one named by path): the key follows the Python actually there
        # (an upgrade 3.11.7 -> 3.11.9 is a new environment; the lock, for 3.11, still holds).
        base_python, python_version = _base_interpreter(env, step)
    return ResolvedEnvironment(
        key=environment_key(lock, python_version, platform_tag(), runtime),
        lock=lock,
        packages=lock_packages(lock),
        python_version=python_version,
        env_vars=env.env_var_dict(),
        base_python=base_python,
        runtime=runtime,
    )


def _who(step: str | None) -> str:
    return f"Step '{step}': " if step else ""


def _read_lock_record(rel: str, digest: str, store: Datastore | None) -> dict[str, Any] | None:
    try:
        if store is not None:
            data = store.read_bytes(rel)
        else:
            data = (environments_root() / "locks" / f"{digest}.json").read_bytes()
    except (DatastoreError, FileNotFoundError):
        return None
    record = json.loads(data)
    return record if record.get("lock") is not None and record.get("python_version") else None


def _write_lock_record(
    rel: str, digest: str, record: dict[str, Any], store: Datastore | None, replace: bool
) -> dict[str, Any]:
    """Record a lock; the first one recorded for a request wins (unless ``replace``), so two
    processes resolving the same new request at once use the same lock."""
    data = json.dumps(record, indent=1, sort_keys=True).encode()
    if store is not None:
        if replace:
            store._write_record(rel, data)
        elif not store._create_record(rel, data):
            return json.loads(store.read_bytes(rel))
        return record
    path = environments_root() / "locks" / f"{digest}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        if replace:
            os.replace(tmp, path)
            return record
        try:
            os.link(tmp, path)
        except FileExistsError:
            return json.loads(path.read_bytes())
        return record
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _resolve_with_uv(env: Environment, digest: str, step: str | None) -> dict[str, Any]:
    """``uv pip compile`` the request for the interpreter it will be built from."""
    base_python, python_version = _base_interpreter(env, step)
    with tempfile.TemporaryDirectory(prefix="aml-env-resolve-") as tmp:
        request = Path(tmp) / "requirements.in"
        request.write_text("\n".join(env.pip) + "\n")
        sources = [str(request)]
        if env.requirements_file is not None:
            sources.append(str(env.requirements_file))
        output = Path(tmp) / "requirements.txt"
        cmd = [
            *sources, "--python", base_python, "--quiet", "--no-header", "--no-annotate",
            "--output-file", str(output),
        ]
        requested = [*env.pip, *([str(env.requirements_file)] if env.requirements_file else [])]
        _run_uv(["pip", "compile", *cmd], step=step, requested=requested, action="resolve",
                cache_first=False, cwd=tmp)
        lock = output.read_text()
    return {
        "request_digest": digest,
        "requirements": env.requirements_text(),
        "python": env.python,
        "python_version": python_version,
        "base_python": base_python,
        "platform": platform_tag(),
        "lock": lock,
        "resolved_at": time.time(),
    }


_PROBE = "import os, platform, sys; print(platform.python_version()); print(os.path.realpath(getattr(sys, '_base_executable', sys.executable)))"


def _base_interpreter(env: Environment, step: str | None) -> tuple[str, str]:
    """The base interpreter an environment is built from, and its exact version."""
    if not env.python:
        base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        return base, platform.python_version()
    if env.python_is_version:
        found = _run_uv(["python", "find", env.python.strip()], step=step, requested=[],
                        action=f"provide Python {env.python} for", cache_first=False, check=False)
        if found.returncode != 0:
            _run_uv(["python", "install", env.python.strip()], step=step, requested=[],
                    action=f"provide Python {env.python} for", cache_first=False)
            found = _run_uv(["python", "find", env.python.strip()], step=step, requested=[],
                            action=f"provide Python {env.python} for", cache_first=False)
        interpreter = found.stdout.strip().splitlines()[-1]
    else:
        interpreter = shutil.which(env.python) or env.python
    try:
        probe = subprocess.run([interpreter, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise EnvironmentBuildError(
            f"{_who(step)}cannot start the interpreter '{env.python}': {exc}. Give a Python "
            "version (python='3.11') or an existing interpreter.",
            step=step, package=None, resolver_message=str(exc),
        ) from exc
    if probe.returncode != 0:
        raise EnvironmentBuildError(
            f"{_who(step)}the interpreter '{interpreter}' does not run: {probe.stderr.strip()[-500:]}",
            step=step, package=None, resolver_message=probe.stderr,
        )
    version, base = probe.stdout.splitlines()[:2]
    return base, version


# --- uv ------------------------------------------------------------------------------------
def uv_binary() -> str:
    """The uv executable (the ``uv`` package's, else one on PATH)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise EnvironmentBuildError(
        "uv is not installed, and step environments are resolved and built with it. Install it "
        "into aml-assets' environment: pip install uv.",
        step=None, package=None, resolver_message="uv not found",
    )


def offline_only() -> bool:
    """Whether the network is off limits (``AML_OFFLINE=1`` or uv's ``UV_OFFLINE=1``)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in (OFFLINE_ENV, "UV_OFFLINE"))


def _run_uv(
    args: list[str],
    *,
    step: str | None,
    requested: Sequence[str],
    action: str,
    cache_first: bool,
    check: bool = True,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run uv. ``cache_first``: try uv's cache alone (``--offline``), then the index for what
    it lacks. Resolutions ask the index first and fall back to the cache when it is
    unreachable. Raises ``EnvironmentBuildError`` with uv's message on failure if ``check``."""
    uv = uv_binary()
    env = {**os.environ, "UV_NO_PROGRESS": "1"}

    def run(offline: bool) -> subprocess.CompletedProcess[str]:
        extra = ["--offline"] if offline and args[0] == "pip" else []
        return subprocess.run([uv, *args, *extra], capture_output=True, text=True, env=env, cwd=cwd)

    if not check or args[0] != "pip":
        out = run(False)
        if check and out.returncode != 0:
            raise _build_error(out.stderr, step=step, requested=requested, action=action, offline=False)
        return out
    if offline_only():
        out = run(True)
        if out.returncode != 0:
            raise _build_error(out.stderr, step=step, requested=requested, action=action, offline=True)
        return out
    first = run(cache_first)
    if first.returncode == 0:
        return first
    if cache_first and _is_cache_miss(first.stderr):
        second = run(False)  # the cache lacks something: ask the index
    elif not cache_first and _is_network_failure(first.stderr):
        second = run(True)  # the index is unreachable: maybe the cache has it all
    else:
        raise _build_error(first.stderr, step=step, requested=requested, action=action, offline=False)
    if second.returncode == 0:
        return second
    unreachable = _is_network_failure(first.stderr) or _is_network_failure(second.stderr)
    missing = _is_cache_miss(first.stderr) or _is_cache_miss(second.stderr)
    message = second.stderr if not _is_cache_miss(second.stderr) or not cache_first else first.stderr
    if unreachable and missing:
        both = f"{first.stderr.strip()}\n{second.stderr.strip()}"
        raise _build_error(both, step=step, requested=requested, action=action, offline=True,
                           unreachable=True)
    raise _build_error(message, step=step, requested=requested, action=action, offline=False)


def _is_cache_miss(message: str) -> bool:
    return any(m in message for m in _CACHE_MISSES)


def _is_network_failure(message: str) -> bool:
    return any(m in message for m in _NETWORK_FAILURES)


_PACKAGE_PATTERNS = (
    re.compile(r"Because (?:there is no version of |there are no versions of |only )?`?([A-Za-z0-9][A-Za-z0-9._-]*)"),
    re.compile(r"/simple/([A-Za-z0-9][A-Za-z0-9._-]*)/"),
    re.compile(r"Failed to (?:download|build|fetch|install|prepare distributions for)\s+`([A-Za-z0-9][A-Za-z0-9._-]*)"),
    re.compile(r"`([A-Za-z0-9][A-Za-z0-9._-]*)(?:==|@)"),
)


def culprit(message: str, requested: Sequence[str]) -> str | None:
    """The package uv's message is about, as the user requested it where possible."""
    for pattern in _PACKAGE_PATTERNS:
        match = pattern.search(message)
        if match:
            name = normalize_name(match.group(1).rstrip("."))
            for req in requested:
                head = re.split(r"[\s<>=!~;\[@]", req, maxsplit=1)[0]
                if normalize_name(head) == name:
                    return req
            return name
    return None


def _build_error(
    message: str,
    *,
    step: str | None,
    requested: Sequence[str],
    action: str,
    offline: bool,
    unreachable: bool = False,
) -> EnvironmentBuildError:
    package = culprit(message, requested)
    what = f"package '{package}'" if package else f"the requested packages ({', '.join(requested) or 'none'})"
    uv_says = "\n".join(f"    {line}" for line in message.strip().splitlines()[-12:])
    if unreachable:
        problem = (
            f"{what} is not in uv's cache and the package index is unreachable. Connect to the "
            "index (or set UV_DEFAULT_INDEX to a reachable mirror), or build the environment once "
            "on a connected machine sharing this uv cache"
        )
    elif offline and _is_cache_miss(message):
        problem = (
            f"{what} is not in uv's cache, and the network is off ({OFFLINE_ENV}/UV_OFFLINE). "
            f"Unset {OFFLINE_ENV} to download it, or build the environment while online"
        )
    elif not requested:
        problem = "uv failed"
    else:
        problem = f"uv could not {action} {what}. Check the requirement's name and version"
    return EnvironmentBuildError(
        f"{_who(step)}cannot {action} its environment: {problem}.\n  uv says:\n{uv_says}",
        step=step, package=package, resolver_message=message,
    )


# --- the build -----------------------------------------------------------------------------
def ensure_built(
    resolved: ResolvedEnvironment,
    *,
    step: str | None = None,
    log: Any = None,
    root: Path | None = None,
) -> Path:
    """The interpreter of the resolved environment, built (once, atomically) if needed."""
    root = Path(root or environments_root())
    final = root / resolved.key
    interpreter = final / "bin" / "python"
    marker = final / MARKER
    if _mark_used(marker):
        return interpreter
    log = log or _log
    with _key_lock(root, resolved.key, log, step):
        if _mark_used(marker):  # another process built it while we waited
            log.info(f"{_who(step)}reusing environment {resolved.describe()}, built meanwhile.")
            return interpreter
        _discard(final, root)  # an incomplete folder (no marker) is never used
        _remove_stale_builds(root, resolved.key)
        started = time.perf_counter()
        log.info(f"{_who(step)}building environment {resolved.describe()}.")
        _build(resolved, root, final, step)
        log.info(
            f"{_who(step)}built environment {resolved.key[:12]} in "
            f"{time.perf_counter() - started:.1f} s at {final}."
        )
    return interpreter


def _mark_used(marker: Path) -> bool:
    """Whether a complete environment is there; records that it was used (for prune)."""
    try:
        os.utime(marker)
        return True
    except FileNotFoundError:
        return False
    except PermissionError:  # a shared, read-only environments folder: usable, not ours to touch
        return marker.exists()


@contextlib.contextmanager
def _key_lock(root: Path, key: str, log: Any, step: str | None, wait: bool = True) -> Iterator[bool]:
    """An exclusive ``fcntl`` lock for one key: one builder at a time, across processes."""
    locks = root / ".build-locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            log.info(f"{_who(step)}waiting: another process is building environment {key[:12]}.")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _discard(path: Path, root: Path) -> None:
    """Remove a folder so no reader sees it half-deleted: rename it away first."""
    if not path.exists():
        return
    trash = root / ".tmp" / f"trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_builds(root: Path, key: str) -> None:
    """Leftovers of a killed build of this key (we hold its lock, so nobody is building it)."""
    tmp = root / ".tmp"
    if tmp.is_dir():
        for leftover in tmp.glob(f"{key}-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _build(resolved: ResolvedEnvironment, root: Path, final: Path, step: str | None) -> None:
    (root / ".tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{resolved.key}-", dir=root / ".tmp"))
    try:
        venv = work / "env"
        python = resolved.base_python
        if not python or _python_version_of(python) != resolved.python_version:
            # Resolved elsewhere, or that interpreter changed since: uv finds (or installs)
            # exactly the version the key names.
            python = resolved.python_version
        _run_uv(["venv", "--relocatable", "--quiet", "--python", python, str(venv)],
                step=step, requested=[f"python {resolved.python_version}"], action="create",
                cache_first=False)
        requirements = work / "requirements.txt"
        locked = set(resolved.packages)
        extra = [r for r in resolved.runtime if normalize_name(r.split("==")[0]) not in locked]
        requirements.write_text(resolved.lock.rstrip("\n") + "\n" + "".join(f"{r}\n" for r in extra))
        requested = [f"{n}=={v}" for n, v in resolved.packages.items()] + list(extra)
        _run_uv(["pip", "sync", "--quiet", "--python", str(venv / "bin" / "python"), str(requirements)],
                step=step, requested=requested, action="install", cache_first=True, cwd=str(work))
        description = {
            "key": resolved.key,
            "python_version": resolved.python_version,
            "platform": platform_tag(),
            "packages": resolved.packages,
            "runtime": list(resolved.runtime),
            "lock": resolved.lock,
            "built_at": time.time(),
        }
        _write_synced(venv / MARKER, json.dumps(description, indent=1, sort_keys=True).encode())
        os.rename(venv, final)  # publish: a complete environment appears at once
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _python_version_of(interpreter: str) -> str | None:
    """The version of an interpreter, None if it does not run."""
    try:
        out = subprocess.run([interpreter, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# --- what exists, and pruning --------------------------------------------------------------
@dataclass(frozen=True)
class EnvInfo:
    """One built environment (or an incomplete folder, which is never used)."""

    key: str
    path: Path
    complete: bool
    python_version: str | None
    packages: dict[str, str]
    last_used: float
    size_bytes: int

    def summary(self) -> str:
        """One line for ``aml-assets env list``."""
        if not self.complete:
            return f"{self.key}  incomplete (never used; 'aml-assets env prune' removes it)"
        shown = ", ".join(f"{n} {v}" for n, v in sorted(self.packages.items()))
        used = time.strftime("%Y-%m-%d %H:%M", time.gmtime(self.last_used))
        return (
            f"{self.key}  Python {self.python_version}  {len(self.packages)} package(s)  "
            f"{self.size_bytes / 1e6:.0f} MB  last used {used} UTC\n    {shown}"
        )


def list_environments(root: Path | None = None) -> list[EnvInfo]:
    """Every environment under the root, most recently used first."""
    root = Path(root or environments_root())
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith(".") or path.name == "locks" or not path.is_dir():
            continue
        marker = path / MARKER
        try:
            described = json.loads(marker.read_text())
            last_used = marker.stat().st_mtime
        except (FileNotFoundError, json.JSONDecodeError):
            described, last_used = None, path.stat().st_mtime
        found.append(EnvInfo(
            key=path.name,
            path=path,
            complete=described is not None,
            python_version=(described or {}).get("python_version"),
            packages=(described or {}).get("packages", {}),
            last_used=last_used,
            size_bytes=_size(path),
        ))
    return sorted(found, key=lambda e: -e.last_used)


def _size(path: Path) -> int:
    """Bytes under ``path`` (files hard-linked from uv's cache are counted once per environment)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def prune(
    *,
    older_than_days: float = 30.0,
    keep: set[str] | frozenset[str] = frozenset(),
    dry_run: bool = False,
    root: Path | None = None,
) -> list[EnvInfo]:
    """Remove environments unused for ``older_than_days`` (except ``keep``), incomplete ones
    and leftovers of killed builds. Returns what was (or, with ``dry_run``, would be) removed.
    An environment being built is never touched (its key's lock is held)."""
    root = Path(root or environments_root())
    cutoff = time.time() - older_than_days * 86400
    removed = []
    for info in list_environments(root):
        if info.key in keep or (info.complete and info.last_used > cutoff):
            continue
        if dry_run:
            removed.append(info)
            continue
        with _key_lock(root, info.key, _log, None, wait=False) as locked:
            if not locked:
                continue  # being built right now
            marker = info.path / MARKER
            if info.complete and marker.exists() and marker.stat().st_mtime > cutoff:
                continue  # used since we listed it
            _discard(info.path, root)
            removed.append(info)
    if not dry_run:
        _remove_orphan_builds(root)
    return removed


def _remove_orphan_builds(root: Path) -> None:
    """Build folders whose builder is gone (their key's lock is free)."""
    tmp = root / ".tmp"
    for leftover in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        key = leftover.name.split("-", 1)[0]
        if leftover.name.startswith("trash-"):
            shutil.rmtree(leftover, ignore_errors=True)
            continue
        with _key_lock(root, key, _log, None, wait=False) as locked:
            if locked:
                shutil.rmtree(leftover, ignore_errors=True)


# --- the command line ----------------------------------------------------------------------
def cli_env(
    args: Any,
    out: Any,
    *,
    steps: Sequence[tuple[str, Environment]] | None = None,
    store: Datastore | None = None,
) -> int:
    """``aml-assets env list | build | prune``. ``build`` takes the (step, environment) pairs of
    the pipeline to build ahead of a run (the CLI loads them; this layer knows no pipelines)."""
    action = args.action
    if action == "list":
        envs = list_environments()
        for info in envs:
            print(info.summary(), file=out)
        print(f"{len(envs)} environment(s) in {environments_root()}.", file=out)
        return 0
    if action == "prune":
        removed = prune(older_than_days=args.older_than_days, dry_run=args.dry_run)
        verb = "Would remove" if args.dry_run else "Removed"
        for info in removed:
            print(f"{verb} {info.path}", file=out)
        print(f"{verb} {len(removed)} environment(s) unused for {args.older_than_days:g} day(s).", file=out)
        return 0
    if action == "build":
        isolated = [(name, env) for name, env in steps or [] if env is not None and env.isolated]
        if not isolated:
            print("No step of this pipeline declares an isolated environment; nothing to build.", file=out)
            return 0
        for name, env in isolated:
            resolved = resolve(env, store=store, step=name)
            started = time.perf_counter()
            python = ensure_built(resolved, step=name)
            print(f"{name}: {resolved.describe()} ready in {time.perf_counter() - started:.1f} s: {python}", file=out)
        return 0
    raise AmlAssetsError(f"Unknown env action '{action}'; use list, build or prune.")
