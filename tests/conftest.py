"""Shared fixtures: an isolated datastore and cache per test, a copy of the reference project."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from aml_assets import LocalDatastore, SparkPool

pytest_plugins = ["tests.support.azurite_fixtures"]

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
