"""Shared fixtures: an isolated datastore and cache per test, a copy of the reference project."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from aml_assets import LocalDatastore, SparkPool

pytest_plugins = ["tests.support.azurite_fixtures", "tests.support.postgres"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own datastore root and stat cache (never the user's)."""
    root = tmp_path / "datastore"
    monkeypatch.setenv("AML_DATASTORE_ROOT", str(root))
    # A developer's (or the Makefile's) DAGSTER_HOME must not leak into tests' subprocesses.
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("AML_CACHE_DIR", str(tmp_path / "cache"))
    # Nor a developer's warm Spark pools (aml-assets pool start): tests start their own.
    monkeypatch.setenv("AML_STATE_DIR", str(tmp_path / "state"))
    return root


@pytest.fixture
def datastore(isolated_env: Path) -> LocalDatastore:
    """The test's workspace datastore."""
    return LocalDatastore(name="workspace", root=str(isolated_env))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A private copy of the reference project's scripts and seed data, safe to edit."""
    dest = tmp_path / "project"
    dest.mkdir()
    shutil.copytree(REPO / "code", dest / "code", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "data", dest / "data")
    return dest


@pytest.fixture(scope="session")
def spark_pool() -> SparkPool:
    """A small local pool; every in-process test run shares its one JVM."""
    return SparkPool(
        master="local[2]",
        driver_memory="1g",
        executor_memory="1g",
        conf={"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false"},
    )


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """A temporary Dagster instance (SQLite storage in a temp dir)."""
    with instance_for_test() as inst:
        yield inst


# --- the reference pipeline after one complete run, shared -------------------------------------
@pytest.fixture(scope="session")
def reference_cold_run(tmp_path_factory: pytest.TempPathFactory, spark_pool: SparkPool):
    """One cold run of the reference pipeline for the whole session: its datastore, its Dagster
    instance's folder and its result. Tests that need "the pipeline after one complete run"
    start from private copies of both (``reference_baseline``, ``reference_instance``): the cold
    run is the slow part, the copies take milliseconds, and each test may still change anything."""
    from tests.support.runs import reference_defs, run_job

    base = tmp_path_factory.mktemp("reference_cold_run")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AML_DATASTORE_ROOT", str(base / "datastore"))
        env.setenv("AML_CACHE_DIR", str(base / "cache"))
        env.setenv("AML_STATE_DIR", str(base / "state"))
        env.delenv("DAGSTER_HOME", raising=False)
        project = base / "project"
        shutil.copytree(REPO / "code", project / "code", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "data", project / "data")
        (base / "instance").mkdir()
        with instance_for_test(temp_dir=str(base / "instance"), set_dagster_home=False) as inst:
            first = run_job(reference_defs(project, spark_pool), inst)
            assert first.success, "the shared cold run of the reference pipeline failed"
    return base, first


@pytest.fixture
def reference_instance(reference_cold_run, tmp_path: Path) -> Iterator[DagsterInstance]:
    """A private copy of the shared cold run's Dagster instance (its run and events included)."""
    base, _ = reference_cold_run
    folder = tmp_path / "reference_instance"
    shutil.copytree(base / "instance", folder)
    with instance_for_test(temp_dir=str(folder)) as inst:
        yield inst


@pytest.fixture
def reference_baseline(reference_cold_run, project: Path, spark_pool: SparkPool, datastore: LocalDatastore):
    """(definitions on this test's project copy, the cold run's result), with this test's
    datastore a copy of the cold run's: the reference pipeline after one complete run."""
    from tests.support.runs import reference_defs

    base, first = reference_cold_run
    shutil.copytree(base / "datastore", datastore.root_dir(), symlinks=True, dirs_exist_ok=True)
    return reference_defs(project, spark_pool), first
