"""Azure Blob datastore on a real Azurite: the datastore contract (shared with the local store),
the reference pipeline end to end, and credentials that never leak."""

from __future__ import annotations

import json
import pickle
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from dagster import EnvVar
from dagster._serdes import serialize_value

from aml_assets import DatasetRegistry, DatastoreError, LocalDatastore
from aml_assets.data.azure import AzureBlobDatastore
from aml_assets.data.content import manifest_digest
from aml_assets.data.datasets import DatasetRef
from aml_assets.data.datastore import Datastore
from tests.support.azurite import free_port
from tests.support.runs import (
    materializations,
    reference_defs,
    reused,
    run_job,
    step_failure_messages,
)

pytestmark = [pytest.mark.azurite]

CS_ENV = "AML_TEST_AZURE_CONNECTION_STRING"
FEATURES = ["Pclass", "Sex", "Age", "SibSp", "Parch", "Fare", "Embarked"]


def _container(azurite) -> str:
    name = f"t{uuid.uuid4().hex[:16]}"
    azurite.create_container(name)
    return name


@pytest.fixture
def azure_store(azurite, monkeypatch) -> AzureBlobDatastore:
    """A fresh container on Azurite, credentials passed the recommended way (EnvVar)."""
    monkeypatch.setenv(CS_ENV, azurite.connection_string)
    return AzureBlobDatastore(
        name="workspace", container=_container(azurite), connection_string=EnvVar(CS_ENV), prefix="aml"
    )


@pytest.fixture(params=["local", "azure"])
def store(request, tmp_path) -> Datastore:
    """Each contract test runs on both datastores."""
    if request.param == "local":
        return LocalDatastore(name="workspace", root=str(tmp_path / "local-store"))
    return request.getfixturevalue("azure_store")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make_dir(path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


# --- the datastore contract, on both stores -----------------------------------------------------
def test_write_read_exists_list(store):
    assert not store.exists("a/b.txt") and store.list_dir("a") == []
    store.write_bytes("a/b.txt", b"hello")
    store.write_bytes("a/sub/c.txt", b"world")
    assert store.read_bytes("a/b.txt") == b"hello"
    assert store.exists("a/b.txt") and store.exists("a") and store.exists("a/sub")
    assert store.list_dir("a") == ["b.txt", "sub"]
    store.write_bytes("a/b.txt", b"replaced")
    assert store.read_bytes("a/b.txt") == b"replaced"
    with pytest.raises(DatastoreError, match="no file at 'a/missing'"):
        store.read_bytes("a/missing")
    store.delete("a/sub")
    assert store.list_dir("a") == ["b.txt"]
    store.delete("a/nothing-here")  # deleting what is not there is fine


def test_create_exclusive_never_overwrites(store):
    assert store.create_exclusive("records/000001.json", b"first") is True
    assert store.create_exclusive("records/000001.json", b"second") is False
    assert store.read_bytes("records/000001.json") == b"first"


def test_create_exclusive_has_exactly_one_winner_under_a_race(store):
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        results.append(store.create_exclusive("race/marker.json", f"writer {i}".encode()))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.read_bytes("race/marker.json").startswith(b"writer ")


def test_publish_dir_then_download_round_trip(store, tmp_path):
    files = {"part-0.csv": b"a,b\n1,2\n", "nested/deeper/x.bin": bytes(range(256)) * 10}
    src = _make_dir(tmp_path / "out", files)
    store.publish_dir(src, "steps/s/fp/attempt/out")
    assert store.exists("steps/s/fp/attempt/out")
    copy = store.download("steps/s/fp/attempt/out", tmp_path / "back")
    assert _tree(copy) == files
    single = store.download("steps/s/fp/attempt/out/part-0.csv", tmp_path / "single")
    assert single.read_bytes() == files["part-0.csv"]
    # Published data is never overwritten.
    again = _make_dir(tmp_path / "again", {"part-0.csv": b"other"})
    with pytest.raises(DatastoreError, match="already exists"):
        store.publish_dir(again, "steps/s/fp/attempt/out")
    assert _tree(store.download("steps/s/fp/attempt/out", tmp_path / "back2")) == files


def test_manifest_digest_is_stable_for_the_same_content(store, tmp_path):
    files = {"a.csv": b"x,y\n1,2\n", "sub/b.csv": b"x,y\n3,4\n"}
    store.publish_dir(_make_dir(tmp_path / "one", files), "data/one")
    store.publish_dir(_make_dir(tmp_path / "two", files), "data/two")
    first = manifest_digest(store.manifest("data/one"))
    assert manifest_digest(store.manifest("data/one")) == first
    assert manifest_digest(store.manifest("data/two")) == first
    assert sorted(e.path for e in store.manifest("data/one")) == ["a.csv", "sub/b.csv"]
    store.publish_dir(_make_dir(tmp_path / "three", {**files, "a.csv": b"x,y\n1,9\n"}), "data/three")
    assert manifest_digest(store.manifest("data/three")) != first
    with pytest.raises(DatastoreError, match="nothing at 'data/none'"):
        store.manifest("data/none")


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "abfs://other/x", ""])
def test_paths_may_not_escape_the_root(store, bad):
    with pytest.raises(DatastoreError):
        store.read_bytes(bad)
    with pytest.raises(DatastoreError):
        store.write_bytes(bad, b"x")
    with pytest.raises(DatastoreError):
        store.exists(bad)
    with pytest.raises(DatastoreError):
        store.create_exclusive(bad, b"x")


def test_upload_files_refuses_to_overwrite_unless_asked(store, tmp_path):
    f = tmp_path / "titanic.csv"
    f.write_bytes(b"a\n1\n")
    assert store.upload_files([f], "titanic") == ["titanic/titanic.csv"]
    f.write_bytes(b"a\n2\n")
    with pytest.raises(DatastoreError, match="overwrite=True"):
        store.upload_files([f], "titanic")
    assert store.read_bytes("titanic/titanic.csv") == b"a\n1\n"
    store.upload_files([f], "titanic", overwrite=True)
    assert store.read_bytes("titanic/titanic.csv") == b"a\n2\n"


def test_registry_versions_on_the_store(store, tmp_path):
    registry = DatasetRegistry(store)
    versions = []
    for i, rows in enumerate(["a,b\n1,2\n", "a,b\n1,2\n3,4\n"]):
        rel = f"published/{i}/table"
        store.publish_dir(_make_dir(tmp_path / f"t{i}", {"part.csv": rows.encode()}), rel)
        ref = DatasetRef(
            name="tbl", datastore="workspace", path=rel, uri=store.uri(rel), format="csv",
            content_hash=manifest_digest(store.manifest(rel)), file_count=1, byte_count=len(rows),
        )
        versions.append(registry.register(ref))
        assert registry.register(ref) == (i + 1, False)  # same content: no new version
    assert versions == [(1, True), (2, True)]
    assert registry.versions("tbl") == [1, 2]
    tmp_root = Path(tempfile.gettempdir())
    before = set(tmp_root.glob("aml-tbl-*"))
    assert len(registry.get("tbl", 1).to_pandas_dataframe()) == 1
    assert len(registry.get("tbl", 2).to_pandas_dataframe()) == 2
    # A frame is read whole: its download from the blob store does not stay behind.
    assert set(tmp_root.glob("aml-tbl-*")) == before


# --- Azure specifics ------------------------------------------------------------------------------
def test_uri_repr_and_pandas_storage_options(azure_store, azurite):
    import pandas as pd

    assert azure_store.uri("a/b.csv") == f"abfs://{azure_store._container()}/aml/a/b.csv"
    for text in (repr(azure_store), str(azure_store), azure_store.uri(), azure_store.uri("x")):
        assert azurite.account_key not in text
        assert "AccountKey" not in text
    azure_store.write_bytes("t/x.csv", b"a,b\n1,2\n")
    df = pd.read_csv(azure_store.uri("t/x.csv"), storage_options=azure_store.storage_options())
    assert df.to_dict("records") == [{"a": 1, "b": 2}]


def test_account_key_configuration_works_like_a_connection_string(azurite, monkeypatch):
    monkeypatch.setenv("AML_TEST_AZURE_KEY", azurite.account_key)
    container = _container(azurite)
    store = AzureBlobDatastore(
        container=container,
        account_name=azurite.account_name,
        account_key=EnvVar("AML_TEST_AZURE_KEY"),
        blob_endpoint=azurite.blob_endpoint,
    )
    store.write_bytes("k/v.txt", b"1")
    assert store.read_bytes("k/v.txt") == b"1"
    assert azurite.account_key not in repr(store)


def test_unreachable_store_fails_fast_and_clearly(azurite):
    port = free_port()
    cs = azurite.connection_string.replace(f":{azurite.port}/", f":{port}/")
    store = AzureBlobDatastore(name="lake", container="data", connection_string=cs)
    t0 = time.monotonic()
    with pytest.raises(DatastoreError) as err:
        store.exists("titanic/titanic.csv")
    assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert "Datastore 'lake'" in message
    assert f"http://127.0.0.1:{port}/devstoreaccount1" in message
    assert "unreachable" in message
    assert azurite.account_key not in message and "AccountKey" not in message
    assert err.value.__cause__ is None  # the client's own exception (and its chain) is not kept


def test_wrong_key_and_missing_container_are_named(azurite):
    wrong = AzureBlobDatastore(
        name="lake",
        container=_container(azurite),
        account_name=azurite.account_name,
        account_key="V3JvbmdLZXk" * 8,
        blob_endpoint=azurite.blob_endpoint,
    )
    with pytest.raises(DatastoreError, match="credentials were refused") as err:
        wrong.read_bytes("x")
    assert "V3JvbmdLZXk" not in str(err.value)
    missing = AzureBlobDatastore(name="lake", container="no-such-container", connection_string=azurite.connection_string)
    with pytest.raises(DatastoreError, match="container 'no-such-container' does not exist"):
        missing.exists("x")


def test_unreachable_store_fails_the_run_without_leaking_the_key(project, spark_pool, instance, azurite, monkeypatch):
    port = free_port()
    monkeypatch.setenv(CS_ENV, azurite.connection_string.replace(f":{azurite.port}/", f":{port}/"))
    store = AzureBlobDatastore(name="workspace", container="data", connection_string=EnvVar(CS_ENV))
    result = run_job(reference_defs(project, spark_pool, workspace=store), instance)
    assert not result.success
    failures = "\n".join(step_failure_messages(result))
    assert "Datastore 'workspace'" in failures and "unreachable" in failures
    assert azurite.account_key not in failures
    _assert_no_secret_in_instance(instance, result.run_id, azurite)


# --- the reference pipeline on Azurite ----------------------------------------------------------
def _blobs(azurite, container: str, prefix: str) -> list[str]:
    with azurite.blob_service_client() as client:
        return [b.name for b in client.get_container_client(container).list_blobs(name_starts_with=prefix)]


def _assert_no_secret_in_instance(instance, run_id: str, azurite) -> None:
    """Neither the key nor the connection string is in the run's events, its stored config and
    job snapshot, or any file the instance wrote (event log DB, captured compute logs)."""
    secrets = [azurite.account_key, azurite.connection_string, azurite.account_key[:24]]
    records = instance.all_logs(run_id)
    assert records
    texts = [serialize_value(r) for r in records] + [str(r) for r in records]
    run = instance.get_run_by_id(run_id)
    texts.append(json.dumps(run.run_config, default=str))
    texts.append(serialize_value(instance.get_job_snapshot(run.job_snapshot_id)))
    root = Path(instance.root_directory)
    files = [p for p in root.rglob("*") if p.is_file()]
    logs = [p for p in files if p.suffix in (".out", ".err", ".complete")]
    assert logs, f"no captured compute logs under {root}"
    for secret in secrets:
        for text in texts:
            assert secret not in text
        for path in files:
            data = path.read_bytes()
            assert secret.encode() not in data, f"credential found in {path}"


@pytest.mark.spark
@pytest.mark.slow
def test_reference_pipeline_runs_unchanged_on_azurite(project, spark_pool, instance, azure_store, azurite, monkeypatch):
    defs = reference_defs(project, spark_pool, workspace=azure_store)
    first = run_job(defs, instance)
    assert first.success, step_failure_messages(first)
    mats = materializations(first)
    prepared, model = mats["titanic_prepared"], mats["titanic_model"]
    assert prepared["dagster/row_count"] == 891
    assert prepared["dataset_version"] == 1
    assert model["accuracy"] >= 0.75
    assert prepared["uri"].startswith(f"abfs://{azure_store._container()}/aml/")

    # What the run published is really in the container.
    container = azure_store._container()
    blobs = _blobs(azurite, container, "aml/")
    assert "aml/titanic/titanic.csv" in blobs  # seeded source
    assert "aml/datasets/titanic_prepared/versions/000001.json" in blobs
    prepared_path = first.output_for_node("dataprep", "titanic_prepared").path
    model_path = first.output_for_node("train", "titanic_model").path
    assert any(b.startswith(f"aml/{prepared_path}/") and b.endswith(".parquet") for b in blobs)
    assert f"aml/{model_path}/model.pkl" in blobs
    assert any(b.startswith("aml/steps/train/") and "/commits/" in b for b in blobs)

    registry = DatasetRegistry(azure_store)
    df = registry.get("titanic_prepared", 1).to_pandas_dataframe()
    assert len(df) == 891 and df[FEATURES].isna().sum().sum() == 0
    clf = pickle.loads(azure_store.read_bytes(f"{model_path}/model.pkl"))
    assert clf.predict(df[FEATURES].head(5)).shape == (5,)

    # Nothing changed: both steps are reused from the ledger on the container.
    second = run_job(defs, instance)
    assert second.success
    assert reused(second) == {"titanic_prepared": True, "titanic_model": True}
    assert materializations(second)["titanic_prepared"]["dataset_version"] == 1

    # New data in the store: both steps rerun and a second version is registered.
    csv = azure_store.read_bytes("titanic/titanic.csv").decode().splitlines()
    csv[1] = csv[1].replace(",22,", ",23,")
    azure_store.write_bytes("titanic/titanic.csv", ("\n".join(csv) + "\n").encode())
    third = run_job(defs, instance)
    assert third.success
    assert reused(third) == {"titanic_prepared": False, "titanic_model": False}
    assert materializations(third)["titanic_prepared"]["dataset_version"] == 2
    assert registry.versions("titanic_prepared") == [1, 2]
    v1, v2 = (registry.get("titanic_prepared", v).to_pandas_dataframe() for v in (1, 2))
    assert len(v1) == len(v2) == 891
    assert v1.loc[v1.PassengerId == 1, "Age"].item() == 22 and v2.loc[v2.PassengerId == 1, "Age"].item() == 23

    for run in (first, second, third):
        _assert_no_secret_in_instance(instance, run.run_id, azurite)

    # The CLI lists the container's registered datasets when the environment selects Azure.
    import io

    from aml_assets.cli import main

    monkeypatch.setenv("AML_DATASTORE", "azure")
    monkeypatch.setenv("AML_AZURE_CONTAINER", container)
    monkeypatch.setenv("AML_AZURE_PREFIX", "aml")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    out = io.StringIO()
    assert main(["datasets", "list"], out=out) == 0
    assert f"titanic_prepared  versions 1..2  latest v2  891 rows  abfs://{container}/" in out.getvalue()


def test_datastore_is_selected_by_environment(monkeypatch):
    from resources.datastores import datastores

    monkeypatch.delenv("AML_DATASTORE", raising=False)
    assert isinstance(datastores()["workspace"], LocalDatastore)
    monkeypatch.setenv("AML_DATASTORE", "azure")
    monkeypatch.setenv("AML_AZURE_CONTAINER", "aml")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey=c2VjcmV0;BlobEndpoint=http://h/a")
    store = datastores()["workspace"]
    assert isinstance(store, AzureBlobDatastore)
    assert store.uri("x") == "abfs://aml/x"
    assert "c2VjcmV0" not in repr(store)


def test_gc_on_both_stores_removes_uncommitted_attempts_only(store):
    import json

    from aml_assets.reuse.gc import collect_garbage

    fp = "steps/s/0123abcd"
    # steps/ is aml-assets' own: the public API refuses it, so the test writes as the ledger does.
    store._write_record(f"{fp}/kept-attempt/out/data.bin", b"committed")
    store._write_record(f"{fp}/lost-attempt/out/data.bin", b"never committed")
    commit = {"fingerprint": "0123abcd", "run_id": "r", "outputs": {"out": {"path": f"{fp}/kept-attempt/out"}},
              "components": {}, "created": 0.0}
    assert store._create_record(f"{fp}/commits/0001-kept.json", json.dumps(commit).encode())
    young = collect_garbage(store, older_than_seconds=3600)
    assert young.removed == [] and young.kept_young == 1
    report = collect_garbage(store, older_than_seconds=0)
    assert report.removed == [f"{fp}/lost-attempt"]
    assert not store.exists(f"{fp}/lost-attempt/out/data.bin")
    assert store.read_bytes(f"{fp}/kept-attempt/out/data.bin") == b"committed"
