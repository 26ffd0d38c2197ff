"""Azure ML SDK v1's data references (issue 11): DataReference, PipelineData and
OutputFileDatasetConfig, native and through ``aml_assets.compat``.

Real small pipelines on temporary instances: what a script receives in each mode, reuse by
content, intermediate data between steps, tabular reads, destinations with placeholders and
registration; plus the declarations, bindings and validation problems without running."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aml_assets import (
    DatasetRegistry,
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PythonScriptStep,
)
from aml_assets.compat import NoCounterpartError
from aml_assets.data.datasets import DatasetInput, InputMode
from aml_assets.data.references import DataReference, OutputFileDatasetConfig, PipelineData
from tests.support.runs import materializations, reused, run_job, step_failure_messages


def _resources(**more):
    return {
        "workspace": LocalDatastore(),
        "blobs": LocalDatastore(name="blobs"),
        "cpucluster": LocalProcessCluster(max_concurrent_steps=2),
        **more,
    }


#: Says what it received for each `--in NAME PATH` and copies the file (or the folder's files).
READ = """
import json, os, sys
from pathlib import Path
args, seen = sys.argv[1:], {}
out = Path(args[args.index("--out") + 1])
for i, a in enumerate(args):
    if a == "--in":
        name, path = args[i + 1], Path(args[i + 2])
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        seen[name] = {"path": str(path), "text": "".join(f.read_text() for f in files),
                      "env": os.environ.get("AZUREML_DATAREFERENCE_" + name)}
(out / "seen.json").write_text(json.dumps(seen, sort_keys=True))
"""

#: Writes a CSV to --table, a text file to --mid.
PRODUCE = """
import sys
from pathlib import Path
args = sys.argv[1:]
Path(args[args.index("--mid") + 1], "notes.txt").write_text("intermediate " + args[-1])
for flag in ("--table", "--latest"):
    if flag in args:
        Path(args[args.index(flag) + 1], "scores.csv").write_text("id,score\\n1,0.5\\n2,0.25\\n3," + args[-1] + "\\n")
"""

#: Reads the table through Run.input_datasets and the intermediate folder from its argument.
CONSUME = """
import sys
from pathlib import Path
from aml_assets.compat.core import Run
args = sys.argv[1:]
frame = Run.get_context().input_datasets["scores_in"].to_pandas_dataframe()
mid = Path(args[args.index("--mid") + 1])
notes = (mid / "notes.txt").read_text() if mid.is_dir() else mid.read_text()
Path(args[args.index("--out") + 1], "summary.txt").write_text(f"{len(frame)} rows, sum {frame['score'].sum()}; {notes}")
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    for name, text in {"read.py": READ, "produce.py": PRODUCE, "consume.py": CONSUME}.items():
        (d / name).write_text(text)
    return d


def _seen(result, output: str) -> dict:
    uri = materializations(result)[output]["uri"]
    return json.loads((Path(uri) / "seen.json").read_text())


# --- DataReference ---------------------------------------------------------------------------------
def test_data_reference_modes_deliver_in_place_a_copy_or_the_path(tmp_path, code, instance, isolated_env):
    from aml_assets.compat.core import Datastore, Workspace
    from aml_assets.compat.data.data_reference import DataReference as V1DataReference

    blobs = LocalDatastore(name="blobs")
    blobs.write_bytes("raw/posts.txt", b"hello\n")
    blobs.write_bytes("raw/folder/a.txt", b"A")
    blobs.write_bytes("raw/folder/b.txt", b"B")
    store = Datastore(Workspace.from_config(tmp_path), "blobs")
    mounted = V1DataReference(datastore=store, data_reference_name="posts", path_on_datastore="raw/posts.txt")
    folder = store.path("raw/folder", data_reference_name="folder")  # v1's datastore.path(...)
    direct = DataReference("blobs", "posts_uri", "raw/posts.txt", mode="direct")
    out = OutputDataset("seen")
    step = PythonScriptStep(
        "read", "read.py", code,
        arguments=[
            "--in", "posts", mounted, "--in", "copy", V1DataReference(store, "copy", "raw/posts.txt").as_download(),
            "--in", "folder", folder, "--in", "posts_uri", direct, "--out", out,
        ],
        inputs=[mounted],
    )
    assert [(i.name, i.mode.value) for i in step.all_inputs()] == [
        ("posts", "mount"), ("copy", "download"), ("folder", "mount"), ("posts_uri", "direct")
    ]
    result = run_job(Pipeline("refs", [step]).to_definitions(_resources()), instance, job="refs")
    assert result.success, step_failure_messages(result)
    seen = _seen(result, "seen")
    root = blobs.root_dir()
    # Mounted on a local store: read in place; download: a private copy elsewhere; direct: the path.
    assert seen["posts"]["path"] == str(root / "raw/posts.txt") and seen["posts"]["text"] == "hello\n"
    assert seen["folder"]["path"] == str(root / "raw/folder") and seen["folder"]["text"] == "AB"
    assert seen["posts_uri"]["path"] == str(root / "raw/posts.txt")
    assert not seen["copy"]["path"].startswith(str(root)) and seen["copy"]["text"] == "hello\n"
    # v1's AZUREML_DATAREFERENCE_<name> says where each reference is.
    assert {name: s["env"] for name, s in seen.items()} == {name: s["path"] for name, s in seen.items()}


def test_data_reference_is_fingerprinted_by_content_not_location(tmp_path, code, instance):
    blobs = LocalDatastore(name="blobs")
    blobs.write_bytes("v1/posts.txt", b"one\n")

    def pipeline(path: str, mode: str = "mount") -> Pipeline:
        ref = DataReference("blobs", "posts", path, mode=mode)
        step = PythonScriptStep("read", "read.py", code, arguments=["--in", "posts", ref, "--out", OutputDataset("seen")])
        return Pipeline("refs", [step])

    first = run_job(pipeline("v1/posts.txt").to_definitions(_resources()), instance, job="refs")
    assert first.success and reused(first) == {"seen": False}
    # The same bytes at another path: reused.
    blobs.write_bytes("v2/posts.txt", b"one\n")
    moved = run_job(pipeline("v2/posts.txt").to_definitions(_resources()), instance, job="refs")
    assert reused(moved) == {"seen": True}
    # Changed bytes: rerun, saying which input changed.
    blobs.write_bytes("v2/posts.txt", b"two\n")
    changed = run_job(pipeline("v2/posts.txt").to_definitions(_resources()), instance, job="refs")
    assert reused(changed) == {"seen": False}
    assert "input posts changed" in materializations(changed)["seen"]["runs_because"]
    assert _seen(changed, "seen")["posts"]["text"] == "two\n"
    # Another mode delivers differently: it is part of the fingerprint.
    download = run_job(pipeline("v2/posts.txt", "download").to_definitions(_resources()), instance, job="refs")
    assert reused(download) == {"seen": False}


def test_data_reference_missing_data_fails_before_the_step_naming_it(code, instance):
    ref = DataReference("blobs", "posts", "nowhere/posts.txt")
    step = PythonScriptStep("read", "read.py", code, arguments=["--in", "posts", ref, "--out", OutputDataset("seen")])
    result = run_job(Pipeline("refs", [step]).to_definitions(_resources()), instance, job="refs")
    assert not result.success
    assert "Dataset 'posts': no data at 'nowhere/posts.txt' on datastore 'blobs'" in step_failure_messages(result)[0]


def test_data_reference_declarations():
    ref = DataReference("blobs", path_on_datastore="/20newsgroups/20news.pkl")
    assert (ref.name, ref.data_reference_name, ref.path_on_datastore, ref.datastore, ref.mode) == (
        "ref_20news", "ref_20news", "20newsgroups/20news.pkl", "blobs", InputMode.MOUNT
    )
    assert DataReference("blobs", path_on_datastore="in/posts.v2.csv").name == "posts"
    assert ref.definition() == {"kind": "DataReference", "format": "files"}  # no location
    assert ref.as_download().mode is InputMode.DOWNLOAD and ref.as_mount().mode is InputMode.MOUNT
    with pytest.raises(ValueError, match="mode 'upload' is not one of mount, download, direct"):
        DataReference("blobs", "x", "a.txt", mode="upload")
    with pytest.raises(TypeError, match="resource key"):
        DataReference(object(), "x", "a.txt")
    with pytest.raises(ValueError, match="path_on_compute='/tmp/x' has no counterpart"):
        ref.as_download(path_on_compute="/tmp/x")


def test_v1_data_reference_and_datastore_through_compat(tmp_path, isolated_env):
    from aml_assets.compat.core import Datastore, Workspace
    from aml_assets.compat.data.data_reference import DataReference as V1DataReference

    ws = Workspace.from_config(tmp_path)
    blob = Datastore(ws, "workspaceblobstore")
    ref = V1DataReference(blob, "test_data", "posts/posts.json")
    assert isinstance(ref, V1DataReference) and isinstance(ref, DataReference)
    assert (ref.datastore, ref.name) == ("workspaceblobstore", "test_data")
    assert V1DataReference("workspace", path_on_datastore="a/b.csv").datastore == "workspace"
    with pytest.raises(NoCounterpartError, match="read the input's path from the script's argument"):
        V1DataReference(blob, "x", "a.csv", mode="download", path_on_compute="/data/a.csv")
    # v1's uploads go to the LocalDatastore of that name at the default root.
    (tmp_path / "posts.json").write_text("{}")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "x.txt").write_text("x")
    assert blob.upload_files([str(tmp_path / "posts.json")], target_path="posts", overwrite=True) == ["posts/posts.json"]
    assert (isolated_env / "posts" / "posts.json").read_text() == "{}"
    with pytest.raises(Exception, match="already has 'posts/posts.json'. Pass overwrite=True"):
        blob.upload_files([tmp_path / "posts.json"], target_path="posts")
    assert blob.upload(tmp_path / "tree", target_path="t") == ["t/sub/x.txt"]
    # v1's workspace lookups name resources, checked when the pipeline is validated.
    assert "cpu" in ws.compute_targets and ws.compute_targets["cpu"].name == "cpu"
    assert ws.datastores["blobs"].name == "blobs"


# --- PipelineData and OutputFileDatasetConfig --------------------------------------------------------
def test_pipeline_data_and_output_file_dataset_config_between_steps(code, instance, datastore):
    from aml_assets.compat.data import OutputFileDatasetConfig as V1Output
    from aml_assets.compat.pipeline.core import PipelineData as V1PipelineData

    mid = V1PipelineData("mid", datastore="workspace", output_name="mid_port")
    table = (
        V1Output(name="table", destination=("blobs", "exports/{run-id}/{output-name}"))
        .as_upload()
        .read_delimited_files()
        .register_on_complete("scores", description="scores of the run")
    )
    latest = V1Output("latest", destination=("blobs", "latest/{output-name}")).as_mount()
    produce = PythonScriptStep(
        "produce", "produce.py", code, arguments=["--mid", mid, "--table", table, "--latest", latest, "9"],
        outputs=[mid],
    )
    # PipelineData bare in a reading step: mounted; as_download(): a private copy.
    consume = PythonScriptStep(
        "consume", "consume.py", code,
        arguments=["--mid", mid, "--out", OutputDataset("summary")],
        inputs=[table.as_input("scores_in")],
    )
    copy = PythonScriptStep(
        "copy", "read.py", code, arguments=["--in", "mid", mid.as_download(), "--out", OutputDataset("seen")]
    )
    assert [o.name for o in produce.all_outputs()] == ["mid", "scores", "latest"]
    assert [(i.name, i.mode) for i in consume.all_inputs()] == [("mid", InputMode.MOUNT), ("scores_in", InputMode.TABULAR)]
    pipeline = Pipeline("flow", [produce, consume, copy])
    assert pipeline.upstream_steps(consume) == {"produce"}
    first = run_job(pipeline.to_definitions(_resources()), instance, job="flow")
    assert first.success, step_failure_messages(first)
    summary = Path(materializations(first)["summary"]["uri"]) / "summary.txt"
    assert summary.read_text() == "3 rows, sum 9.75; intermediate 9"
    assert _seen(first, "seen")["mid"]["text"] == "intermediate 9"
    assert _seen(first, "seen")["mid"]["env"] == _seen(first, "seen")["mid"]["path"]
    # The tabular output is described as a table, registered under its new name...
    assert materializations(first)["scores"]["dagster/row_count"] == 3
    assert DatasetRegistry(datastore).versions("scores") == [1]
    # ... and copied to its destination, placeholders replaced.
    blobs = LocalDatastore(name="blobs").root_dir()
    assert (blobs / "exports" / first.run_id / "scores" / "scores.csv").read_text().endswith("3,9\n")
    assert (blobs / "latest" / "latest" / "scores.csv").is_file()
    shutil.rmtree(blobs / "exports" / first.run_id)  # the user's copy: theirs to delete

    fixed = blobs / "latest" / "latest" / "scores.csv"
    before = fixed.stat().st_mtime_ns
    second = run_job(pipeline.to_definitions(_resources()), instance, job="flow")
    assert second.success and set(reused(second).values()) == {True}
    # Reused, yet this run's destination holds the result too; the fixed one is left as it was.
    assert (blobs / "exports" / second.run_id / "scores" / "scores.csv").is_file()
    assert fixed.stat().st_mtime_ns == before
    assert DatasetRegistry(datastore).versions("scores") == [1]
    # New content replaces what a fixed destination held, and registers a new version.
    produce.arguments[-1] = "8"
    third = run_job(Pipeline("flow", [produce, consume, copy]).to_definitions(_resources()), instance, job="flow")
    assert third.success and fixed.read_text().endswith("3,8\n")
    assert DatasetRegistry(datastore).versions("scores") == [1, 2]


def test_reference_bindings_and_names(code):
    mid = PipelineData("mid")
    writer = PythonScriptStep("w", "produce.py", code, arguments=["--mid", mid], outputs=[mid])
    reader = PythonScriptStep("r", "read.py", code, arguments=["--in", "mid", mid, "--out", OutputDataset("o")], inputs=[mid])
    assert writer.all_outputs() == [mid] and writer.all_inputs() == []
    assert [(i.dataset, i.mode) for i in reader.all_inputs()] == [(mid, InputMode.MOUNT)]
    assert mid.as_dataset().as_named_input("m").as_download().mode is InputMode.DOWNLOAD
    assert isinstance(mid.as_download("m"), DatasetInput) and mid.as_download("m").name == "m"
    # An unnamed OutputFileDatasetConfig is named after the step that writes it.
    a, b = OutputFileDatasetConfig(), OutputFileDatasetConfig()
    with pytest.raises(ValueError, match="has none until a step writes it"):
        a.as_input()
    step = PythonScriptStep("make", "produce.py", code, arguments=["--mid", a, "--table", b])
    assert [o.name for o in step.all_outputs()] == ["make_output", "make_output_2"]
    assert a.as_input().mode is InputMode.MOUNT
    assert b.read_parquet_files().as_input("t").mode is InputMode.TABULAR and b.format == "parquet"
    with pytest.raises(ValueError, match=r"read_delimited_files\(set_column_types=...\) has no counterpart"):
        OutputFileDatasetConfig("x").read_delimited_files(set_column_types={"a": "int"})
    with pytest.raises(TypeError, match="is not \\(datastore key, 'path/on/it'\\)"):
        OutputFileDatasetConfig("x", destination="blobs/path")
    assert OutputFileDatasetConfig("x", ("blobs", "/out/{run-id}")).destination_for("r1") == ("blobs", "out/r1")


def test_v1_pipeline_data_and_outputs_through_compat(code):
    from aml_assets.compat.core import Datastore, Workspace
    from aml_assets.compat.data import OutputFileDatasetConfig as V1Output
    from aml_assets.compat.data.output_dataset_config import OutputFileDatasetConfig as ByModule
    from aml_assets.compat.pipeline.core import Pipeline as V1Pipeline
    from aml_assets.compat.pipeline.core import PipelineData as V1PipelineData
    from aml_assets.compat.pipeline.steps import PythonScriptStep as V1Step

    ws = Workspace.from_config(code)
    blob = Datastore(ws, "workspaceblobstore")
    data = V1PipelineData("prepped", datastore=blob)
    assert isinstance(data, PipelineData) and data.datastore == "workspaceblobstore"
    assert ByModule is V1Output
    out = V1Output("o", destination=(blob, "x/{output-name}"))
    assert out.destination == ("workspaceblobstore", "x/{output-name}")
    for call, instead in [
        (lambda: V1PipelineData("p", output_path_on_compute="/out"), "write into the folder"),
        (lambda: V1PipelineData("p", training_output=object()), "training script write"),
        (lambda: V1Output("o", source="/tmp/out"), "write the output into the folder"),
        (lambda: V1Output("o", partition_format="{x}/"), "partition folders"),
    ]:
        with pytest.raises(NoCounterpartError, match="Instead: ") as info:
            call()
        assert instead in str(info.value)
    prep = V1Step("produce.py", arguments=["--mid", data], outputs=[data], source_directory=code)
    seen = V1PipelineData("seen", datastore=blob)
    use = V1Step("read.py", arguments=["--in", "p", data, "--out", seen], inputs=[data], outputs=[seen],
                 source_directory=code)
    # v1 needs each PipelineData a step writes in its outputs=; elsewhere it is read.
    unlisted = V1Step("read.py", name="unlisted", arguments=["--out", V1PipelineData("nobody")], source_directory=code)
    assert [i.dataset.name for i in unlisted.all_inputs()] == ["nobody"] and unlisted.all_outputs() == []
    # v1 publishes each output where it says: with one datastore named, it is the pipeline's.
    pipeline = V1Pipeline(ws, steps=[[prep, use]])  # a nested list, as the seed article passes
    assert [s.name for s in pipeline.steps] == ["produce", "read"]
    assert pipeline.datastore == "workspaceblobstore"
    assert pipeline.validate() == []


def test_reference_problems_are_listed_by_validate(code):
    elsewhere = PipelineData("elsewhere", datastore="blobs")
    orphan = PipelineData("orphan")
    steps = [
        PythonScriptStep("w", "produce.py", code, arguments=[
            "--mid", elsewhere,
            OutputFileDatasetConfig("bad_placeholder", ("blobs", "out/{run_id}")),
            OutputFileDatasetConfig("unconfigured", ("nowhere", "out/{output-name}")),
            OutputFileDatasetConfig("protected", ("workspace", "steps/{output-name}")),
            OutputFileDatasetConfig("escapes", ("blobs", "../{output-name}")),
        ], outputs=[elsewhere]),
        PythonScriptStep("r", "read.py", code, arguments=["--in", "o", orphan, "--out", OutputDataset("seen")]),
        PythonScriptStep("n", "read.py", code, arguments=[DataReference("blobs", "nopath"), "--out", OutputDataset("n_out")]),
        PythonScriptStep("two", "read.py", code, arguments=[
            DataReference("blobs", path_on_datastore="a/posts.json"),
            DataReference("blobs", path_on_datastore="b/posts.json"), "--out", OutputDataset("two_out"),
        ]),
    ]
    problems = "\n".join(Pipeline("bad", steps).validate(_resources(), raise_errors=False))
    assert "output 'elsewhere' names datastore 'blobs', but every output of a pipeline is published" in problems
    assert "unknown placeholder(s) {run_id}; use {run-id} and {output-name}" in problems
    assert "copied to datastore 'nowhere', which is not configured" in problems
    assert "inside the folders aml-assets manages" in problems
    assert "output 'escapes' destination: Datastore 'blobs': path '../escapes' escapes the datastore root" in problems
    assert "step 'r' reads dataset 'orphan', which no step produces" in problems
    assert "dataset 'nopath': Datastore 'blobs': empty path" in problems
    assert "two different datasets are named 'posts' (blobs:a/posts.json, blobs:b/posts.json)" in problems


# --- a remote store (Azurite) ----------------------------------------------------------------------
@pytest.mark.azurite
def test_references_on_a_remote_store(code, instance, azurite, monkeypatch):
    """A DataReference on Azure Blob is staged for the step (mount and download alike) and
    reused by content; an output's destination on it is uploaded, placeholders replaced."""
    import uuid

    from dagster import EnvVar

    from aml_assets.data.azure import AzureBlobDatastore

    container = f"t{uuid.uuid4().hex[:16]}"
    azurite.create_container(container)
    monkeypatch.setenv("AML_TEST_AZURE_CONNECTION_STRING", azurite.connection_string)
    lake = AzureBlobDatastore(
        name="lake", container=container, connection_string=EnvVar("AML_TEST_AZURE_CONNECTION_STRING"), prefix="aml"
    )
    lake.write_bytes("raw/posts.txt", b"from the lake\n")
    ref = DataReference("lake", "posts", "raw/posts.txt")
    exported = OutputFileDatasetConfig("exported", destination=("lake", "exports/{run-id}/{output-name}"))
    step = PythonScriptStep("read", "read.py", code, arguments=["--in", "posts", ref, "--out", exported])
    defs = Pipeline("remote", [step]).to_definitions(_resources(lake=lake))
    first = run_job(defs, instance, job="remote")
    assert first.success, step_failure_messages(first)
    seen = json.loads(lake.read_bytes(f"exports/{first.run_id}/exported/seen.json"))
    assert seen["posts"]["text"] == "from the lake\n" and seen["posts"]["env"] == seen["posts"]["path"]
    second = run_job(defs, instance, job="remote")
    assert reused(second) == {"exported": True}
    assert lake.exists(f"exports/{second.run_id}/exported/seen.json")
