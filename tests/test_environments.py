"""Per-step environments (``aml_assets.compute.environments``): real uv, real builds.

Tests marked ``network`` resolve against PyPI (small pure-Python packages: six, attrs); once
uv's cache holds them, builds need no network. Each test builds into its own ``AML_ENV_DIR``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aml_assets.compute import environments as envs
from aml_assets.compute.environments import (
    MARKER,
    Environment,
    EnvironmentBuildError,
    ResolvedEnvironment,
    cli_env,
    ensure_built,
    environments_root,
    list_environments,
    prune,
    resolve,
)
from aml_assets.data import layout
from aml_assets.errors import DatastoreError

REPO = Path(__file__).resolve().parent.parent
network = pytest.mark.network  # resolves against PyPI (the first time; uv's cache afterwards)


@pytest.fixture(autouse=True)
def env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "envs"
    monkeypatch.setenv("AML_ENV_DIR", str(root))
    monkeypatch.delenv("AML_OFFLINE", raising=False)
    monkeypatch.delenv("UV_OFFLINE", raising=False)
    return root


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def info(self, msg: str) -> None:  # also usable as ``log=`` directly
        self.lines.append(msg)


def run_in(python: Path, code: str, pythonpath: bool = True) -> str:
    """Run ``code`` with the environment's interpreter as a step's script would (PYTHONPATH =
    the repository, for ``amlrun``); its stdout."""
    env = {"PATH": os.environ["PATH"], **({"PYTHONPATH": str(REPO)} if pythonpath else {})}
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, env=env,
                         cwd=python.parent)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the package index unreachable: every request goes to a closed local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")


def forbid_uv(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_uv() -> str:
        raise AssertionError("uv was called")

    monkeypatch.setattr(envs, "uv_binary", no_uv)


# --- the request -----------------------------------------------------------------------------
def test_environment_normalises_and_knows_when_it_is_isolated(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "requirements.txt").write_text("six\n")
    env = Environment(pip=["six"], env_vars={"B": "2", "A": "1"}, requirements_file="requirements.txt")
    assert env.env_vars == (("A", "1"), ("B", "2")) and hash(env)
    assert env.requirements_file == tmp_path / "requirements.txt"  # resolved where declared
    assert env.isolated
    assert Environment(python="3.11").isolated
    assert not Environment(python="python3").isolated  # legacy: an interpreter by name
    assert not Environment(packages=("pandas",)).isolated


def test_request_digest_follows_requirements_content_not_name_or_env_vars(tmp_path: Path):
    req = tmp_path / "requirements.txt"
    base = tmp_path / "base.txt"
    base.write_text("attrs\n")
    req.write_text("-r base.txt\nsix\n")
    env = Environment(requirements_file=req)
    first = env.request_digest()
    assert Environment(requirements_file=req, name="x", env_vars={"A": "1"}).request_digest() == first
    base.write_text("attrs==25.1.0\n")  # an included file changed: a new request
    assert env.request_digest() != first
    assert Environment(pip=["six"]).request_digest() != Environment(pip=["six"], python="3.11").request_digest()


def test_environments_root_is_a_user_cache_independent_of_aml_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("AML_ENV_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("AML_CACHE_DIR", str(tmp_path / "per-test-cache"))
    assert environments_root() == tmp_path / "xdg" / "aml-assets" / "envs"


def test_lock_record_path_is_protected_on_the_datastore(datastore):
    rel = layout.environment_lock_record("abc")
    assert rel == "_environments/locks/abc.json" and layout.is_protected(rel)
    with pytest.raises(DatastoreError, match="cannot write"):
        datastore.write_bytes(rel, b"{}")


# --- resolve and build ---------------------------------------------------------------------
@network
def test_conflicting_versions_build_two_environments_each_seeing_its_own(env_root: Path):
    python = {}
    for version in ("1.16.0", "1.17.0"):
        resolved = resolve(Environment(pip=[f"six=={version}"]), step=f"s{version}")
        assert resolved.packages == {"six": version}
        python[version] = ensure_built(resolved, step=f"s{version}")
        assert python[version] == env_root / resolved.key / "bin" / "python"
        assert python[version] == resolved.interpreter()
    assert python["1.16.0"] != python["1.17.0"]
    for version, interpreter in python.items():
        seen = run_in(
            interpreter,
            "import six, dagster_pipes, amlrun, sys; print(six.__version__, sys.prefix)",
        )
        assert seen == f"{version} {interpreter.parent.parent}"
    # Exactly the lock (plus the runtime) is installed: nothing else leaks in.
    listed = run_in(python["1.17.0"], "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in m.distributions()))", pythonpath=False)
    assert listed == "['dagster-pipes', 'six']"


@network
def test_key_is_the_lock_not_the_request(env_root: Path):
    loose = resolve(Environment(pip=["six"], env_vars={"MODE": "a"}))
    pinned = resolve(Environment(pip=[f"six=={loose.packages['six']}"], name="pinned"))
    assert Environment(pip=["six"]).request_digest() != Environment(pip=[f"six=={loose.packages['six']}"]).request_digest()
    assert loose.key == pinned.key and loose.lock == pinned.lock
    # env_vars change the step's process, not what is installed: out of the key, on the result.
    assert loose.env_vars == {"MODE": "a"} and pinned.env_vars == {}
    other = resolve(Environment(pip=["six==1.16.0"]))
    assert other.key != loose.key


@network
def test_recorded_lock_is_reused_until_refresh(datastore, monkeypatch):
    env = Environment(pip=["six"])
    first = resolve(env, store=datastore, step="train")
    rel = layout.environment_lock_record(env.request_digest())
    record = json.loads(datastore.read_bytes(rel))
    assert record["lock"] == first.lock and record["python_version"] == first.python_version
    # "Last month", six resolved to 1.16.0: that lock is what the request means until refreshed.
    record["lock"] = "six==1.16.0\n"
    datastore._write_record(rel, json.dumps(record).encode())
    with monkeypatch.context() as m:
        forbid_uv(m)  # a recorded lock costs no resolution
        again = resolve(env, store=datastore, step="train")
    assert again.packages == {"six": "1.16.0"} and again.key != first.key
    refreshed = resolve(Environment(pip=["six"], refresh=True), store=datastore, step="train")
    assert refreshed.packages == first.packages and refreshed.key == first.key
    assert json.loads(datastore.read_bytes(rel))["lock"] == first.lock
    # Without a datastore, the record lives under the environments root.
    resolve(env)
    assert (environments_root() / "locks" / f"{env.request_digest()}.json").is_file()


@network
def test_cached_rebuild_calls_no_uv_and_is_fast(monkeypatch):
    env = Environment(pip=["six==1.17.0", "attrs"])
    python = ensure_built(resolve(env))
    forbid_uv(monkeypatch)
    started = time.perf_counter()
    for _ in range(10):
        assert ensure_built(resolve(env)) == python
    per_call = (time.perf_counter() - started) / 10
    assert per_call < 0.5, f"cached resolve + ensure_built took {per_call:.3f} s"


@network
def test_python_version_request_builds_that_python(env_root: Path):
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"  # installed here: no download
    resolved = resolve(Environment(python=minor))
    assert resolved.python_version.startswith(minor + ".") and resolved.packages == {}
    python = ensure_built(resolved)
    assert run_in(python, "import platform, dagster_pipes; print(platform.python_version())") == resolved.python_version


@network
def test_two_processes_build_one_key_once(tmp_path: Path, env_root: Path):
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from aml_assets.compute.environments import Environment, ensure_built, resolve
        class Log:
            lines = []
            def info(self, msg): self.lines.append(msg)
        log = Log()
        resolved = resolve(Environment(pip=["six==1.16.0", "attrs==25.1.0"]), step=sys.argv[1], log=log)
        python = ensure_built(resolved, step=sys.argv[1], log=log)
        built = sum(": building environment" in m for m in log.lines)
        print(f"{{built}} {{python}}")
    """))
    procs = [
        subprocess.Popen([sys.executable, str(script), f"s{i}"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        for i in range(3)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(out.split())
    assert sorted(int(b) for b, _ in results) == [0, 0, 1], results
    assert len({p for _, p in results}) == 1
    assert run_in(Path(results[0][1]), "import six, attrs; print(six.__version__, attrs.__version__)") == "1.16.0 25.1.0"
    assert [e.key for e in list_environments()] == [Path(results[0][1]).parent.parent.name]


@network
def test_nonexistent_package_fails_naming_it_and_leaves_nothing(env_root: Path):
    with pytest.raises(EnvironmentBuildError, match=r"(?s)Step 'train'.*aml-no-such-package-4711") as info:
        resolve(Environment(pip=["six", "aml-no-such-package-4711"]), step="train")
    assert info.value.step == "train" and info.value.package == "aml-no-such-package-4711"
    assert "not found in the package registry" in str(info.value)  # uv's own words
    assert list_environments() == [] and not (env_root / "locks").exists()


@network
def test_impossible_version_names_the_requirement():
    with pytest.raises(EnvironmentBuildError, match=r"(?s)package 'six==99\.0'.*no version of six==99\.0"):
        resolve(Environment(pip=["six==99.0"]), step="prep")


@network
def test_failed_build_leaves_no_folder_behind(env_root: Path):
    good = resolve(Environment(pip=["six==1.17.0"]))
    broken = ResolvedEnvironment(
        key="0" * 32, lock="six==1.17.0\naml-no-such-package-4711==1.0\n",
        packages={"six": "1.17.0", "aml-no-such-package-4711": "1.0"},
        python_version=good.python_version, base_python=good.base_python, runtime=good.runtime,
    )
    with pytest.raises(EnvironmentBuildError, match=r"(?s)Step 'train'.*aml-no-such-package-4711") as info:
        ensure_built(broken, step="train")
    assert info.value.package == "aml-no-such-package-4711==1.0"
    assert not (env_root / broken.key).exists()
    assert list((env_root / ".tmp").iterdir()) == []


@network
def test_an_environment_without_its_marker_is_rebuilt(env_root: Path):
    resolved = resolve(Environment(pip=["six==1.17.0"]))
    python = ensure_built(resolved)
    (python.parent.parent / MARKER).unlink()  # as if a build died before finishing
    (python.parent.parent / "half-written").write_text("x")
    log = Messages()
    assert ensure_built(resolved, log=log) == python
    assert any("building environment" in m for m in log.lines)
    assert (python.parent.parent / MARKER).is_file() and not (python.parent.parent / "half-written").exists()


# --- offline ---------------------------------------------------------------------------------
@network
def test_build_from_a_recorded_lock_needs_no_network_when_cached(tmp_path, monkeypatch):
    env = Environment(pip=["six==1.16.0"])
    ensure_built(resolve(env), root=tmp_path / "warm")  # fills uv's cache
    dead_proxy(monkeypatch)
    python = ensure_built(resolve(env))  # a new root: a real build, from the cache
    assert run_in(python, "import six; print(six.__version__)") == "1.16.0"
    # A new request while the index is unreachable resolves from uv's cache.
    assert resolve(Environment(pip=["six==1.16.0"], name="x", python=None, env_vars={"A": "b"})).packages == {"six": "1.16.0"}


@network
def test_uncached_package_with_unreachable_index_says_so(tmp_path, monkeypatch):
    resolved = resolve(Environment(pip=["six==1.16.0"]))
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "empty-uv-cache"))
    dead_proxy(monkeypatch)
    with pytest.raises(EnvironmentBuildError, match=r"package 'six==1\.16\.0' is not in uv's cache and the package index is unreachable"):
        ensure_built(resolved, step="train")
    with pytest.raises(EnvironmentBuildError, match=r"package 'attrs' is not in uv's cache and the package index is unreachable"):
        resolve(Environment(pip=["attrs"]), step="train")
    monkeypatch.setenv("AML_OFFLINE", "1")
    with pytest.raises(EnvironmentBuildError, match=r"'six==1\.16\.0' is not in uv's cache, and the network is off"):
        ensure_built(resolved, step="train")


# --- list, prune, the command --------------------------------------------------------------
@network
def test_list_and_prune(env_root: Path):
    old = ensure_built(resolve(Environment(pip=["six==1.16.0"]))).parent.parent
    recent = ensure_built(resolve(Environment(pip=["six==1.17.0"]))).parent.parent
    kept = ensure_built(resolve(Environment(pip=["attrs==25.1.0"]))).parent.parent
    month_ago = time.time() - 40 * 86400
    for path in (old, kept):
        os.utime(path / MARKER, (month_ago, month_ago))
    incomplete = env_root / ("f" * 32)
    (incomplete / "bin").mkdir(parents=True)
    (env_root / ".tmp" / (("e" * 32) + "-killed")).mkdir(parents=True)
    listed = {e.key: e for e in list_environments()}
    assert set(listed) == {old.name, recent.name, kept.name, incomplete.name}
    assert not listed[incomplete.name].complete and listed[recent.name].packages == {"six": "1.17.0"}

    would = prune(older_than_days=30, keep={kept.name}, dry_run=True)
    assert {e.key for e in would} == {old.name, incomplete.name} and old.exists()
    removed = prune(older_than_days=30, keep={kept.name})
    assert {e.key for e in removed} == {old.name, incomplete.name}
    assert not old.exists() and not incomplete.exists() and recent.exists() and kept.exists()
    assert list((env_root / ".tmp").iterdir()) == []


@network
def test_cli_env_list_build_prune(env_root: Path):
    out = io.StringIO()
    steps = [("train", Environment(pip=["six==1.17.0"])), ("plain", Environment(packages=("pandas",)))]
    assert cli_env(argparse.Namespace(action="build"), out, steps=steps) == 0
    assert "train: " in out.getvalue() and "six 1.17.0" in out.getvalue() and "plain" not in out.getvalue()
    out = io.StringIO()
    assert cli_env(argparse.Namespace(action="list"), out) == 0
    assert "six 1.17.0" in out.getvalue() and f"1 environment(s) in {env_root}" in out.getvalue()
    out = io.StringIO()
    assert cli_env(argparse.Namespace(action="prune", older_than_days=0, dry_run=True), out) == 0
    assert "Would remove 1 environment(s)" in out.getvalue() and len(list_environments()) == 1
