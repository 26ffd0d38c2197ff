"""A private PostgreSQL server for tests: the product's ``PostgresServer`` (its own data
directory, loopback only, a free port; see ``aml_assets/service/servers.py``), shared by the
session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from aml_assets.service.servers import PostgresNotInstalled, PostgresServer

__all__ = ["PostgresServer", "postgres"]


@pytest.fixture(scope="session")
def postgres():
    """A running PostgreSQL server for the session. Fails (does not skip) when PostgreSQL is
    missing under CI=true; skips locally with the install command in the reason."""
    # Not under pytest's tmp_path: its folders are 0700 root, which the postgres user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="aml-assets-postgres-"))
    server = PostgresServer(base)
    try:
        server.start()
    except PostgresNotInstalled as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
