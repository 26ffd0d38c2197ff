"""DataTransferStep (issue 11): a folder from the local datastore to Azure Blob (Azurite), reused by
content on rerun, recopied when the source (or the copy) changes, ``allow_reuse=False``
honoured; a file between two local stores; declaration and validation errors; v1's
DataTransferStep through the compat shim.

Real small pipelines on temporary instances."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from dagster import EnvVar

from aml_assets import (
    DataTransferStep,
    FileDataset,
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineValidationError,
    PythonScriptStep,
)
from aml_assets.data.azure import AzureBlobDatastore
from aml_assets.data.references import DataReference
from aml_assets.pipeline.transfer import TransferDestination
from aml_assets.reuse.verify import verify_store
from tests.support.runs import materializations, reused, run_job, step_failure_messages

CS_ENV = "AML_TEST_AZURE_CONNECTION_STRING"

#: Lists the files of its input (the copy, fetched from blob storage) with their text.
LIST = """
import sys
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2])
lines = [f"{p.relative_to(src).as_posix()}={p.read_text()}" for p in sorted(src.rglob('*')) if p.is_file()]
(out / "listing.txt").write_text("\\n".join(lines))
"""


@pytest.fixture
def blob(azurite, monkeypatch) -> AzureBlobDatastore:
    monkeypatch.setenv(CS_ENV, azurite.connection_string)
    container = f"t{uuid.uuid4().hex[:16]}"
    azurite.create_container(container)
    return AzureBlobDatastore(name="blob", container=container, connection_string=EnvVar(CS_ENV), prefix="landing")


@pytest.fixture
def images(datastore: LocalDatastore) -> Path:
    """A folder of files on the local workspace datastore."""
    root = Path(datastore.root_dir()) / "raw" / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.txt").write_text("beta")
    (root / "old.txt").write_text("to be removed")
    return root


def _blob_files(store: AzureBlobDatastore, rel: str) -> dict[str, str]:
    return {e.path: store.read_bytes(f"{rel}/{e.path}").decode() for e in store.manifest(rel)}


def _pipeline(tmp_path: Path, **kw) -> tuple[Pipeline, DataTransferStep]:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "list.py").write_text(LIST)
    transfer = DataTransferStep(
        name="to_blob",
        source=FileDataset.from_files("images", "raw/images"),
        destination=TransferDestination("blob", "copies/images"),
        **kw,
    )
    reader = PythonScriptStep(
        "lister", "list.py", source_directory=code, arguments=[transfer.output.as_download("copy"), OutputDataset("listing")]
    )
    return Pipeline("transfer", [transfer, reader]), transfer


@pytest.mark.azurite
def test_a_folder_goes_to_blob_storage_and_is_reused_while_source_and_copy_are_unchanged(
    tmp_path, images, blob, instance
):
    pipeline, transfer = _pipeline(tmp_path)
    assert transfer.output.name == "to_blob_output" and transfer.get_output() is transfer.output
    resources = {
        "workspace": LocalDatastore(), "blob": blob, "cpucluster": LocalProcessCluster(max_concurrent_steps=1),
    }
    defs = pipeline.to_definitions(resources)

    first = run_job(defs, instance, job="transfer")
    assert first.success, step_failure_messages(first)
    assert _blob_files(blob, "copies/images") == {"a.txt": "alpha", "sub/b.txt": "beta", "old.txt": "to be removed"}
    copied = materializations(first)["to_blob_output"]
    assert copied["uri"].startswith("abfs://") and copied["uri"].endswith("/landing/copies/images")
    assert copied["files_copied"] == 3 and copied["file_count"] == 3
    # A later step reads the copy from blob storage.
    listing = Path(materializations(first)["listing"]["uri"]) / "listing.txt"
    assert listing.read_text() == "a.txt=alpha\nold.txt=to be removed\nsub/b.txt=beta"

    second = run_job(defs, instance, job="transfer")
    assert reused(second) == {"to_blob_output": True, "listing": True}

    # A changed and a removed source file: copied again, and the copy mirrors the source.
    (images / "a.txt").write_text("ALPHA")
    (images / "old.txt").unlink()
    third = run_job(defs, instance, job="transfer")
    assert reused(third) == {"to_blob_output": False, "listing": False}
    assert materializations(third)["to_blob_output"]["runs_because"] == "input images changed"
    assert _blob_files(blob, "copies/images") == {"a.txt": "ALPHA", "sub/b.txt": "beta"}

    # The copy changed behind the step's back: copied again although the source did not change.
    blob.write_bytes("copies/images/sub/b.txt", b"tampered")
    fourth = run_job(defs, instance, job="transfer")
    because = materializations(fourth)["to_blob_output"]["runs_because"]
    assert "no longer holds what was copied there; copying again" in because
    assert _blob_files(blob, "copies/images") == {"a.txt": "ALPHA", "sub/b.txt": "beta"}
    assert reused(fourth)["listing"] is True  # same content as the third run's copy


@pytest.mark.azurite
def test_allow_reuse_false_copies_on_every_run_and_a_copy_comes_back_from_blob(
    tmp_path, images, blob, datastore, instance
):
    pipeline, transfer = _pipeline(tmp_path, allow_reuse=False)
    # From blob storage back to the local store: a remote source, an earlier transfer's output.
    back = DataTransferStep(name="back", source=transfer.output, destination=("workspace", "returned/images"))
    pipeline = Pipeline("transfer", [*pipeline.steps, back])
    resources = {"workspace": LocalDatastore(), "blob": blob, "cpucluster": LocalProcessCluster()}
    defs = pipeline.to_definitions(resources)
    first = run_job(defs, instance, job="transfer")
    assert first.success, step_failure_messages(first)
    returned = Path(datastore.root_dir()) / "returned" / "images"
    assert sorted(p.relative_to(returned).as_posix() for p in returned.rglob("*") if p.is_file()) == [
        "a.txt", "old.txt", "sub/b.txt",
    ]
    blob.write_bytes("copies/images/stray.txt", b"left by someone")
    again = run_job(defs, instance, job="transfer")
    # The same content copied again: what reads it is reused.
    assert reused(again) == {"to_blob_output": False, "listing": True, "back_output": True}
    assert materializations(again)["to_blob_output"]["runs_because"] == "allow_reuse=False"
    assert "stray.txt" not in _blob_files(blob, "copies/images")


def test_a_file_between_local_stores_as_a_file_or_into_a_folder(tmp_path, datastore, instance):
    archive = LocalDatastore(name="archive", root=str(tmp_path / "archive"))
    (Path(datastore.root_dir()) / "reports").mkdir()
    (Path(datastore.root_dir()) / "reports" / "q1.csv").write_text("q,v\n1,2\n")
    report = FileDataset.from_files("report", "reports/q1.csv")
    as_file = DataTransferStep(
        name="as_file", source=report, destination=("archive", "2026/report.csv"),
        source_reference_type="file", destination_reference_type="file",
    )
    into = DataTransferStep(
        name="into", source=report.as_download(), destination=TransferDestination("archive", "inbox", "inbox_copy"),
    )
    resources = {"workspace": LocalDatastore(), "archive": archive, "cpucluster": LocalProcessCluster()}
    defs = Pipeline("files", [as_file, into]).to_definitions(resources)
    result = run_job(defs, instance, job="files")
    assert result.success, step_failure_messages(result)
    assert (tmp_path / "archive" / "2026" / "report.csv").read_text() == "q,v\n1,2\n"
    assert (tmp_path / "archive" / "inbox" / "q1.csv").read_text() == "q,v\n1,2\n"
    assert materializations(result)["inbox_copy"]["uri"].endswith("/archive/inbox/q1.csv")
    assert reused(run_job(defs, instance, job="files")) == {"as_file_output": True, "inbox_copy": True}
    # version= is part of the fingerprint, as for every step.
    as_file.version = "2"
    again = run_job(Pipeline("files", [as_file, into]).to_definitions(resources), instance, job="files")
    assert materializations(again)["as_file_output"]["runs_because"] == "version changed: none -> 2"
    # The ledger is on the workspace, the copies elsewhere: `aml-assets verify` finds nothing amiss.
    report = verify_store(LocalDatastore())
    assert report.ok and report.commits == 3 and report.outputs == 0, report.summary()


def test_declaration_and_validation_errors_say_what_to_fix(tmp_path, datastore):
    images = FileDataset.from_files("images", "raw/images")
    with pytest.raises(ValueError, match="needs a name="):
        DataTransferStep(source=images, destination=("blob", "x"))
    with pytest.raises(ValueError, match="give source="):
        DataTransferStep(name="t", destination=("blob", "x"))
    with pytest.raises(ValueError, match="runs no script"):
        DataTransferStep(name="t", source=images, destination=("blob", "x"), script="copy.py")
    with pytest.raises(ValueError, match="source_reference_type is 'folder'"):
        DataTransferStep(name="t", source=images, destination=("blob", "x"), source_reference_type="folder")
    with pytest.raises(TypeError, match="says no datastore and path"):
        DataTransferStep(name="t", source=images, destination="blob/x")
    with pytest.raises(TypeError, match="is not a dataset"):
        DataTransferStep(name="t", source="raw/images", destination=("blob", "x"))

    steps = [
        DataTransferStep(name="nowhere", source=images, destination=("nostore", "x")),
        DataTransferStep(name="records", source=images, destination=("workspace", "steps/x")),
        DataTransferStep(name="onto_itself", source=images, destination=("workspace", "raw/images/copy")),
        DataTransferStep(name="root", source=images, destination=("workspace", "/")),
    ]
    resources = {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()}
    with pytest.raises(PipelineValidationError) as caught:
        Pipeline("bad", steps).validate(resources)
    text = str(caught.value)
    assert "step 'nowhere' copies to datastore 'nostore', which is not configured (configured: workspace)" in text
    assert "step 'records': destination 'steps/x' is inside aml-assets' own records" in text
    assert "step 'onto_itself': source 'raw/images' and destination 'raw/images/copy' overlap" in text
    assert "step 'root': the destination path is empty" in text
    assert "source_directory" not in text  # a transfer runs no code: none needed


def test_compat_data_transfer_step_takes_v1_arguments(tmp_path, datastore, instance):
    from aml_assets.compat.pipeline.steps import DataTransferStep as V1DataTransferStep

    (Path(datastore.root_dir()) / "raw").mkdir()
    (Path(datastore.root_dir()) / "raw" / "x.txt").write_text("x")
    archive = LocalDatastore(name="archive", root=str(tmp_path / "archive"))
    # v1's DataReference(datastore=..., data_reference_name=..., path_on_datastore=...) as the
    # destination; the datastore object names its resource.
    destination = SimpleNamespace(datastore=archive, data_reference_name="raw_copy", path_on_datastore="raw")
    step = V1DataTransferStep(
        name="transfer",
        source_data_reference=DataReference(datastore="workspace", data_reference_name="raw", path_on_datastore="raw"),
        destination_data_reference=destination,
        compute_target=SimpleNamespace(name="adf"),  # a Data Factory: not needed
        source_reference_type="directory",
        allow_reuse=True,
    )
    assert isinstance(step, DataTransferStep) and isinstance(step, V1DataTransferStep)
    assert step.compute_target == "cpucluster" and step.output.name == "raw_copy"
    resources = {"workspace": LocalDatastore(), "archive": archive, "cpucluster": LocalProcessCluster()}
    result = run_job(Pipeline("v1", [step]).to_definitions(resources), instance, job="v1")
    assert result.success, step_failure_messages(result)
    assert (tmp_path / "archive" / "raw" / "x.txt").read_text() == "x"

    # A DataReference as the destination names the copy; a step output as the source.
    back = V1DataTransferStep(
        name="back", source_data_reference=step.get_output(),
        destination_data_reference=DataReference(datastore="workspace", data_reference_name="raw_back",
                                                 path_on_datastore="back/raw"),
    )
    result = run_job(Pipeline("v1", [step, back]).to_definitions(resources), instance, job="v1")
    assert result.success, step_failure_messages(result)
    assert reused(result) == {"raw_copy": True, "raw_back": False}
    assert (Path(datastore.root_dir()) / "back" / "raw" / "x.txt").read_text() == "x"
