"""Publishing pipelines immutably, running a published version's frozen code, endpoints."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aml_assets import (
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineParameter,
    PythonScriptStep,
    TabularDataset,
)
from aml_assets.data import layout
from aml_assets.data.content import hash_bytes
from aml_assets.pipeline.publish import PipelineEndpoint, PublishedPipeline, PublishError
from aml_assets.pipeline.snapshots import (
    SnapshotError,
    materialize_tree,
    snapshot_cache_dir,
    step_for_run,
)
from aml_assets.pipeline.tags import ENDPOINT_TAG, PUBLISHED_ID_TAG, SNAPSHOT_TAG
from tests.support.runs import log_messages, materializations, run_job

LOG = logging.getLogger("test_publish")

SCRIPT = """
import argparse
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--out"); p.add_argument("--factor", type=int)
a = p.parse_args()
rows = Path(a.data).read_text().splitlines()[1:]
(Path(a.out) / "result.txt").write_text(f"{VERSION} rows={len(rows)} factor={a.factor}")
print("script", VERSION)
"""


def write_script(code: Path, version: str) -> None:
    (code / "train.py").write_text(f"VERSION = {version!r}\n" + SCRIPT)


def mini_project(root: Path, version: str = "v1") -> Path:
    code = root / "code"
    code.mkdir(parents=True, exist_ok=True)
    write_script(code, version)
    (code / "helpers").mkdir(exist_ok=True)
    (code / "helpers" / "notes.txt").write_text("shipped with the code")
    (root / "data.csv").write_text("id,value\n" + "".join(f"{i},{i * i}\n" for i in range(5)))
    return code


def mini_pipeline(root: Path, factor: int = 2, script: str = "train.py") -> Pipeline:
    """data.csv (source) -> train (Python step) -> result."""
    source = TabularDataset.from_delimited_files(
        "numbers", "numbers/numbers.csv", seed=root / "data.csv"
    )
    result = OutputDataset("result", format="files")
    train = PythonScriptStep(
        name="train",
        script=script,
        source_directory=root / "code",
        arguments=[
            "--data",
            source.as_download("data"),
            "--out",
            result,
            "--factor",
            PipelineParameter("factor", factor, min=1),
        ],
        compute_target="cpucluster",
    )
    return Pipeline("mini", steps=[train])


def mini_resources() -> dict:
    return {
        "workspace": LocalDatastore(name="workspace"),
        "cpucluster": LocalProcessCluster(max_concurrent_steps=2),
    }


def result_text(result, datastore: LocalDatastore) -> str:
    ref = result.output_for_node("train", "result")
    return (datastore.local_path(ref.path) / "result.txt").read_text()


# --- publishing and versions -----------------------------------------------------------------


def test_publishing_unchanged_code_returns_the_same_version_and_an_edit_makes_a_new_one(
    project, datastore
):
    import definitions
    from resources.compute import compute_targets

    resources = {**compute_targets(), "workspace": datastore}
    first = definitions.build_pipeline(project).publish(
        "titanic", "Titanic training", resources=resources
    )
    again = definitions.build_pipeline(project).publish(
        "titanic", "Titanic training", resources=resources
    )
    assert (first.version, first.id) == (1, again.id) and again.version == 1
    assert first.pipeline_name == "synapse_pipeline" and first.status == "Active"
    assert first.endpoint == f"/api/v1/pipelines/{first.id}/runs"
    assert [p["name"] for p in first.parameters] == ["n_estimators"]
    assert [p.name for p in first.parameter_objects()] == ["n_estimators"]
    assert first.datastores == ["workspace"]
    assert set(first.step_snapshots) == {"dataprep", "train"}

    # The code is on the datastore, content-addressed, and the tree lists every script.
    train_bytes = (project / "code" / "train.py").read_bytes()
    assert datastore.read_bytes(layout.snapshot_object(hash_bytes(train_bytes))) == train_bytes
    tree_digest = first.step_snapshots["train"]
    assert datastore.exists(layout.snapshot_tree(tree_digest))
    assert first.run_tags() == {
        "aml/published_id": first.id,
        "aml/published_pipeline": "titanic",
        "aml/published_version": "1",
        SNAPSHOT_TAG: first.snapshot,
    }

    # Any edit of a script (even a comment) is a new version; the old one is kept as it was.
    (project / "code" / "train.py").write_text(train_bytes.decode() + "\n# tuned\n")
    second = definitions.build_pipeline(project).publish("titanic", resources=resources)
    assert second.version == 2 and second.id != first.id and second.snapshot != first.snapshot
    # Both steps run from the same folder: one tree, stored once.
    assert second.step_snapshots["dataprep"] == second.step_snapshots["train"]

    # Found again by id, by name (newest by default) and by name and version; listed.
    assert PublishedPipeline.get(first.id) == first  # the workspace datastore by default
    assert PublishedPipeline.get(name="titanic", datastore=datastore).id == second.id
    assert PublishedPipeline.get(name="titanic", version="1", datastore=datastore).id == first.id
    assert [(p.name, p.version) for p in PublishedPipeline.list(datastore)] == [
        ("titanic", 1),
        ("titanic", 2),
    ]
    assert second.to_json()["Version"] == 2 and second.to_json()["Status"] == "Active"


def test_a_structure_change_makes_a_new_version(tmp_path, datastore):
    mini_project(tmp_path)
    first = mini_pipeline(tmp_path).publish("mini", datastore=datastore)
    assert mini_pipeline(tmp_path).publish("mini", datastore=datastore).id == first.id
    changed = mini_pipeline(tmp_path, factor=3).publish("mini", datastore=datastore)
    assert changed.version == 2
    # A version label is free text; a new label on the same code is a new version.
    labelled = mini_pipeline(tmp_path, factor=3).publish(
        "mini", version="2024.1", datastore=datastore
    )
    assert labelled.version == 3 and labelled.version_label == "2024.1"
    assert (
        mini_pipeline(tmp_path, factor=3)
        .publish("mini", version="2024.1", datastore=datastore)
        .version
        == 3
    )


def test_datapath_parameters_are_published_and_pinned(tmp_path, datastore):
    from aml_assets.pipeline.datapath import DataPath, DataPathParameter

    mini_project(tmp_path)

    def pipeline(path: str) -> Pipeline:
        raw = DataPathParameter("raw", DataPath("workspace", path), "Rows to score.", format="csv")
        step = PythonScriptStep(
            name="train",
            script="train.py",
            source_directory=tmp_path / "code",
            arguments=[
                "--data",
                raw.as_download("data"),
                "--out",
                OutputDataset("result"),
                "--factor",
                1,
            ],
        )
        return Pipeline("scoring", steps=[step])

    first = pipeline("incoming/a.csv").publish("scoring", datastore=datastore)
    assert [(p["kind"], p["name"]) for p in first.parameters] == [("datapath", "raw")]
    (raw,) = first.parameter_objects()
    assert isinstance(raw, DataPathParameter) and raw.default_value == DataPath(
        "workspace", "incoming/a.csv"
    )
    moved = pipeline("incoming/b.csv")
    assert first.structure_problems(moved) == [
        "step 'train': parameters.raw.default_value.path_on_datastore: published 'incoming/a.csv', "
        "now 'incoming/b.csv'"
    ]
    assert moved.publish("scoring", datastore=datastore).version == 2


def test_an_invalid_pipeline_is_not_published(tmp_path, datastore):
    mini_project(tmp_path)
    with pytest.raises(PublishError, match="script 'missing.py' not found"):
        mini_pipeline(tmp_path, script="missing.py").publish("mini", datastore=datastore)
    with pytest.raises(PublishError, match="compute target 'cpucluster', which is not configured"):
        mini_pipeline(tmp_path).publish(
            "mini", datastore=datastore, resources={"workspace": datastore}
        )
    with pytest.raises(PublishError, match="not a valid published pipeline name"):
        mini_pipeline(tmp_path).publish("../escape", datastore=datastore)
    assert datastore.list_dir(layout.PUBLISHED) == []
    with pytest.raises(PublishError) as invalid:
        mini_pipeline(tmp_path, script="missing.py").publish("mini", datastore=datastore)
    assert invalid.value.not_found is False and "missing.py" in invalid.value.problems[0]


def test_unknown_published_pipelines_are_named_with_the_known_ones(tmp_path, datastore):
    mini_project(tmp_path)
    mini_pipeline(tmp_path).publish("mini", datastore=datastore)
    with pytest.raises(
        PublishError,
        match="No pipeline is published as 'mimi'.*published: mini.*Did you mean 'mini'",
    ):
        PublishedPipeline.get(name="mimi", datastore=datastore)
    with pytest.raises(PublishError, match="has no version 7; its versions are 1"):
        PublishedPipeline.get(name="mini", version=7, datastore=datastore)
    with pytest.raises(PublishError, match="No published pipeline has id '0123'") as missing:
        PublishedPipeline.get("0123", datastore=datastore)
    assert missing.value.not_found is True  # the HTTP API answers 404
    with pytest.raises(PublishError, match="not a valid pipeline endpoint name") as bad:
        PipelineEndpoint.get("../x", datastore)
    assert bad.value.not_found is True


def test_disable_and_enable(tmp_path, datastore):
    mini_project(tmp_path)
    published = mini_pipeline(tmp_path).publish("mini", datastore=datastore)
    published.disable()
    assert PublishedPipeline.get(published.id, datastore=datastore).status == "Disabled"
    assert (
        PublishedPipeline.get(published.id, datastore=datastore).to_json()["Status"] == "Disabled"
    )
    # Publishing the same code again returns that version as it is: still disabled.
    assert mini_pipeline(tmp_path).publish("mini", datastore=datastore).status == "Disabled"
    published.enable()
    assert PublishedPipeline.get(published.id, datastore=datastore).status == "Active"


def test_concurrent_publishers_get_distinct_versions(tmp_path, datastore):
    pipelines = []
    for i in range(6):
        root = tmp_path / f"p{i}"
        mini_project(root, version=f"v{i}")
        pipelines.append(mini_pipeline(root))
    barrier = threading.Barrier(len(pipelines))

    def publish(pipeline: Pipeline) -> PublishedPipeline:
        barrier.wait()
        return pipeline.publish("race", datastore=datastore)

    with ThreadPoolExecutor(len(pipelines)) as pool:
        results = list(pool.map(publish, pipelines))
    assert sorted(p.version for p in results) == [1, 2, 3, 4, 5, 6]
    assert len({p.id for p in results}) == 6
    assert {p.version for p in PublishedPipeline.list(datastore, name="race")} == {1, 2, 3, 4, 5, 6}

    # The same code published at once by several publishers is one version.
    same = [mini_pipeline(tmp_path / "p0") for _ in range(4)]
    barrier = threading.Barrier(len(same))

    def publish_same(pipeline: Pipeline) -> PublishedPipeline:
        barrier.wait()
        return pipeline.publish("same", datastore=datastore)

    with ThreadPoolExecutor(len(same)) as pool:
        results = list(pool.map(publish_same, same))
    assert {(p.id, p.version) for p in results} == {(results[0].id, 1)}


# --- running a published version ---------------------------------------------------------------


def test_running_version_1_after_an_edit_runs_the_old_script(tmp_path, datastore, instance):
    code = mini_project(tmp_path, version="v1")
    resources = mini_resources()
    v1 = mini_pipeline(tmp_path).publish("mini", datastore=datastore, resources=resources)
    write_script(code, "v2")
    pipeline = mini_pipeline(tmp_path)
    defs = pipeline.to_definitions(resources)
    v2 = pipeline.publish("mini", datastore=datastore)  # the resources of to_definitions
    assert (v1.version, v2.version) == (1, 2)

    old = run_job(defs, instance, job="mini", tags=v1.run_tags())
    assert old.success
    assert result_text(old, datastore) == "v1 rows=5 factor=2"
    assert any(
        "runs published pipeline 'mini' version 1" in m for m in log_messages(instance, old.run_id)
    )

    live = run_job(defs, instance, job="mini")
    assert live.success and result_text(live, datastore) == "v2 rows=5 factor=2"
    new = run_job(defs, instance, job="mini", tags=v2.run_tags())
    assert new.success and result_text(new, datastore) == "v2 rows=5 factor=2"
    # v2's frozen code is the live code: its run reuses the live run's result.
    assert materializations(new)["result"]["reused"] is True
    again = run_job(
        defs,
        instance,
        job="mini",
        tags=v1.run_tags(),
        run_config={"resources": {"pipeline": {"config": {"factor": 4}}}},
    )
    assert again.success and result_text(again, datastore) == "v1 rows=5 factor=4"

    # The frozen copy is read-only: a script cannot change the published code.
    folder = materialize_tree(datastore, v1.step_snapshots["train"])
    assert folder.name == "code" and "VERSION = 'v1'" in (folder / "train.py").read_text()
    assert (folder / "helpers" / "notes.txt").read_text() == "shipped with the code"
    assert not os.access(folder / "train.py", os.W_OK) or os.geteuid() == 0


def test_a_run_refuses_a_step_whose_structure_changed_since_publishing(tmp_path, datastore):
    mini_project(tmp_path)
    v1 = mini_pipeline(tmp_path).publish("mini", datastore=datastore)
    changed = mini_pipeline(tmp_path, factor=5).steps[0]
    with pytest.raises(
        SnapshotError,
        match=r"Step 'train' no longer matches published pipeline 'mini' "
        r"version 1.*parameters.factor.default_value: published 2, now 5.*publish a new version",
    ):
        step_for_run(changed, v1.run_tags(), datastore, LOG)
    problems = v1.structure_problems(mini_pipeline(tmp_path, factor=5))
    assert problems == ["step 'train': parameters.factor.default_value: published 2, now 5"]
    assert v1.structure_problems(mini_pipeline(tmp_path)) == []
    with pytest.raises(SnapshotError, match="has no 'aml/code_snapshot' tag"):
        step_for_run(mini_pipeline(tmp_path).steps[0], {PUBLISHED_ID_TAG: v1.id}, datastore, LOG)
    live = mini_pipeline(tmp_path).steps[0]
    assert step_for_run(live, {}, datastore, LOG) is live


def test_a_published_version_is_pinned_to_its_step_environments(tmp_path, datastore):
    """Another pin in the live declaration is a structure change: version 1 never silently runs
    with other packages, and publishing the change makes version 2."""
    import dataclasses

    from aml_assets import Environment

    mini_project(tmp_path)

    def pinned(version: str):
        pipeline = mini_pipeline(tmp_path)
        pipeline.steps = [dataclasses.replace(pipeline.steps[0], environment=Environment(pip=(f"six=={version}",)))]
        return pipeline

    v1 = pinned("1.16.0").publish("mini_env", datastore=datastore)
    assert pinned("1.16.0").publish("mini_env", datastore=datastore).id == v1.id
    problems = v1.structure_problems(pinned("1.17.0"))
    assert len(problems) == 1 and "environment" in problems[0], problems
    with pytest.raises(SnapshotError, match="no longer matches.*environment"):
        step_for_run(pinned("1.17.0").steps[0], v1.run_tags(), datastore, LOG)
    assert pinned("1.17.0").publish("mini_env", datastore=datastore).version == 2


@pytest.mark.parametrize(
    "change, where",
    [
        ({"version": "2"}, "version"),
        ({"params": {"mode": "slow"}}, "params.mode"),
        ({"params": {"mode": "fast", "extra": "1"}}, "params.extra"),
        ({"std_log_output": "result"}, "std_log_output"),
    ],
)
def test_a_published_version_is_pinned_to_its_v1_settings(tmp_path, datastore, change, where):
    """A step's version label, its params (AML_PARAMETER_ variables) and the output that keeps
    its printed log determine its result: version 1 never silently runs with other ones, and a
    step declaring none keeps the structure its versions were published with."""
    import dataclasses

    mini_project(tmp_path)

    def with_settings(**settings):
        pipeline = mini_pipeline(tmp_path)
        pipeline.steps = [dataclasses.replace(pipeline.steps[0], **settings)]
        return pipeline

    base = {"version": "1", "params": {"mode": "fast"}}
    v1 = with_settings(**base).publish("mini_v1", datastore=datastore)
    assert with_settings(**base).publish("mini_v1", datastore=datastore).id == v1.id
    problems = v1.structure_problems(with_settings(**{**base, **change}))
    assert len(problems) == 1 and where in problems[0], problems
    with pytest.raises(SnapshotError, match="no longer matches"):
        step_for_run(with_settings(**{**base, **change}).steps[0], v1.run_tags(), datastore, LOG)
    # Without any of them, the structure is what it was before they existed.
    plain = mini_pipeline(tmp_path).publish("mini_plain", datastore=datastore)
    assert plain.structure_problems(mini_pipeline(tmp_path)) == []


def test_a_published_version_is_pinned_to_its_run_after_order(tmp_path, datastore):
    mini_project(tmp_path)

    def ordered(after: bool):
        pipeline = mini_pipeline(tmp_path)
        train = pipeline.steps[0]
        first = dataclasses.replace(train, name="first", outputs=[], ordered_after=[], arguments=[
            "--data", train.arguments[1], "--out", OutputDataset("first_out", format="files"),
            "--factor", train.arguments[5],
        ])
        if after:
            train.run_after(first)
        pipeline.steps = [first, train]
        return pipeline

    v1 = ordered(after=True).publish("mini_order", datastore=datastore)
    problems = v1.structure_problems(ordered(after=False))
    assert any("run_after" in p for p in problems), problems
    assert v1.structure_problems(ordered(after=True)) == []


def test_a_tampered_snapshot_object_is_refused_and_publishing_again_repairs_it(tmp_path, datastore):
    code = mini_project(tmp_path)
    v1 = mini_pipeline(tmp_path).publish("mini", datastore=datastore)
    digest = hash_bytes((code / "train.py").read_bytes())
    obj = datastore.local_path(layout.snapshot_object(digest))
    obj.write_bytes(b"print('not the published code')\n")
    step = mini_pipeline(tmp_path).steps[0]
    with pytest.raises(
        SnapshotError, match=rf"object {digest} \(file 'code/train.py' .*\) .* is corrupted"
    ):
        step_for_run(step, v1.run_tags(), datastore, LOG)
    assert not (snapshot_cache_dir() / v1.step_snapshots["train"]).exists()

    assert mini_pipeline(tmp_path).publish("mini", datastore=datastore).id == v1.id  # repairs it
    run_step = step_for_run(step, v1.run_tags(), datastore, LOG)
    assert run_step.source_directory != step.source_directory
    assert run_step.script_path.read_bytes() == (code / "train.py").read_bytes()

    # A modified local copy is noticed and replaced by the published bytes.
    run_step.script_path.chmod(0o644)
    run_step.script_path.write_text("print('edited in the cache')\n")
    again = step_for_run(step, v1.run_tags(), datastore, LOG)
    assert again.script_path.read_bytes() == (code / "train.py").read_bytes()

    # A tampered snapshot record is refused too.
    record = datastore.local_path(layout.snapshot_record(v1.snapshot))
    record.write_text(record.read_text().replace("train.py", "other.py"))
    with pytest.raises(SnapshotError, match=f"Code snapshot {v1.snapshot} .* is corrupted"):
        step_for_run(step, v1.run_tags(), datastore, LOG)


def test_concurrent_materializations_share_one_complete_copy(tmp_path, datastore):
    code = mini_project(tmp_path)
    v1 = mini_pipeline(tmp_path).publish("mini", datastore=datastore)
    leftover = snapshot_cache_dir() / ".0123456789abcdef-dead"  # from a process that died
    leftover.mkdir(parents=True)
    os.utime(leftover, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    barrier = threading.Barrier(8)

    def materialize(_: int) -> Path:
        barrier.wait()
        return materialize_tree(datastore, v1.step_snapshots["train"])

    with ThreadPoolExecutor(8) as pool:
        folders = set(pool.map(materialize, range(8)))
    assert len(folders) == 1
    folder = folders.pop()
    assert (folder / "train.py").read_bytes() == (code / "train.py").read_bytes()
    assert [p.name for p in folder.parent.parent.iterdir()] == [v1.step_snapshots["train"]]


def test_records_on_another_datastore_still_reach_the_runs(tmp_path, datastore):
    """Version records on one datastore, the pipeline writing to another: the snapshot goes to both."""
    mini_project(tmp_path)
    records = LocalDatastore(name="records", root=str(tmp_path / "records"))
    published = mini_pipeline(tmp_path).publish(
        "mini", datastore=records, resources=mini_resources()
    )
    assert PublishedPipeline.list(datastore) == [] and PublishedPipeline.list(records) == [
        published
    ]
    step = mini_pipeline(tmp_path).steps[0]
    for store in (records, datastore):
        shutil.rmtree(snapshot_cache_dir(), ignore_errors=True)
        assert step_for_run(step, published.run_tags(), store, LOG).script_path.is_file()


# --- endpoints ---------------------------------------------------------------------------------


def test_pipeline_endpoint_versions_and_default(tmp_path, datastore):
    code = mini_project(tmp_path)
    v1 = mini_pipeline(tmp_path).publish("mini", datastore=datastore)
    write_script(code, "v2")
    v2 = mini_pipeline(tmp_path).publish("mini", datastore=datastore)

    endpoint = PipelineEndpoint.publish("scoring", v1, description="Scores", datastore=datastore)
    assert endpoint.default_version == 1 and endpoint.endpoint == "/api/v1/endpoints/scoring/runs"
    assert endpoint.add(v2) == 2
    assert endpoint.add(v2.id) == 2  # already a version
    assert PipelineEndpoint.get("scoring", datastore).get_pipeline().id == v1.id
    assert endpoint.get_pipeline("2").id == v2.id
    endpoint.set_default(2)
    reloaded = PipelineEndpoint.get("scoring", datastore)
    assert reloaded.default_version == 2 and reloaded.get_pipeline().id == v2.id
    assert [(v.version, v.pipeline_id) for v in reloaded.list_versions()] == [
        (1, v1.id),
        (2, v2.id),
    ]
    assert reloaded.run_tags() == {**v2.run_tags(), ENDPOINT_TAG: "scoring"}
    assert reloaded.to_json()["Versions"] == [
        {"Version": 1, "PipelineId": v1.id},
        {"Version": 2, "PipelineId": v2.id},
    ]

    with pytest.raises(
        PublishError, match=r"'scoring' has no version 5; its versions are 1, 2 \(default 2\)"
    ):
        reloaded.set_default(5)
    with pytest.raises(PublishError, match="'scoring' already exists .*add_default"):
        PipelineEndpoint.publish("scoring", v1, datastore=datastore)
    with pytest.raises(
        PublishError, match="No pipeline endpoint is named 'scorin'.*Did you mean 'scoring'"
    ):
        PipelineEndpoint.get("scorin", datastore)

    # A pipeline (not yet published) is published under the endpoint's name; add_default.
    other = PipelineEndpoint.publish("fresh", mini_pipeline(tmp_path), datastore=datastore)
    assert other.get_pipeline().name == "fresh"
    assert (
        other.add_default(v1) == 2
        and PipelineEndpoint.get("fresh", datastore).get_pipeline().id == v1.id
    )
    assert [e.name for e in PipelineEndpoint.list(datastore)] == ["fresh", "scoring"]


@pytest.mark.spark
@pytest.mark.slow
def test_reference_pipeline_version_1_runs_its_old_train_script(
    project, spark_pool, instance, datastore
):
    import definitions
    from resources.compute import compute_targets

    resources = {
        **compute_targets(),
        "spark01": spark_pool,
        "workspace": LocalDatastore(name="workspace"),
    }
    v1 = definitions.build_pipeline(project).publish("titanic", resources=resources)
    train = project / "code" / "train.py"
    train.write_text(
        train.read_text() + '\n(out / "edited.txt").write_text("edited after publishing")\n'
    )
    pipeline = definitions.build_pipeline(project)
    defs = pipeline.to_definitions(resources)
    v2 = pipeline.publish("titanic")
    assert (v1.version, v2.version) == (1, 2)

    new = run_job(defs, instance, tags=v2.run_tags())
    assert new.success
    new_model = datastore.local_path(new.output_for_node("train", "titanic_model").path)
    assert (new_model / "edited.txt").read_text() == "edited after publishing"

    old = run_job(defs, instance, tags=v1.run_tags())
    assert old.success
    mats = materializations(old)
    assert mats["titanic_prepared"]["reused"] is True  # same dataprep code in both versions
    assert mats["titanic_model"]["reused"] is False and mats["titanic_model"]["accuracy"] >= 0.75
    old_model = datastore.local_path(old.output_for_node("train", "titanic_model").path)
    assert (old_model / "model.pkl").is_file() and not (old_model / "edited.txt").exists()
