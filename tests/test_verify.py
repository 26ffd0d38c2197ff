"""``aml-assets verify`` / ``verify_store``: every committed output and registered version is
re-checked against its record, like ``nix-store --verify --check-contents``."""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from aml_assets import DatasetRegistry
from aml_assets.cli import main
from aml_assets.data import layout
from aml_assets.data.content import data_manifest, manifest_digest
from aml_assets.data.datasets import DatasetRef
from aml_assets.reuse.ledger import StepLedger
from aml_assets.reuse.records import Commit, PublishedOutput
from aml_assets.reuse.verify import file_records, verify_store, with_stored_digests
from tests.support.runs import run_job
from tests.support.small import small_defs
from tests.test_registry_integrity import flip_bytes


def _verify(root: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--root", str(root), "verify", *args], out=out)
    return code, out.getvalue()


def commit_and_register(store, tmp_path: Path, step: str, rows: str, dataset: str | None = None):
    """Publish one output the way an attempt does, commit it, optionally register it."""
    fingerprint, attempt = uuid.uuid4().hex, f"run1-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "scratch" / attempt / "out"
    local.mkdir(parents=True)
    (local / "part.csv").write_text(rows)
    entries = data_manifest(local)
    rel = layout.output_path(step, fingerprint, attempt, "out")
    store.publish_dir(local, rel)
    output = PublishedOutput(
        rel, manifest_digest(entries), len(entries), sum(e.size for e in entries), None,
        with_stored_digests(store, rel, file_records(entries)),
    )
    StepLedger(store, step).commit(
        Commit(fingerprint, "run1", {"out": output}, {}, time.time()), attempt
    )
    if dataset:
        ref = DatasetRef(
            name=dataset, datastore="workspace", path=rel, uri=store.uri(rel), format="csv",
            content_hash=output.content_hash, file_count=output.file_count,
            byte_count=output.byte_count, files=[asdict(f) for f in output.files],
        )
        DatasetRegistry(store).register(ref)
    return output


def test_verify_after_a_run_then_after_corruption(tmp_path, instance, datastore):
    result = run_job(small_defs(tmp_path), instance, job="small")
    assert result.success
    code, out = _verify(datastore.root_dir())
    assert code == 0, out
    assert (
        "Checked 1 step output(s) of 1 commit(s) and 1 registered version(s): 0 corrupt, "
        "0 missing, 0 unreadable record(s)." in out
    )

    published = result.output_for_node("copy", "copied").path
    flip_bytes(datastore.local_path(f"{published}/data.csv"))
    code, out = _verify(datastore.root_dir())
    assert code == 1
    assert f"CORRUPT {datastore.uri(published)}" in out
    assert f"{published}/data.csv changed since it was published (its BLAKE3 differs)" in out
    assert "used by: commit steps/copy/" in out and "dataset 'copied' version 1" in out
    assert out.count("changed since it was published") == 1  # one output, checked once
    assert "1 corrupt, 0 missing" in out

    code, out = _verify(datastore.root_dir(), "--dataset", "copied")
    assert code == 1
    assert "Checked 0 step output(s) of 0 commit(s) and 1 registered version(s): 1 corrupt" in out
    code, out = _verify(datastore.root_dir(), "--dataset", "numbers")
    assert code == 0 and "0 registered version(s)" in out


def test_verify_reports_missing_data_and_unreadable_records(datastore, tmp_path):
    good = commit_and_register(datastore, tmp_path, "prep", "a\n1\n", dataset="prepared")
    gone = commit_and_register(datastore, tmp_path, "train", "a\n2\n", dataset="model")
    report = verify_store(datastore)
    assert report.ok and (report.commits, report.outputs, report.versions) == (2, 2, 2)

    datastore._delete_record(gone.path)
    step, fingerprint = "prep", good.path.split("/")[2]
    datastore._write_record(layout.commit_record(step, fingerprint, 1, "zzz"), b"{not json")
    datastore._write_record(layout.version_record("prepared", 2), b'{"name": "prepared"}')

    report = verify_store(datastore)
    assert not report.ok
    assert [p.path for p in report.missing] == [gone.path]
    assert report.missing[0].used_by == [
        f"commit {layout.commits_dir('train', gone.path.split('/')[2])}/"
        f"{datastore.list_dir(layout.commits_dir('train', gone.path.split('/')[2]))[0]} (run run1)",
        "dataset 'model' version 1",
    ]
    assert len(report.unreadable) == 2
    assert any("commit record is malformed" in u for u in report.unreadable)
    assert any("datasets/prepared/versions/000002.json is malformed" in u for u in report.unreadable)

    code, out = _verify(datastore.root_dir())
    assert code == 1
    assert f"MISSING {datastore.uri(gone.path)}" in out
    assert "UNREADABLE datasets/prepared/versions/000002.json is malformed (it has no 'ref'" in out
    assert "0 corrupt, 1 missing, 2 unreadable record(s)" in out


def test_verify_uses_the_stat_cache_for_unchanged_files(datastore, tmp_path, monkeypatch):
    commit_and_register(datastore, tmp_path, "prep", "a\n" + "1\n" * 1000, dataset="prepared")
    for p in datastore.local_path("steps").rglob("part.csv"):
        # Older than the racy window, so the stat cache may vouch for it.
        past = time.time() - 3600
        import os

        os.utime(p, (past, past))
    assert verify_store(datastore).ok  # fills the cache
    import aml_assets.data.content as content

    calls = []
    real = content._hash_file_uncached
    monkeypatch.setattr(content, "_hash_file_uncached", lambda *a: calls.append(a) or real(*a))
    assert verify_store(datastore).ok
    assert calls == []


@pytest.mark.azurite
def test_verify_on_blob_storage_compares_listing_and_stored_md5(azurite, tmp_path, monkeypatch):
    from aml_assets.data.azure import AzureBlobDatastore

    container = f"v{uuid.uuid4().hex[:16]}"
    azurite.create_container(container)
    store = AzureBlobDatastore(
        name="workspace", container=container, connection_string=azurite.connection_string, prefix="aml"
    )
    same_size = commit_and_register(store, tmp_path, "prep", "a,b\n1,2\n", dataset="prepared")
    resized = commit_and_register(store, tmp_path, "train", "a,b\n3,4\n", dataset="model")
    assert all(f.stored for f in same_size.files), "a blob store records MD5/ETag at publish"
    assert verify_store(store).ok

    fs = store.filesystem()
    fs.pipe_file(store.path(f"{same_size.path}/part.csv"), b"a,b\n9,9\n")  # same size, new bytes
    fs.pipe_file(store.path(f"{resized.path}/part.csv"), b"a,b\n3,4\n5,6\n")
    fs.pipe_file(store.path(f"{resized.path}/extra.csv"), b"x\n")
    report = verify_store(store)
    why = {p.path: p.why for p in report.corrupt}
    assert "changed since it was published (md5:" in why[same_size.path][0]
    assert any("has 12 bytes, 8 were published" in w for w in why[resized.path])
    assert any("extra.csv was added after publishing" in w for w in why[resized.path])

    monkeypatch.setenv("AML_DATASTORE", "azure")
    monkeypatch.setenv("AML_AZURE_CONTAINER", container)
    monkeypatch.setenv("AML_AZURE_PREFIX", "aml")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    out = io.StringIO()
    assert main(["verify", "--dataset", "prepared"], out=out) == 1
    assert f"CORRUPT abfs://{container}/aml/{same_size.path}" in out.getvalue()
    assert "1 registered version(s): 1 corrupt" in out.getvalue()
    assert azurite.account_key not in out.getvalue()
