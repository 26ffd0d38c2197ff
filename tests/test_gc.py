"""Garbage collection removes what killed steps left behind, and never anything referenced."""

from __future__ import annotations

import io
import os
import time

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
