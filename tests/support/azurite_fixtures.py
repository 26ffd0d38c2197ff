"""pytest fixtures for the Azurite blob emulator.

Use from a test module::

    from tests.support.azurite_fixtures import azurite  # noqa: F401

or register once for the whole suite in the root conftest::

    pytest_plugins = ["tests.support.azurite_fixtures"]

(Importing the fixture into several modules gives each module its own FixtureDef, so the
session-scoped server would start once per module; registering it as a plugin shares one.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.azurite import AzuriteNotInstalled, AzuriteServer


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    """A running azurite-blob for the session. Fails (does not skip) when Azurite is missing
    under CI=true; skips locally with the install command in the reason."""
    server = AzuriteServer()
    try:
        server.start()
    except AzuriteNotInstalled as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()
