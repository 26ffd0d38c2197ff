"""First use of a Dagster instance by several processes at once (``aml_assets.service.instance``).

Without ``ensure_instance``, four Dagster commands starting together on a fresh ``DAGSTER_HOME``
race to create and stamp the SQLite storages and can leave two alembic heads behind, which breaks
the home for good.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aml_assets.service import instance as inst_mod
from aml_assets.service.instance import (
    CONFIG_NAME,
    MARKER_NAME,
    InstanceError,
    ensure_instance,
)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = textwrap.dedent(
    """
    from dagster import Definitions, asset, define_asset_job

    @asset
    def one():
        return 1

    @asset
    def two(one):
        return one + 1

    defs = Definitions(assets=[one, two], jobs=[define_asset_job("tiny", selection="*")])
    """
)


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(home)}


def _alembic_rows(home: Path) -> dict[str, list[str]]:
    """Every SQLite file in the home -> its alembic_version rows (one row when healthy)."""
    out = {}
    for db in sorted(home.rglob("*.db")):
        with sqlite3.connect(db) as conn:
            out[str(db.relative_to(home))] = [r[0] for r in conn.execute("select * from alembic_version")]
    return out


def _run_tiny(home: Path, tiny: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "dagster", "job", "execute", "-f", tiny, "-j", "tiny"],
        env=_env(home), cwd=tiny.parent, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_concurrent_first_use_then_runs(tmp_path):
    home = tmp_path / "home"  # does not exist yet: created like `make run` does
    tiny = tmp_path / "tiny.py"
    tiny.write_text(TINY)
    # What `make run` does: initialise (copying the repo's dagster.yaml), then execute the job.
    script = (
        f"'{sys.executable}' -m aml_assets.service.instance '{home}' "
        f"--default-config '{REPO / 'dagster.yaml'}' && "
        f"'{BIN / 'dagster'}' job execute -f '{tiny}' -j tiny"
    )
    procs = [
        subprocess.Popen(["sh", "-c", script], env=_env(home), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        assert "RUN_SUCCESS" in out, out
    # The project's config, with this home's path in place of the placeholder.
    from aml_assets.service.instance import home_config

    assert (home / CONFIG_NAME).read_text() == home_config((REPO / "dagster.yaml").read_text(), home)
    assert f'base_dir: "{home}/history/runs"' in (home / CONFIG_NAME).read_text()
    assert all(len(rows) == 1 for rows in _alembic_rows(home).values()), _alembic_rows(home)

    fifth = _run_tiny(home, tiny)
    assert fifth.returncode == 0, fifth.stdout + fifth.stderr
    info = subprocess.run([BIN / "dagster", "instance", "info"], env=_env(home),
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stdout + info.stderr

    from dagster import DagsterInstance, DagsterRunStatus

    instance = DagsterInstance.from_config(str(home))
    try:
        runs = instance.get_runs()
        assert len(runs) == 5
        assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}
    finally:
        instance.dispose()


@pytest.mark.slow
def test_second_call_is_a_fast_no_op(tmp_path, monkeypatch):
    home = tmp_path / "home"
    ensure_instance(home, default_config=REPO / "dagster.yaml")
    marker = home / MARKER_NAME
    stamp = marker.stat().st_mtime_ns

    def boom(_home):
        raise AssertionError("the instance was opened again")

    monkeypatch.setattr(inst_mod, "_initialise", boom)
    start = time.perf_counter()
    ensure_instance(home, default_config=REPO / "dagster.yaml")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.25, f"second ensure_instance took {elapsed:.3f}s"  # ~1 ms; first: ~1.4 s
    assert marker.stat().st_mtime_ns == stamp

    # From the command line it does not even import Dagster.
    code = (
        "import sys; from pathlib import Path; "
        "from aml_assets.service.instance import ensure_instance; "
        f"ensure_instance(Path({str(home)!r})); "
        "sys.exit(1 if any(m == 'dagster' or m.startswith('dagster.') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.slow
def test_config_copied_like_make_did(tmp_path):
    default = tmp_path / "dagster.yaml"
    default.write_text("telemetry:\n  enabled: false\n")
    home = tmp_path / "home"
    ensure_instance(home, default_config=default)
    installed = (home / CONFIG_NAME).read_text()
    assert installed.startswith(default.read_text())
    assert f'base_dir: "{home}/history/runs"' in installed  # the faster event log, this home's

    # A config that chooses its own storage is installed as it is.
    own = tmp_path / "own.yaml"
    own.write_text("storage:\n  sqlite:\n    base_dir: {dagster_home}/data\n")
    ensure_instance(tmp_path / "other", default_config=own)
    assert (tmp_path / "other" / CONFIG_NAME).read_text() == f"storage:\n  sqlite:\n    base_dir: {tmp_path / 'other'}/data\n"

    # A hand edit in the home is kept while the default is older ...
    edited = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
    (home / CONFIG_NAME).write_text(edited)
    ensure_instance(home, default_config=default)
    assert (home / CONFIG_NAME).read_text() == edited
    # ... and the instance is re-checked for the changed config (marker follows the config).
    assert (home / MARKER_NAME).read_text() == inst_mod._expected_marker(home)

    # A newer default replaces it.
    default.write_text("telemetry:\n  enabled: false\n# new\n")
    later = (home / CONFIG_NAME).stat().st_mtime_ns + 1_000_000_000
    os.utime(default, ns=(later, later))
    ensure_instance(home, default_config=default)
    assert "# new\n" in (home / CONFIG_NAME).read_text()


@pytest.mark.slow
def test_corrupted_home_is_explained(tmp_path):
    home = tmp_path / "home"
    ensure_instance(home)
    # What the race left behind: a second, older alembic revision next to head.
    with sqlite3.connect(home / "history" / "runs.db") as conn:
        conn.execute("insert into alembic_version values ('5771160a95ad')")
    (home / MARKER_NAME).unlink()
    with pytest.raises(InstanceError) as info:
        ensure_instance(home)
    message = str(info.value)
    assert "more than one head" in message
    assert "mv " in message and f"{home}.broken" in message


def test_needs_a_home(monkeypatch, capsys):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(SystemExit):
        inst_mod.main([])
    assert "set DAGSTER_HOME" in capsys.readouterr().err
