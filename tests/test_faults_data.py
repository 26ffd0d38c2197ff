"""Fault injection on the data path: corrupted published files, a full disk, a storage service
killed mid-upload, and attempts to rewrite registry records by hand.

Each fault must end in a clear error or a recompute, never in reused or registered bad data, and
never leave a record that breaks a later run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from aml_assets import (
    DatasetRegistry,
    DatastoreError,
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PythonScriptStep,
    TabularDataset,
)
from aml_assets.cli import main
from aml_assets.data import layout
from aml_assets.reuse.gc import collect_garbage
from aml_assets.reuse.verify import verify_store
from tests.support.azurite import AzuriteServer, azurite_available, azurite_blob_binary
from tests.support.runs import log_messages, materializations, run_job, step_failure_messages
from tests.support.small import small_defs, write_project

pytestmark = [pytest.mark.fault, pytest.mark.slow]


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), out=out), out.getvalue()


def _commits(store) -> list[str]:
    return [
        f"{layout.commits_dir(step, fp)}/{name}"
        for step in store.list_dir(layout.STEPS)
        for fp in store.list_dir(layout.step_dir(step))
        for name in store.list_dir(layout.commits_dir(step, fp))
        if name.endswith(".json")
    ]


def _assert_records_sound(root: Path) -> list[Path]:
    """No empty or truncated record: every JSON record parses. Returns the temporary files of
    interrupted writes (``.<name>.<uuid>.tmp``): never read as records, removed by gc."""
    leftovers = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.name.endswith(".tmp"):
            leftovers.append(path)
        elif path.suffix == ".json":
            raw = path.read_bytes()
            assert raw, f"empty record left: {path}"
            json.loads(raw)
    return leftovers


# --- (a) a published file is corrupted -----------------------------------------------------------
def test_corrupted_published_file_is_never_reused_or_registered(tmp_path, instance, datastore):
    first = run_job(small_defs(tmp_path), instance, job="small")
    assert first.success
    corrupt_rel = f"{first.output_for_node('copy', 'copied').path}/data.csv"
    corrupt = datastore.local_path(corrupt_rel)
    assert corrupt.stat().st_mode & 0o777 == 0o444
    size = corrupt.stat().st_size
    # As root the read-only bits do not stop a writer: flip 60 bytes in the middle, size unchanged.
    with open(corrupt, "r+b") as fh:
        fh.seek(size // 2 - 30)
        chunk = fh.read(60)
        fh.seek(size // 2 - 30)
        fh.write(bytes(b ^ 0x5A for b in chunk))
    assert corrupt.stat().st_size == size

    code, out = _cli("--root", str(datastore.root_dir()), "verify")
    assert code == 1
    assert f"{corrupt_rel} changed since it was published" in out
    assert "1 corrupt" in out

    second = run_job(small_defs(tmp_path), instance, job="small")
    assert second.success
    mats = materializations(second)["copied"]
    assert mats["reused"] is False
    assert "corrupt" in mats["runs_because"] and corrupt_rel in mats["runs_because"]
    assert any(
        "are corrupt" in m and corrupt_rel in m for m in log_messages(instance, second.run_id)
    )
    # The registered version 1 points at the corrupt copy: it is not reused for this content.
    assert mats["dataset_version"] == 2
    assert mats["dataset_version_created"] is True
    assert mats["dataset_replaced_corrupt_version"] == 1
    registry = DatasetRegistry(datastore)
    latest = registry.get("copied")
    assert latest.version == 2 and latest.ref.path != str(Path(corrupt_rel).parent)
    assert len(latest.to_pandas_dataframe()) == 20

    # After the recompute the new data is sound; only the old version still points at bad data.
    report = verify_store(datastore)
    assert [p.path for p in report.problems] == [str(Path(corrupt_rel).parent)]
    assert report.problems[0].used_by == ["dataset 'copied' version 1"]
    code, out = _cli("--root", str(datastore.root_dir()), "verify", "--dataset", "copied")
    assert code == 1 and "2 registered version(s): 1 corrupt" in out

    third = run_job(small_defs(tmp_path), instance, job="small")
    mats = materializations(third)["copied"]
    assert mats["reused"] is True and mats["reused_from_run"] == second.run_id
    assert (mats["dataset_version"], mats["dataset_version_created"]) == (2, False)


# --- (b) the disk fills up -------------------------------------------------------------------------
@contextlib.contextmanager
def _tmpfs(where: Path, size: str = "2m"):
    where.mkdir(parents=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs at {where} (needs root and CAP_SYS_ADMIN): {out.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(disk: Path, leave: int = 0) -> Path:
    """Fill a filesystem, leaving about ``leave`` bytes free; returns the filler to delete."""
    filler = disk / f"filler-{uuid.uuid4().hex[:6]}"
    st = os.statvfs(disk)
    todo = max(0, st.f_bavail * st.f_frsize - leave)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while todo > 0 or not leave:
            chunk = min(todo, 65536) if todo > 0 else 4096
            os.write(fd, b"\0" * chunk)
            todo -= chunk
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    return filler


def _failure(result) -> str:
    return "\n".join(step_failure_messages(result))


def test_full_disk_fails_cleanly_and_the_next_run_succeeds(tmp_path, instance, monkeypatch):
    disk = tmp_path / "disk"
    with _tmpfs(disk):
        monkeypatch.setenv("AML_DATASTORE_ROOT", str(disk / "store"))
        store = LocalDatastore(name="workspace")
        project = tmp_path / "proj"
        write_project(project)
        rows = "id,value\n" + "".join(f"{i},{i * i}\n" for i in range(40000))  # ~0.5 MB
        (project / "seed.csv").write_text(rows)
        store.write_bytes("numbers/numbers.csv", rows.encode())

        interrupted: list[Path] = []

        def clean_failure(result, *expected: str) -> None:
            assert not result.success
            text = _failure(result)
            for phrase in expected:
                assert phrase in text, text[-3000:]
            assert _commits(store) == []
            assert DatasetRegistry(store).versions("copied") == []
            interrupted.extend(_assert_records_sound(store.root_dir()))

        # 1. Full while caching the source's statistics.
        filler = _fill(disk)
        result = run_job(small_defs(project), instance, job="small")
        clean_failure(result, "No space left on device")
        filler.unlink()

        # 2. Full while the step writes its output (its scratch is on the datastore's disk).
        filler = _fill(disk, leave=200_000)
        result = run_job(small_defs(project), instance, job="small")
        clean_failure(result, "Step 'copy' failed", "No space left on device")
        assert store.list_dir("_tmp") == [], "the attempt's scratch is removed"
        filler.unlink()

        # 3. Full right after publishing, before the commit record is written.
        from aml_assets.data.datastore import LocalDatastore as Local

        original = Local.publish_dir
        fillers: list[Path] = []

        def publish_then_fill(self, local_dir, rel):
            original(self, local_dir, rel)
            fillers.append(_fill(disk))

        monkeypatch.setattr(Local, "publish_dir", publish_then_fill)
        result = run_job(small_defs(project), instance, job="small")
        clean_failure(result, "No space left on device")
        monkeypatch.setattr(Local, "publish_dir", original)
        for f in fillers:
            f.unlink()

        # Space is back: the next run succeeds and registers sound data.
        result = run_job(small_defs(project), instance, job="small")
        assert result.success, _failure(result)
        mats = materializations(result)["copied"]
        assert mats["reused"] is False and mats["dataset_version"] == 1
        assert mats["dagster/row_count"] == 40000
        assert verify_store(store).ok
        # What the failed attempts left (the uncommitted published attempt, the temporary file
        # of an interrupted record write) is garbage: gc removes it, and nothing else.
        report = collect_garbage(store, older_than_seconds=0, work_dirs=[])
        assert any(report.kinds[r] == "uncommitted attempt" for r in report.removed)
        for path in set(interrupted):
            assert str(path.relative_to(store.root_dir())) in report.removed
        assert _assert_records_sound(store.root_dir()) == []
        assert verify_store(store).ok


# --- (c) the storage service dies mid-upload ------------------------------------------------------
class _RestartableAzurite(AzuriteServer):
    """Azurite that can be SIGKILLed and started again on the same port and data folder."""

    def kill(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self) -> None:
        assert self.location is not None and self.port is not None
        cmd = [
            str(azurite_blob_binary()), "--blobHost", self.host, "--blobPort", str(self.port),
            "--location", str(self.location / "data"), "--skipApiVersionCheck",
            "--disableTelemetry", "--silent",
        ]
        t0 = time.monotonic()
        with open(self._stdout_path, "ab") as out, open(self._stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=str(self.location / "data"), start_new_session=True,
            )
        self._wait_until_listening(t0)

    def wait_persisted(self, text: str, timeout: float = 20.0) -> None:
        """Azurite saves its metadata every 5 s: wait until ``text`` is in the saved database."""
        db = self.location / "data" / "__azurite_db_blob__.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if db.exists() and text in db.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise AssertionError(f"Azurite did not persist {text!r} within {timeout:.0f} s")


BIG_OUTPUT = """
import os, sys
from pathlib import Path
out = Path(sys.argv[2])
for i in range(12):
    (out / f"part-{i:02d}.bin").write_bytes(os.urandom(1_000_000))
"""


def _big_pipeline(root: Path) -> Pipeline:
    code = root / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "big.py").write_text(BIG_OUTPUT)
    (root / "seed.csv").write_text("id\n1\n2\n")
    numbers = TabularDataset.from_delimited_files("numbers", "numbers/numbers.csv", seed=root / "seed.csv")
    blobs = OutputDataset("blobs", format="files").register(description="random blobs")
    return Pipeline("big", steps=[
        PythonScriptStep(name="big", script="big.py", source_directory=code,
                         arguments=[numbers.as_download("src"), blobs]),
    ])


@pytest.mark.azurite
@pytest.mark.skipif(not azurite_available(), reason="Azurite is not installed (npm ci --prefix tools/azurite)")
def test_azurite_killed_mid_upload_commits_nothing_and_recovers(tmp_path, instance, monkeypatch):
    from adlfs import AzureBlobFileSystem

    from aml_assets.data.azure import AzureBlobDatastore

    server = _RestartableAzurite()
    server.start()
    try:
        server.create_container("data")
        server.wait_persisted('"name":"data"')

        def defs():
            store = AzureBlobDatastore(
                name="workspace", container="data", connection_string=server.connection_string,
                prefix="aml", retry_total=1, connection_timeout=2,
            )
            return store, _big_pipeline(tmp_path / "proj").to_definitions(
                {"workspace": store, "cpucluster": LocalProcessCluster(max_concurrent_steps=1)}
            )

        original = AzureBlobFileSystem._put_file
        uploads: list[str] = []

        async def put_then_die(self, lpath, rpath, *args, **kwargs):
            if "/steps/big/" in rpath:
                uploads.append(rpath)
                if len(uploads) == 3:
                    server.kill()  # Azurite dies with the upload of the output half done
            return await original(self, lpath, rpath, *args, **kwargs)

        monkeypatch.setattr(AzureBlobFileSystem, "_put_file", put_then_die)
        store, first_defs = defs()
        started = time.monotonic()
        result = run_job(first_defs, instance, job="big")
        assert not result.success
        assert time.monotonic() - started < 120
        failure = _failure(result)
        assert "Azure Blob endpoint" in failure and "unreachable" in failure, failure[-3000:]
        assert server.account_key not in failure
        monkeypatch.setattr(AzureBlobFileSystem, "_put_file", original)

        server.restart()  # same port, same data folder
        store, second_defs = defs()
        # (Azurite keeps what it had saved; the last seconds before a SIGKILL may be lost.)
        assert _commits(store) == []
        assert DatasetRegistry(store).versions("blobs") == []

        result = run_job(second_defs, instance, job="big")
        assert result.success, _failure(result)
        mats = materializations(result)["blobs"]
        assert mats["reused"] is False and mats["dataset_version"] == 1
        assert mats["file_count"] == 12
        assert verify_store(store).ok
        # A half-uploaded attempt (if Azurite had saved any of it) is garbage: nothing refers to
        # it. Collecting removes nothing the registered version needs.
        report = collect_garbage(store, older_than_seconds=0, work_dirs=[])
        assert {report.kinds[r] for r in report.removed} <= {"uncommitted attempt", "old per-run reference"}
        assert verify_store(store).ok
        assert DatasetRegistry(store).get("blobs").version == 1
    finally:
        server.stop()


# --- (d) registry records cannot be rewritten by hand ----------------------------------------------
def test_registry_records_cannot_be_rewritten_through_the_public_api(tmp_path, instance, datastore, capsys):
    first = run_job(small_defs(tmp_path), instance, job="small")
    assert first.success
    record = layout.version_record("copied", 1)
    before = datastore.read_bytes(record)
    replacement = tmp_path / "000001.json"
    replacement.write_text('{"hacked": true}')
    attempts = [
        lambda: datastore.write_bytes(record, b"{}"),
        lambda: datastore.create_exclusive(layout.version_record("copied", 2), b"{}"),
        lambda: datastore.upload_files([replacement], layout.versions_dir("copied"), overwrite=True),
        lambda: datastore.delete(record),
        lambda: datastore.delete(layout.DATASETS),
        lambda: datastore.write_bytes(layout.tombstone_record("copied", 1), b"{}"),
        lambda: datastore.delete(first.output_for_node("copy", "copied").path),
    ]
    for attempt in attempts:
        with pytest.raises(DatastoreError) as err:
            attempt()
        message = str(err.value)
        assert "it holds records aml-assets manages" in message
        assert "aml-assets datasets delete" in message
    assert datastore.read_bytes(record) == before
    assert DatasetRegistry(datastore).versions("copied") == [1]

    # A forced delete of the latest version, then the next registration: a new number.
    code, out = _cli("--root", str(datastore.root_dir()), "datasets", "delete", "copied", "1", "--force")
    assert code == 0
    second = run_job(small_defs(tmp_path), instance, job="small")
    mats = materializations(second)["copied"]
    assert mats["reused"] is True  # the step's committed output is still there and sound
    assert (mats["dataset_version"], mats["dataset_version_created"]) == (2, True)
    assert DatasetRegistry(datastore).versions("copied") == [2]

    # A malformed record (written behind aml-assets' back) is skipped by name, not a crash.
    datastore.local_path(layout.version_record("copied", 3)).write_text('{"name": "copied", "ref": 1')
    capsys.readouterr()
    code, out = _cli("--root", str(datastore.root_dir()), "datasets", "list")
    err = capsys.readouterr().err
    assert code == 0
    assert "copied  versions 2  latest v2  20 rows" in out
    assert "warning: skipped datasets/copied/versions/000003.json is malformed" in err
    # And the pipeline keeps registering past it.
    third = run_job(small_defs(tmp_path, mode="changed"), instance, job="small")
    assert third.success
    mats = materializations(third)["copied"]
    assert mats["reused"] is False  # another parameter value: recomputed, to the same content
    assert (mats["dataset_version"], mats["dataset_version_created"]) == (2, False)


def test_corrupt_caches_are_discarded_and_rebuilt(tmp_path, instance, datastore, monkeypatch):
    """An emptied statistics cache entry, an emptied latest-run pointer and a garbage stat-cache
    database each once broke every later run; each is now logged, discarded and rebuilt."""
    defs = small_defs(tmp_path)
    first = run_job(defs, instance, job="small")
    assert first.success
    stats = list(datastore.local_path(layout.STATS).iterdir())
    assert stats
    for path in stats:
        path.write_bytes(b"")
    datastore.local_path(layout.latest_run_pointer("copy")).write_bytes(b"")
    cache_db = Path(os.environ["AML_CACHE_DIR"]) / "stat-cache.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{cache_db}{suffix}").unlink(missing_ok=True)
    cache_db.write_bytes(b"this is not a database" * 100)

    second = run_job(defs, instance, job="small")
    assert second.success
    assert materializations(second)["copied"]["reused"] is True
    messages = "\n".join(log_messages(instance, second.run_id))
    assert "Discarding the unreadable statistics cache" in messages
    assert all(json.loads(p.read_bytes())["row_count"] == 20 for p in stats)  # rebuilt
    # The pointer is rewritten whole by the next decision.
    assert json.loads(datastore.read_bytes(layout.latest_run_pointer("copy")))["run_id"] == second.run_id


def test_a_users_own_datasets_folder_stays_theirs(datastore, tmp_path):
    """Only the registry's records are protected: a user's data in a folder named 'datasets'
    can be uploaded, rewritten and deleted as usual, until it holds registered versions."""
    local = tmp_path / "sales.csv"
    local.write_text("a\n1\n")
    assert datastore.upload_files([local], "datasets/raw") == ["datasets/raw/sales.csv"]
    datastore.upload_files([local], "datasets/raw", overwrite=True)
    datastore.write_bytes("datasets/notes.txt", b"mine")
    datastore.delete("datasets/raw")
    datastore.delete("datasets")
    datastore._create_record(layout.version_record("copied", 1), b"{}")
    for rel in (layout.DATASETS, "datasets/copied", layout.versions_dir("copied")):
        with pytest.raises(DatastoreError, match="it holds records aml-assets manages"):
            datastore.delete(rel)
