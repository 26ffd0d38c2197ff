"""Safe first use of a Dagster instance (``$DAGSTER_HOME``) by several processes at once.

Dagster creates its SQLite storages lazily, in whichever process opens the instance first, with a
check-then-create that is not atomic across processes: each storage checks for an alembic
revision, creates its tables, then stamps one. Two processes opening a fresh home together both
see "no revision"; one fails with ``table runs already exists``, and the other, seeing the tables
but no revision yet, stamps the *legacy* revision while the first stamps ``head``, leaving two
rows in ``alembic_version``. From then on every command fails with alembic's "more than one head".
(Dagster's ``threading.Lock`` around stamping only serialises threads of one process.)

``ensure_instance`` does that first open once, under an exclusive ``flock`` on a lock file in the
home, and writes a marker when it succeeded. Later calls read the marker and return without
importing Dagster or taking the lock. Once initialised, several runs at once on one machine work
(SQLite in WAL mode, one event-log file per run): see the README.

Run ``python -m aml_assets.service.instance [DAGSTER_HOME] [--default-config dagster.yaml]``
before starting Dagster commands (the Makefile's ``run`` and ``ui`` targets do).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from aml_assets.errors import AmlAssetsError

CONFIG_NAME = "dagster.yaml"
LOCK_NAME = ".aml_instance.lock"
MARKER_NAME = ".aml_instance_initialized"


#: Replaced by the home's absolute path when a default ``dagster.yaml`` is installed in a home.
HOME_PLACEHOLDER = "{dagster_home}"

#: Added to an installed ``dagster.yaml`` that chooses no event log storage of its own.
_EVENT_LOG_BLOCK = """
# Added by aml_assets.service.instance: Dagster's SQLite event log in this home, faster
# (aml_assets/service/event_log.py).
event_log_storage:
  module: aml_assets.service.event_log
  class: FastSqliteEventLogStorage
  config:
    base_dir: "{dagster_home}/history/runs"
"""


def home_config(default: str, home: Path) -> str:
    """The ``dagster.yaml`` a default config becomes in ``home``: with the faster event log
    (unless it chooses its own event log or storage) and ``{dagster_home}`` as ``home``'s path,
    so storages get this home's absolute folder whatever the caller's environment says."""
    chooses_storage = any(
        line.startswith(("event_log_storage:", "storage:")) for line in default.splitlines()
    )
    text = default if chooses_storage else default.rstrip("\n") + "\n" + _EVENT_LOG_BLOCK
    return text.replace(HOME_PLACEHOLDER, str(home))


class InstanceError(AmlAssetsError):
    """A Dagster instance (``$DAGSTER_HOME``) could not be initialised or opened."""


def ensure_instance(dagster_home: Path, *, default_config: Path | None = None) -> None:
    """Create and migrate the Dagster instance at ``dagster_home`` once; safe to call concurrently.

    ``default_config``: a ``dagster.yaml`` copied into the home when the home has none or an older
    one (what ``make`` did with a file rule), atomically and under the lock.

    Idempotent: when the marker matches this Dagster version and the home's ``dagster.yaml``, it
    returns at once (no lock, no Dagster import). Otherwise it takes the lock, re-checks, opens
    the instance (which creates and stamps every storage), disposes it and writes the marker.
    """
    home = Path(dagster_home).expanduser().absolute()
    if default_config is not None and not Path(default_config).is_file():
        raise InstanceError(f"default Dagster config '{default_config}' does not exist")
    if not _config_stale(home, default_config) and _is_initialised(home):
        return
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / LOCK_NAME):
        if default_config is not None and _config_stale(home, default_config):
            _atomic_write(home / CONFIG_NAME, home_config(Path(default_config).read_text(), home))
        if _is_initialised(home):
            return
        _initialise(home)
        _atomic_write(home / MARKER_NAME, _expected_marker(home))


def _config_stale(home: Path, default_config: Path | None) -> bool:
    """Whether the home's ``dagster.yaml`` is missing or older than the default (make's rule)."""
    if default_config is None:
        return False
    try:
        return Path(default_config).stat().st_mtime_ns > (home / CONFIG_NAME).stat().st_mtime_ns
    except FileNotFoundError:
        return True


def _expected_marker(home: Path) -> str:
    config = home / CONFIG_NAME
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    return json.dumps({"dagster": version("dagster"), "config_sha256": digest}, sort_keys=True)


def _is_initialised(home: Path) -> bool:
    try:
        return (home / MARKER_NAME).read_text() == _expected_marker(home)
    except (FileNotFoundError, NotADirectoryError):
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes, even if this process dies
        yield
    finally:
        os.close(fd)


def _initialise(home: Path) -> None:
    from dagster import DagsterInstance

    try:
        instance = DagsterInstance.from_config(str(home))
    except Exception as exc:
        hint = ""
        if "more than one head" in str(exc) or "already exists" in str(exc):
            hint = (
                " Its storage was probably corrupted by several Dagster commands starting on it at "
                "once before it was initialised; move it aside (its run history is lost) and "
                f"initialise a fresh one: mv '{home}' '{home}.broken'"
            )
        raise InstanceError(
            f"cannot initialise the Dagster instance at '{home}': {exc}.{hint}"
        ) from exc
    try:
        # The constructor already created every storage; touch each to be sure it is usable.
        instance.get_runs_count()
        instance.event_log_storage.get_asset_records()
        if instance.schedule_storage is not None:
            instance.schedule_storage.all_instigator_state()
    finally:
        instance.dispose()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aml_assets.service.instance",
        description="Initialise a Dagster instance once (safe when run concurrently).",
    )
    parser.add_argument("home", nargs="?", default=os.environ.get("DAGSTER_HOME"),
                        help="the instance's directory (default: $DAGSTER_HOME)")
    parser.add_argument("--default-config", type=Path, default=None,
                        help="dagster.yaml to copy into the home when it has none or an older one")
    args = parser.parse_args(argv)
    if not args.home:
        parser.error("give the instance's directory, or set DAGSTER_HOME")
    try:
        ensure_instance(Path(args.home), default_config=args.default_config)
    except InstanceError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
