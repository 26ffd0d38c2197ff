"""Registered versions are immutable and verified; references are disposable; re-executions read
the inputs of the run they re-execute."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    ReexecutionOptions,
    build_input_context,
    execute_job,
    reconstructable,
)
from dagster._core.execution.api import execute_run
from dagster._core.types.dagster_type import resolve_dagster_type

from aml_assets import (
    DatasetError,
    DatasetRegistry,
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PythonScriptStep,
    TabularDataset,
)
from aml_assets.data import layout
from aml_assets.data.content import data_manifest, manifest_digest
from aml_assets.data.datasets import DatasetRef
from aml_assets.data.io_manager import DatastoreIOManager
from aml_assets.reuse.verify import file_records, with_stored_digests
from tests.support.runs import materializations


# --- helpers --------------------------------------------------------------------------------------
def publish(store, tmp_path: Path, rel: str, rows: str, name: str = "tbl") -> DatasetRef:
    """Publish a one-file table at ``rel`` and describe it the way a step does."""
    local = tmp_path / "scratch" / rel.replace("/", "_")
    local.mkdir(parents=True)
    (local / "part.csv").write_text(rows)
    entries = data_manifest(local)
    records = file_records(entries)
    store.publish_dir(local, rel)
    files = with_stored_digests(store, rel, records)
    return DatasetRef(
        name=name, datastore="workspace", path=rel, uri=store.uri(rel), format="csv",
        content_hash=manifest_digest(entries), file_count=len(entries),
        byte_count=sum(e.size for e in entries), files=[asdict(f) for f in files],
        producer={"run_id": "r", "step": "s", "fingerprint": "f"},
    )


def flip_bytes(path: Path, count: int = 60) -> None:
    """Overwrite ``count`` bytes in the middle of a (read-only) published file, size unchanged."""
    data = bytearray(path.read_bytes())
    middle = max(0, len(data) // 2 - count // 2)
    for i in range(middle, min(len(data), middle + count)):
        data[i] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)


A = "a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(50))
B = "a,b\n" + "".join(f"{i},{i * 3}\n" for i in range(50))
C = "a,b\n" + "".join(f"{i},{i * 4}\n" for i in range(50))


# --- immutable, never reused numbers ------------------------------------------------------------
def test_forced_delete_leaves_a_tombstone_and_numbers_are_never_reused(datastore, tmp_path):
    registry = DatasetRegistry(datastore)
    assert registry.register(publish(datastore, tmp_path, "p/1/tbl", A)) == (1, True)
    assert registry.register(publish(datastore, tmp_path, "p/2/tbl", B)) == (2, True)

    with pytest.raises(DatasetError, match="immutable. Pass force=True"):
        registry.delete_version("tbl", 2)
    registry.delete_version("tbl", 2, force=True)
    assert datastore.exists(layout.tombstone_record("tbl", 2))
    assert not datastore.exists(layout.version_record("tbl", 2))
    assert registry.versions("tbl") == [1]
    assert registry.get("tbl").version == 1
    with pytest.raises(DatasetError, match=r"version 2 was deleted on \d{4}-.*never reused, so 2 stays retired"):
        registry.get("tbl", 2)
    with pytest.raises(DatasetError, match="was deleted"):
        registry.delete_version("tbl", 2, force=True)
    with pytest.raises(DatasetError, match="has no version 7"):
        registry.delete_version("tbl", 7, force=True)

    # The latest was deleted: new content (even B again) gets 3, never 2.
    assert registry.register(publish(datastore, tmp_path, "p/3/tbl", B)) == (3, True)
    assert registry.versions("tbl") == [1, 3]
    # Deleting every version keeps the numbers retired too.
    registry.delete_version("tbl", 1, force=True)
    registry.delete_version("tbl", 3, force=True)
    assert registry.versions("tbl") == [] and registry.list_datasets() == []
    with pytest.raises(DatasetError, match="Its versions 1, 2, 3 were deleted"):
        registry.get("tbl")
    assert registry.register(publish(datastore, tmp_path, "p/4/tbl", C)) == (4, True)


def test_malformed_records_are_named_and_skipped(datastore, tmp_path, caplog):
    registry = DatasetRegistry(datastore)
    registry.register(publish(datastore, tmp_path, "p/1/tbl", A))
    datastore._write_record(layout.version_record("tbl", 2), b'{"name": "tbl", "ver')
    datastore._write_record(layout.version_record("tbl", 3), json.dumps({"name": "tbl"}).encode())
    datastore._write_record(layout.version_record("broken", 1), b"")
    caplog.set_level(logging.WARNING)

    fresh = DatasetRegistry(datastore)
    assert fresh.list_datasets() == ["tbl"]
    assert fresh.versions("tbl") == [1]
    assert fresh.get("tbl").version == 1  # latest: the newest readable version
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "datasets/tbl/versions/000002.json" in messages and "not valid JSON" in messages
    assert "datasets/tbl/versions/000003.json" in messages and "no 'ref'" in messages
    assert "datasets/broken/versions/000001.json" in messages
    assert "newest version record (3) is unreadable; using version 1" in messages
    with pytest.raises(DatasetError, match=r"000003.json is malformed \(it has no 'ref'"):
        fresh.get("tbl", 3)
    with pytest.raises(DatasetError, match="Every version record of dataset 'broken' .* is malformed"):
        fresh.get("broken")
    assert {m.path for m in fresh.malformed} == {
        "datasets/tbl/versions/000002.json",
        "datasets/tbl/versions/000003.json",
        "datasets/broken/versions/000001.json",
    }
    # New versions are numbered after the malformed ones; a malformed one can be deleted.
    assert fresh.register(publish(datastore, tmp_path, "p/4/tbl", B)) == (4, True)
    fresh.delete_version("tbl", 3, force=True)
    assert json.loads(datastore.read_bytes(layout.tombstone_record("tbl", 3)))["malformed"] is True
    assert fresh.register(publish(datastore, tmp_path, "p/5/tbl", C)) == (5, True)


# --- verified before reuse --------------------------------------------------------------------
def test_unchanged_content_is_reused_only_while_it_verifies(datastore, tmp_path, caplog):
    registry = DatasetRegistry(datastore)
    first = publish(datastore, tmp_path, "p/1/tbl", A)
    assert registry.register(first) == (1, True)
    assert registry.register(first) == (1, False)

    flip_bytes(datastore.local_path("p/1/tbl/part.csv"))
    caplog.set_level(logging.ERROR)
    # The step recomputed the same content into a fresh attempt: that becomes version 2.
    fresh = publish(datastore, tmp_path, "p/2/tbl", A)
    done = registry.register_ref(fresh)
    assert (done.version, done.created, done.replaced_corrupt) == (2, True, 1)
    assert "p/1/tbl/part.csv changed since it was published" in done.problems[0]
    assert "version 1 is corrupt: p/1/tbl/part.csv changed" in caplog.text
    assert "instead of reusing it" in done.describe("tbl")
    record = registry.get("tbl", 2).record
    assert record["replaces_corrupt_version"] == 1 and record["ref"]["path"] == "p/2/tbl"
    assert registry.register(fresh) == (2, False)  # the sound copy is reused from now on

    # Never point a version at data known to be corrupt.
    flip_bytes(datastore.local_path("p/2/tbl/part.csv"))
    with pytest.raises(DatasetError, match="p/2/tbl.* is corrupt: .*Nothing was registered"):
        registry.register(fresh)
    assert registry.versions("tbl") == [1, 2]


def test_size_change_extra_file_and_deleted_data_are_not_reused(datastore, tmp_path):
    registry = DatasetRegistry(datastore)
    registry.register(publish(datastore, tmp_path, "p/1/tbl", A))
    part = datastore.local_path("p/1/tbl/part.csv")
    os.chmod(part, 0o644)
    part.write_text(A + "99,0\n")
    done = registry.register_ref(publish(datastore, tmp_path, "p/2/tbl", A))
    assert done.replaced_corrupt == 1 and "bytes" in done.problems[0]

    folder = datastore.local_path("p/2/tbl")
    os.chmod(folder, 0o755)
    (folder / "extra.csv").write_text("a,b\n")
    done = registry.register_ref(publish(datastore, tmp_path, "p/3/tbl", A))
    assert done.replaced_corrupt == 2 and "p/2/tbl/extra.csv was added after publishing" in done.problems

    datastore._delete_record("p/3/tbl")
    done = registry.register_ref(publish(datastore, tmp_path, "p/4/tbl", A))
    assert done.replaced_corrupt == 3 and "is missing" in done.problems[0]


def test_old_records_without_integrity_data_are_checked_for_existence(datastore, tmp_path):
    registry = DatasetRegistry(datastore)
    old = publish(datastore, tmp_path, "p/1/tbl", A).model_copy(update={"files": []})
    registry.register(old)
    assert registry.register(old) == (1, False)
    datastore._delete_record("p/1/tbl")
    done = registry.register_ref(publish(datastore, tmp_path, "p/2/tbl", A))
    assert (done.version, done.replaced_corrupt) == (2, 1)


def test_content_equal_to_an_older_version_becomes_the_new_latest(datastore, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    registry = DatasetRegistry(datastore)
    registry.register(publish(datastore, tmp_path, "p/1/tbl", A))
    registry.register(publish(datastore, tmp_path, "p/2/tbl", B))
    done = registry.register_ref(publish(datastore, tmp_path, "p/3/tbl", A))
    assert (done.version, done.created, done.same_content_as) == (3, True, 1)
    latest = registry.get("tbl")
    assert latest.version == 3 and latest.same_content_as == 1
    assert latest.record["same_content_as"] == 1
    assert "same content as version 1" in caplog.text
    assert "same_content_as" not in registry.get("tbl", 2).record
    assert registry.register(publish(datastore, tmp_path, "p/4/tbl", A)) == (3, False)


def test_concurrent_registration_gives_unique_contiguous_versions(datastore, tmp_path):
    refs = [publish(datastore, tmp_path, f"p/{i}/tbl", f"a\n{i}\n") for i in range(8)]
    same = [publish(datastore, tmp_path, f"q/{i}/tbl", C) for i in range(6)]
    results: list[tuple[int, bool]] = []
    barrier = threading.Barrier(len(refs) + len(same))

    def register(ref):
        barrier.wait()
        results.append(DatasetRegistry(datastore).register(ref))

    threads = [threading.Thread(target=register, args=(r,)) for r in [*refs, *same]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = sorted(v for v, c in results if c)
    registry = DatasetRegistry(datastore)
    assert registry.versions("tbl") == created == list(range(1, len(created) + 1))
    # Every distinct content got exactly one version... unless the same content was registered
    # again after another one became latest (then it is a new latest, recorded as same content).
    hashes = [registry.get("tbl", v).ref.content_hash for v in created]
    assert set(hashes) == {r.content_hash for r in [*refs, *same]}
    for v in created:
        same_as = registry.get("tbl", v).same_content_as
        assert same_as is None or registry.get("tbl", same_as).ref.content_hash == hashes[v - 1]


# --- references -------------------------------------------------------------------------------
def test_corrupt_reference_names_the_file_and_the_fix(datastore, tmp_path):
    io = DatastoreIOManager(datastore=datastore)
    ref = publish(datastore, tmp_path, "p/1/tbl", A)
    datastore.write_bytes(layout.run_ref("tbl", "run1"), ref.model_dump_json().encode())
    assert io.load_ref("tbl", "run1") == ref
    datastore.write_bytes(layout.latest_ref("tbl"), b'{"name": "tbl", "path": ')
    with pytest.raises(DatasetError) as err:
        io.load_ref("tbl", None)
    message = str(err.value)
    assert "_refs/tbl/latest.json is unreadable" in message
    assert "rerun the step that produces 'tbl'" in message
    datastore.write_bytes(layout.run_ref("tbl", "run2"), b"")
    with pytest.raises(DatasetError, match="_refs/tbl/run2.json is unreadable"):
        io.resolve_input_ref("tbl", "run2", ["run2"])


def test_input_reference_rules(datastore, tmp_path):
    io = DatastoreIOManager(datastore=datastore)
    v1 = publish(datastore, tmp_path, "p/1/tbl", A)
    v2 = publish(datastore, tmp_path, "p/2/tbl", B)
    datastore.write_bytes(layout.run_ref("tbl", "parent"), v1.model_dump_json().encode())
    datastore.write_bytes(layout.latest_ref("tbl"), v2.model_dump_json().encode())
    # Produced in the plan's lineage: exactly that run's reference, never latest.
    assert io.resolve_input_ref("tbl", "parent", ["child", "parent"])[0] == v1
    with pytest.raises(DatasetError, match="the reference that run gone .* is gone"):
        io.resolve_input_ref("tbl", "gone", ["child", "gone"])
    # Not in the plan, new run: latest, pinned for the rest of the run.
    ref, where = io.resolve_input_ref("tbl", None, ["subset"])
    assert (ref, where) == (v2, layout.latest_ref("tbl"))
    assert datastore.exists(layout.run_ref("tbl", "subset"))
    datastore.write_bytes(layout.latest_ref("tbl"), v1.model_dump_json().encode())
    assert io.resolve_input_ref("tbl", None, ["subset"])[0] == v2  # the pin, not the new latest
    # A re-execution of that subset run reads what it pinned, and pins it for itself.
    assert io.resolve_input_ref("tbl", None, ["again", "subset"])[0] == v2
    assert datastore.exists(layout.run_ref("tbl", "again"))
    # ... and fails clearly when its lineage's pins are gone.
    with pytest.raises(DatasetError, match="re-executes run lost, which read 'tbl'"):
        io.resolve_input_ref("tbl", None, ["new", "lost"])
    # Outside a run (build_input_context): the latest.
    context = build_input_context(asset_key=AssetKey("tbl"), dagster_type=resolve_dagster_type(object))
    assert io.load_input(context) == v1


def test_a_source_changed_since_another_run_read_it_is_refused(datastore):
    io = DatastoreIOManager(datastore=datastore)
    datastore.write_bytes("numbers/n.csv", b"id\n1\n")
    ref = DatasetRef(
        name="numbers", datastore="workspace", path="numbers/n.csv", uri=datastore.uri("numbers/n.csv"),
        format="csv", content_hash=manifest_digest(datastore.manifest("numbers/n.csv")),
    )
    for rel in (layout.run_ref("numbers", "parent-run"), layout.latest_ref("numbers")):
        datastore.write_bytes(rel, ref.model_dump_json().encode())
    assert io.resolve_input_ref("numbers", "parent-run", ["child", "parent-run"])[0] == ref
    datastore.write_bytes("numbers/n.csv", b"id\n2\n")
    # This run's own materialization is trusted (it hashed the file moments ago)...
    assert io.resolve_input_ref("numbers", "parent-run", ["parent-run"])[0] == ref
    # ... another run's reference to a rewritable path is re-hashed first.
    with pytest.raises(DatasetError, match="changed since run parent-run read it .*Materialize 'numbers' again"):
        io.resolve_input_ref("numbers", "parent-run", ["child", "parent-run"])
    with pytest.raises(DatasetError, match="changed since it was last materialized"):
        io.resolve_input_ref("numbers", None, ["subset"])
    assert not datastore.exists(layout.run_ref("numbers", "subset")), "a stale reference is never pinned"


def test_a_source_on_another_datastore_is_checked_on_that_datastore(datastore, tmp_path):
    """The reference records the source's datastore key: it is re-hashed there, not on the
    workspace datastore (where the path may not exist, or hold something else)."""
    from aml_assets import LocalDatastore

    landing = LocalDatastore(name="landing", root=str(tmp_path / "landing"))
    io = DatastoreIOManager.with_datastores("workspace", {"workspace": datastore, "landing": landing})
    landing.write_bytes("numbers/n.csv", b"id\n1\n")
    datastore.write_bytes("numbers/n.csv", b"something else on the workspace\n")
    ref = DatasetRef(
        name="numbers", datastore="landing", path="numbers/n.csv", uri=landing.uri("numbers/n.csv"),
        format="csv", content_hash=manifest_digest(landing.manifest("numbers/n.csv")),
    )
    datastore.write_bytes(layout.run_ref("numbers", "parent-run"), ref.model_dump_json().encode())
    assert io.resolve_input_ref("numbers", "parent-run", ["child", "parent-run"])[0] == ref
    landing.write_bytes("numbers/n.csv", b"id\n2\n")
    with pytest.raises(DatasetError, match="changed since run parent-run read it"):
        io.resolve_input_ref("numbers", "parent-run", ["child", "parent-run"])
    # A datastore the run does not have: refused clearly, never trusted unchecked.
    alone = DatastoreIOManager(datastore=datastore)
    with pytest.raises(DatasetError, match="datastore 'landing', which this run does not have configured"):
        alone.resolve_input_ref("numbers", "parent-run", ["child", "parent-run"])


# --- re-execution reads the inputs of the run it re-executes ------------------------------------
PREP = """
import sys
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2])
(out / "data.csv").write_text(src.read_text())
"""
TRAIN_OK = """
import sys
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = (src / "data.csv").read_text().splitlines()[1:]
(out / "model.txt").write_text(f"rows={len(rows)} total={sum(int(r.split(',')[1]) for r in rows)}\\n")
"""
TRAIN_BROKEN = "import sys\nprint('train is broken', file=sys.stderr)\nsys.exit(1)\n"
ROOT_ENV = "AML_TEST_TWO_STEP_ROOT"


def _two_step_pipeline(root: Path) -> Pipeline:
    numbers = TabularDataset.from_delimited_files("numbers", "numbers/numbers.csv", seed=root / "seed.csv")
    prepared = OutputDataset("prepared", format="csv").register(description="prepared numbers")
    model = OutputDataset("model", format="files")
    code = root / "code"
    return Pipeline("two", steps=[
        PythonScriptStep(name="prep", script="prep.py", source_directory=code,
                         arguments=[numbers.as_download("src"), prepared]),
        PythonScriptStep(name="train", script="train.py", source_directory=code,
                         arguments=[prepared.as_download("prepared_in"), model]),
    ])


def two_step_job():
    """The two-step job, rebuilt from $AML_TEST_TWO_STEP_ROOT (reconstructable for execute_job)."""
    root = Path(os.environ[ROOT_ENV])
    defs = _two_step_pipeline(root).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=1)}
    )
    return defs.resolve_job_def("two")


def _failure_text(instance, run_id: str) -> str:
    texts = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.event_type == DagsterEventType.STEP_FAILURE:
            err = event.event_specific_data.error
            while err is not None:
                texts.append(err.message)
                err = err.cause
    return "\n".join(texts)


def _materialized(instance, run_id: str) -> dict[str, dict]:
    out = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        mat = record.dagster_event.event_specific_data.materialization
        out[mat.asset_key.to_user_string()] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return out


def _reexecute_from_asset_failure(instance, job, parent_run_id: str, asset: AssetKey):
    """What ``ReexecutionStrategy.FROM_ASSET_FAILURE`` launches: a child run of a job subset."""
    subset = job.get_subset(asset_selection={asset})
    run = instance.create_run_for_job(
        subset.get_definition(),
        asset_selection=frozenset({asset}),
        parent_run_id=parent_run_id,
        root_run_id=parent_run_id,
        tags={"dagster/parent_run_id": parent_run_id, "dagster/root_run_id": parent_run_id},
    )
    return execute_run(subset, run, instance)


@pytest.mark.slow
def test_reexecution_reads_the_upstream_of_the_run_it_reexecutes(tmp_path, instance, datastore, monkeypatch):
    root = tmp_path / "two"
    (root / "code").mkdir(parents=True)
    (root / "code" / "prep.py").write_text(PREP)
    (root / "code" / "train.py").write_text(TRAIN_BROKEN)
    (root / "seed.csv").write_text("id,value\n" + "".join(f"{i},{i}\n" for i in range(10)))
    monkeypatch.setenv(ROOT_ENV, str(root))
    job = reconstructable(two_step_job)

    # Run 1: prep registers prepared v1; train fails (its script is broken).
    with execute_job(job, instance, raise_on_error=False) as run1:
        assert not run1.success
        run1_id = run1.run_id
    v1 = _materialized(instance, run1_id)["prepared"]
    assert v1["dataset_version"] == 1

    # The script is fixed and the data changes; run 2 (a full run) registers prepared v2.
    (root / "code" / "train.py").write_text(TRAIN_OK)
    datastore.write_bytes("numbers/numbers.csv", b"id,value\n" + b"".join(f"{i},{i * 10}\n".encode() for i in range(30)))
    with execute_job(job, instance, raise_on_error=False) as run2:
        assert run2.success
        run2_id = run2.run_id
    v2 = _materialized(instance, run2_id)
    assert v2["prepared"]["dataset_version"] == 2
    assert v2["prepared"]["content_hash"] != v1["content_hash"]

    # Re-executing run 1 from failure runs train on run 1's prepared data (v1), not run 2's.
    options = ReexecutionOptions.from_failure(run1_id, instance)
    with execute_job(job, instance, reexecution_options=options, raise_on_error=False) as run3:
        assert run3.success, _failure_text(instance, run3.run_id)
        run3_id = run3.run_id
    mats = _materialized(instance, run3_id)
    assert set(mats) == {"model"}  # prep was not re-executed
    model = mats["model"]
    assert model["reused"] is False  # run 2's train (on v2) is not this result
    # The lineage table names the input version and content the step read.
    assert f"| input `prepared` | version 1, content `{v1['content_hash']}` |" in model["lineage"]
    published = datastore.local_path(
        json.loads(datastore.read_bytes(layout.run_ref("model", run3_id)))["path"]
    )
    assert (published / "model.txt").read_text() == "rows=10 total=45\n"
    # latest.json still says what the newest run produced.
    assert json.loads(datastore.read_bytes(layout.latest_ref("prepared")))["content_hash"] == v2["prepared"]["content_hash"]

    # Re-executing "from asset failure" (the UI's choice for asset jobs, and run retries) runs a
    # subset job holding only the failed asset: Dagster then gives no upstream run id at all
    # (its placeholder), which used to fall back to latest.json, i.e. run 2's v2.
    retry = _reexecute_from_asset_failure(instance, job, run1_id, AssetKey("model"))
    assert retry.success, _failure_text(instance, retry.run_id)
    model = _materialized(instance, retry.run_id)["model"]
    assert f"content `{v1['content_hash']}`" in model["lineage"]
    assert model["reused"] is True and model["reused_from_run"] == run3_id  # same inputs as run 3

    # Once run 1's reference is gone, a re-execution fails clearly instead of reading v2.
    datastore.delete(layout.run_ref("prepared", run1_id))
    options = ReexecutionOptions.from_failure(run1_id, instance)
    with execute_job(job, instance, reexecution_options=options, raise_on_error=False) as run4:
        assert not run4.success
        failure = _failure_text(instance, run4.run_id)
    assert f"the reference that run {run1_id} (re-executed by run {run4.run_id}) materialized is gone" in failure
    assert "Start a new run" in failure

    # A subset run (only train) reads the latest prepared (v2), and pins what it read.
    defs_job = two_step_job()
    subset = defs_job.execute_in_process(instance=instance, asset_selection=[AssetKey("model")], raise_on_error=False)
    assert subset.success
    assert set(materializations(subset)) == {"model"}
    pinned = json.loads(datastore.read_bytes(layout.run_ref("prepared", subset.run_id)))
    assert pinned["content_hash"] == v2["prepared"]["content_hash"]
    assert materializations(subset)["model"]["reused"] is True  # same inputs and code as run 2


@pytest.mark.azurite
def test_registered_version_is_verified_on_blob_storage_too(azurite, tmp_path):
    import uuid

    from aml_assets.data.azure import AzureBlobDatastore

    container = f"r{uuid.uuid4().hex[:16]}"
    azurite.create_container(container)
    store = AzureBlobDatastore(
        name="workspace", container=container, connection_string=azurite.connection_string, prefix="aml"
    )
    registry = DatasetRegistry(store)
    first = publish(store, tmp_path, "p/1/tbl", A)
    assert first.files[0]["stored"].startswith(("md5:", "etag:"))
    assert registry.register(first) == (1, True)
    assert registry.register(first) == (1, False)
    store.filesystem().pipe_file(store.path("p/1/tbl/part.csv"), A.replace("1,2\n", "1,3\n").encode())
    done = registry.register_ref(publish(store, tmp_path, "p/2/tbl", A))
    assert (done.version, done.replaced_corrupt) == (2, 1)
    assert f"abfs://{container}/aml/p/1/tbl/part.csv changed since it was published" in done.problems[0]
    registry.delete_version("tbl", 2, force=True)
    assert store.exists(layout.tombstone_record("tbl", 2))
    assert registry.register(publish(store, tmp_path, "p/3/tbl", C)) == (3, True)
