"""Garbage collection removes what killed steps left behind, and never anything referenced."""

from __future__ import annotations

import io
import os
import time

import pytest

from aml_assets import DatasetRegistry
from aml_assets.cli import main
from aml_assets.reuse.gc import collect_garbage
from tests.support.runs import materializations, run_job
from tests.support.small import small_defs


def _backdate(path, hours=48):
    past = time.time() - hours * 3600
    for p in [path, *path.rglob("*")]:
        os.utime(p, (past, past))


def test_gc_removes_leftovers_and_keeps_published_data(tmp_path, instance, datastore):
    first = run_job(small_defs(tmp_path), instance, job="small")
    assert first.success
    published = datastore.local_path(first.output_for_node("copy", "copied").path)
    fingerprint_dir = published.parent.parent

    # What a step process killed with SIGKILL leaves: scratch, and an attempt published but
    # never committed. One of each is old, one scratch is young (a step still running).
    old_scratch = datastore.local_path("_tmp/copy-dead")
    old_scratch.mkdir(parents=True)
    (old_scratch / "half.csv").write_text("id\n1\n")
    orphan = fingerprint_dir / "deadbeef-00000000" / "copied"
    orphan.mkdir(parents=True)
    (orphan / "data.csv").write_text("partial")
    young = datastore.local_path("_tmp/copy-running")
    young.mkdir()
    (young / "rows.csv").write_text("id\n")
    for path in (old_scratch, orphan.parent, published.parent, datastore.local_path("_refs")):
        _backdate(path)

    out = io.StringIO()
    assert main(["--root", str(datastore.root_dir()), "gc", "--dry-run"], out=out) == 0
    assert "Would remove _tmp/copy-dead" in out.getvalue()
    assert old_scratch.exists(), "a dry run deletes nothing"

    report = collect_garbage(datastore)
    assert "_tmp/copy-dead" in report.removed
    assert any(r.endswith("/deadbeef-00000000") for r in report.removed)
    assert not old_scratch.exists() and not orphan.exists()
    assert young.exists() and report.kept_young >= 1
    # The committed output, and the dataset version pointing at it, survive and still load.
    assert (published / "data.csv").is_file()
    assert len(DatasetRegistry(datastore).get("copied").to_pandas_dataframe()) == 20
    assert datastore.local_path("_refs/copied/latest.json").is_file()

    # And reuse still works after a collection.
    second = run_job(small_defs(tmp_path), instance, job="small")
    assert materializations(second)["copied"]["reused"] is True


def _gc(root, *args: str) -> str:
    out = io.StringIO()
    assert main(["--root", str(root), "gc", *args], out=out) == 0
    return out.getvalue()


def test_gc_wording_says_nothing_to_remove_or_what_was_removed(tmp_path, instance, datastore):
    assert run_job(small_defs(tmp_path), instance, job="small").success
    # Right after a clean run: the per-run references are young, nothing else is left over.
    out = _gc(datastore.root_dir())
    assert "Nothing to remove; kept 2 younger than 24 h." in out  # the run's two references
    assert "leftover" not in out

    from aml_assets.data.datastore import make_read_only

    scratch = datastore.local_path("_tmp/copy-dead")
    scratch.mkdir(parents=True)
    (scratch / "x.csv").write_text("1\n")
    # A published (read-only) attempt no commit names: gc makes it writable to remove it.
    fingerprint_dir = next(datastore.local_path("steps/copy").glob("*/commits")).parent
    orphan = fingerprint_dir / "deadbeef-00000000" / "copied"
    orphan.mkdir(parents=True)
    (orphan / "data.csv").write_text("partial")
    make_read_only(orphan.parent)
    half = datastore.local_path(f"datasets/copied/versions/.000002.json.{'a' * 32}.tmp")
    half.write_text('{"na')
    for path in (scratch, orphan.parent, half, datastore.local_path("_refs")):
        _backdate(path)
    out = _gc(datastore.root_dir())
    assert (
        "Removed 5 unused item(s) (1 scratch folder, 1 uncommitted attempt, 1 half-written "
        "record, 2 old per-run references); kept 0 younger than 24 h." in out
    )
    assert "Removed _tmp/copy-dead (scratch folder)" in out
    assert not scratch.exists() and not orphan.parent.exists() and not half.exists()
    assert DatasetRegistry(datastore).versions("copied") == [1]
    assert "Nothing to remove" in _gc(datastore.root_dir())


def test_gc_removes_old_input_copies_of_killed_steps(tmp_path, monkeypatch, datastore):
    import tempfile

    from aml_assets.data.datastore import default_cache_dir
    from aml_assets.reuse.gc import default_work_dirs

    legacy_tmp = tmp_path / "systmp"
    legacy_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(legacy_tmp))
    work = default_cache_dir() / "work"
    assert default_work_dirs() == [work, legacy_tmp]
    old = work / "aml-train-inputs-abc123"
    legacy = legacy_tmp / "aml-copy-inputs-xyz"
    young = work / "aml-train-inputs-running"
    unrelated = legacy_tmp / "aml-titanic-download"  # a user's dataset download: never touched
    for folder in (old, legacy, young, unrelated):
        (folder / "numbers_in").mkdir(parents=True)
        (folder / "numbers_in" / "numbers.csv").write_text("id\n1\n")
    os.chmod(old / "numbers_in", 0o555)
    for folder in (old, legacy, unrelated):
        _backdate(folder)

    dry = collect_garbage(datastore, dry_run=True)
    assert sorted(dry.removed_local) == sorted([str(old), str(legacy)]) and old.exists()
    report = collect_garbage(datastore)
    assert sorted(report.removed_local) == sorted([str(old), str(legacy)])
    assert report.removed == [] and report.kept_young_local == 1
    assert not old.exists() and not legacy.exists()
    assert young.exists() and unrelated.exists()
    assert "2 step input copies" in report.summary()


def test_gc_keep_runs_prunes_run_records_only_when_asked(tmp_path, instance, datastore):
    from aml_assets.reuse.ledger import StepLedger

    for _ in range(3):
        assert run_job(small_defs(tmp_path), instance, job="small").success
    ledger = StepLedger(datastore, "copy")
    assert len(ledger.record_names()) == 3
    out = _gc(datastore.root_dir())
    assert "Pruned" not in out and len(ledger.record_names()) == 3

    newest = ledger.record_names()[-1]
    out = _gc(datastore.root_dir(), "--keep-runs", "1", "--dry-run")
    assert "Would prune 2 old run record(s), keeping the newest 1 of each step." in out
    assert len(ledger.record_names()) == 3
    out = _gc(datastore.root_dir(), "--keep-runs", "1")
    assert "Pruned 2 old run record(s), keeping the newest 1 of each step." in out
    assert ledger.record_names() == [newest]
    # The next run still decides (and reuses) from what is left.
    again = run_job(small_defs(tmp_path), instance, job="small")
    assert materializations(again)["copied"]["reused"] is True

    err = io.StringIO()
    assert main(["--root", str(datastore.root_dir()), "gc", "--keep-runs", "0"], out=err) == 2


def test_gc_never_removes_attempts_of_a_fingerprint_with_an_unreadable_commit(datastore):
    fp = "steps/s/0123abcd"
    datastore._write_record(f"{fp}/some-attempt/out/data.bin", b"maybe committed")
    datastore._write_record(f"{fp}/commits/0001-x.json", b"{truncated")
    report = collect_garbage(datastore, older_than_seconds=0)
    assert report.removed == []
    assert datastore.exists(f"{fp}/some-attempt/out/data.bin")
    assert any("unreadable" in s for s in report.skipped)


@pytest.mark.azurite
def test_gc_on_azure_with_per_run_refs(azurite, monkeypatch):
    """adlfs answers find() on a blob with a list of names: gc used to crash on every ref."""
    import uuid

    from aml_assets.data.azure import AzureBlobDatastore

    container = f"g{uuid.uuid4().hex[:16]}"
    azurite.create_container(container)
    store = AzureBlobDatastore(
        name="workspace", container=container, connection_string=azurite.connection_string, prefix="aml"
    )
    store.write_bytes("_refs/copied/run-1.json", b"{}")
    store.write_bytes("_refs/copied/latest.json", b"{}")
    store.write_bytes("_tmp/copy-dead/part.csv", b"1\n")
    store._write_record("steps/copy/fp/lost-attempt/copied/data.csv", b"1\n")
    store._write_record("steps/copy/fp/commits/.0001-x.json.%s.tmp" % ("b" * 32), b"{")

    young = collect_garbage(store, older_than_seconds=3600, work_dirs=[])
    assert young.removed == [] and young.kept_young == 4
    report = collect_garbage(store, older_than_seconds=0, work_dirs=[])
    assert sorted(report.removed) == sorted([
        "_refs/copied/run-1.json",
        "_tmp/copy-dead",
        "steps/copy/fp/lost-attempt",
        "steps/copy/fp/commits/.0001-x.json.%s.tmp" % ("b" * 32),
    ])
    assert store.exists("_refs/copied/latest.json")
    assert not store.exists("_refs/copied/run-1.json") and not store.exists("_tmp/copy-dead/part.csv")

    monkeypatch.setenv("AML_DATASTORE", "azure")
    monkeypatch.setenv("AML_AZURE_CONTAINER", container)
    monkeypatch.setenv("AML_AZURE_PREFIX", "aml")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    store.write_bytes("_refs/copied/run-2.json", b"{}")
    out = io.StringIO()
    assert main(["gc", "--older-than-hours", "0"], out=out) == 0
    assert "Removed _refs/copied/run-2.json (old per-run reference)" in out.getvalue()
