"""ParallelRunStep (issue 11): an entry script's init()/run(mini_batch) over a tabular or file
dataset in mini-batches on the CPU cluster's slots, with Azure's error settings and retries, the
append-row file in input order, and reuse per mini-batch.

Real small pipelines on temporary instances; the mini-batch counts are kept small (10 batches of
1,000 rows) so the suite stays quick on a loaded machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aml_assets import (
    FileDataset,
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    ParallelRunConfig,
    ParallelRunStep,
    Pipeline,
    TabularDataset,
)
from aml_assets.data.minibatches import parse_mini_batch_size, plan_input
from amlrun.parallel import threshold_problem
from tests.support.runs import materializations, reused, run_job, step_failure_messages

RESOURCES = {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=2)}
ROWS = 10_000
ROW_BYTES = 16  # "000123,00000246\n": fixed width, so 16,000 bytes are exactly 1,000 rows

#: Scores rows: fails on the mini-batch holding id FAIL_ID (every try), records its pid and the
#: first id of each mini-batch it runs in a trace file.
SCORE = """
import argparse, os, time
from pathlib import Path

def init():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--trace"); p.add_argument("--fail_id", type=int, default=-1)
    p.add_argument("--once_dir", default="")
    p.add_argument("--hang_once", default="")
    args, _ = p.parse_known_args()

def run(mini_batch):
    first = int(mini_batch["id"].iloc[0])
    with open(args.trace, "a") as fh:
        fh.write(f"{os.getpid()} {first}\\n")
    if args.once_dir:  # fail the first try of each mini-batch
        marker = Path(args.once_dir, str(first))
        if not marker.exists():
            marker.write_text("tried")
            raise RuntimeError(f"transient failure at {first}")
    if args.hang_once and first == 0 and not Path(args.hang_once).exists():
        Path(args.hang_once).write_text("hung")
        time.sleep(60)  # past run_invocation_timeout: the worker is replaced, the batch retried
    if (mini_batch["id"] == args.fail_id).any():
        raise ValueError(f"cannot score id {args.fail_id}")
    time.sleep(0.05)
    out = mini_batch.assign(score=mini_batch["value"] * 2)[["id", "score"]]
    return out
"""

#: Lists files; writes one file per input file into the output folder (summary_only).
FILES = """
import os, sys
from pathlib import Path
from amlrun.parallel import EntryScript

def init():
    global trace, out
    trace = sys.argv[sys.argv.index("--trace") + 1]
    out = Path(EntryScript().output_dir)

def run(mini_batch):
    rows = []
    for f in mini_batch:
        name = Path(f).name
        with open(trace, "a") as fh:
            fh.write(name + "\\n")
        text = Path(f).read_text()
        (out / (name + ".len")).write_text(str(len(text)))
        rows.append(f"{name}: {text.strip().upper()}")
    return rows
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCORE)
    (code / "files.py").write_text(FILES)
    (tmp_path / "numbers.csv").write_text(
        "id,value\n" + "".join(f"{i:06d},{i * 3:08d}\n" for i in range(ROWS))
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"doc{i}.txt").write_text(f"document {i}\n")
    return tmp_path


def _score_step(project: Path, *args: str, output: OutputDataset | None = None, **config) -> ParallelRunStep:
    numbers = TabularDataset.from_delimited_files("numbers", "numbers/numbers.csv", seed=project / "numbers.csv")
    settings = {
        "entry_script": "score.py",
        "source_directory": project / "code",
        "mini_batch_size": 1000 * ROW_BYTES,  # bytes, as Azure reads it: 10 mini-batches
        "process_count_per_node": 4,  # more than the cluster's 2 slots: bounded to 2
        **config,
    }
    return ParallelRunStep(
        name="score",
        parallel_run_config=ParallelRunConfig(**settings),
        inputs=[numbers.as_named_input("numbers")],
        output=output or OutputDataset("scores"),
        arguments=["--trace", str(project / "trace.txt"), *args],
    )


def _rows(datastore: LocalDatastore, result, name: str = "scores", file: str = "parallel_run_step.txt") -> list[str]:
    uri = materializations(result)[name]["uri"]
    return (Path(uri) / file).read_text().splitlines()


def _trace(project: Path) -> list[list[str]]:
    path = project / "trace.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_scores_10000_rows_on_two_slots_in_order_tolerating_one_failed_batch(project, instance, datastore):
    step = _score_step(project, "--fail_id", "3500", error_threshold=1000)
    result = run_job(Pipeline("scoring", [step]).to_definitions(RESOURCES), instance, job="scoring")
    assert result.success, step_failure_messages(result)
    rows = _rows(datastore, result)
    # Every row of the other nine mini-batches, in input order; 3000-3999 failed (tolerated).
    expected = [f"{i} {i * 6}" for i in range(ROWS) if not 3000 <= i < 4000]
    assert rows == expected
    meta = materializations(result)["scores"]
    assert meta["mini_batches"] == 10 and meta["mini_batches_failed"] == 1
    assert meta["items_failed"] == 1000 and meta["rows"] == 9000
    assert meta["processes"] == 2  # 4 asked, the cluster's 2 slots
    pids = {pid for pid, _ in _trace(project)}
    assert len(pids) == 2
    # The failed mini-batch was tried run_max_try=3 times, the others once.
    firsts = [int(first) for _, first in _trace(project)]
    assert firsts.count(3000) == 3 and len(firsts) == 12
    summary = json.loads((Path(meta["uri"]) / "_parallel_run_summary.json").read_text())
    assert summary["failed_mini_batches"][0]["batch"] == "numbers.csv rows 3001-4000"
    assert "cannot score id 3500" in summary["failed_mini_batches"][0]["error"]

    # Nothing changed: the whole step is reused (no process runs).
    (project / "trace.txt").unlink()
    again = run_job(Pipeline("scoring", [step]).to_definitions(RESOURCES), instance, job="scoring")
    assert again.success and reused(again) == {"scores": True} and _trace(project) == []

    # One row changed (id 7500): the step reruns, and computes only the mini-batch holding it,
    # plus the one that failed (failures are never stored, so they are tried again).
    data = Path(datastore.root_dir()) / "numbers" / "numbers.csv"
    data.chmod(0o644)
    data.write_text(data.read_text().replace("007500,00022500", "007500,00000001"))
    changed = run_job(Pipeline("scoring", [step]).to_definitions(RESOURCES), instance, job="scoring")
    assert changed.success, step_failure_messages(changed)
    assert sorted(int(first) for _, first in _trace(project)) == [3000, 3000, 3000, 7000]
    meta = materializations(changed)["scores"]
    assert meta["mini_batches_reused"] == 8 and meta["mini_batches_computed"] == 1
    rows = _rows(datastore, changed)
    assert rows[6500] == "7500 2" and rows[:6500] == expected[:6500] and rows[6501:] == expected[6501:]


def test_error_threshold_exceeded_fails_the_step_and_publishes_nothing(project, instance, datastore):
    step = _score_step(project, "--fail_id", "3500", error_threshold=999, run_max_try=1)
    result = run_job(Pipeline("scoring", [step]).to_definitions(RESOURCES), instance, job="scoring")
    assert not result.success
    [message] = step_failure_messages(result)
    assert "1000 failed items, more than error_threshold=999" in message
    assert "numbers.csv rows 3001-4000" in message and "cannot score id 3500" in message
    assert "Nothing was published" in message
    assert "scores" not in materializations(result)
    published = list((Path(datastore.root_dir()) / "steps" / "score").glob("*/*/scores"))
    assert published == []
    # allowed_failed_count counts mini-batches: one failed batch is over a limit of 0.
    by_count = _score_step(project, "--fail_id", "3500", error_threshold=-1, allowed_failed_count=0, run_max_try=1)
    failed = run_job(Pipeline("scoring", [by_count]).to_definitions(RESOURCES), instance, job="scoring")
    assert not failed.success
    assert "1 failed mini-batches, more than allowed_failed_count=0" in step_failure_messages(failed)[0]


def test_run_max_try_retries_a_failing_mini_batch(project, instance, datastore):
    once = project / "once"
    once.mkdir()
    step = _score_step(project, "--once_dir", str(once), mini_batch_size="5000 rows", run_max_try=2)
    result = run_job(Pipeline("scoring", [step]).to_definitions(RESOURCES), instance, job="scoring")
    assert result.success, step_failure_messages(result)
    meta = materializations(result)["scores"]
    assert meta["mini_batches"] == 2 and meta["retries"] == 2 and meta["items_failed"] == 0
    assert len(_rows(datastore, result)) == ROWS
    # With one try, the same transient failure is a failure (error_threshold=0 by default).
    # Other mini-batches (2,500 rows): the 5,000-row ones' results are stored and would be reused.
    for marker in once.iterdir():
        marker.unlink()
    strict = _score_step(project, "--once_dir", str(once), mini_batch_size="2500 rows", run_max_try=1)
    failed = run_job(Pipeline("scoring2", [strict]).to_definitions(RESOURCES), instance, job="scoring2")
    assert not failed.success
    assert "transient failure" in step_failure_messages(failed)[0]


def test_run_invocation_timeout_replaces_the_worker_and_retries(project, instance, datastore):
    marker = project / "hung.txt"
    step = _score_step(project, "--hang_once", str(marker), mini_batch_size="5000 rows", run_invocation_timeout=3)
    result = run_job(Pipeline("scoring", [step]).to_definitions(RESOURCES), instance, job="scoring")
    assert result.success, step_failure_messages(result)
    meta = materializations(result)["scores"]
    # The hung first try was stopped at 3 s; a new worker (init() again) did the retry.
    assert marker.exists() and meta["retries"] == 1 and meta["processes"] == 3
    assert len(_rows(datastore, result)) == ROWS


def _files_pipeline(project: Path, action: str = "append_row") -> Pipeline:
    docs = FileDataset.from_files("docs", "docs")
    config = ParallelRunConfig(
        entry_script="files.py", source_directory=project / "code", mini_batch_size=2,
        output_action=action, process_count_per_node=2,
        **({"append_row_file_name": "listing.txt"} if action == "append_row" else {}),
    )
    step = ParallelRunStep(
        name="list_docs", parallel_run_config=config, inputs=[docs],
        output=OutputDataset("listing"), arguments=["--trace", str(project / "trace.txt")],
    )
    return Pipeline("files", [step])


def _change_doc(datastore: LocalDatastore, name: str, text: str) -> None:
    path = Path(datastore.root_dir()) / "docs" / name
    path.chmod(0o644)
    path.write_text(text)


@pytest.fixture
def docs(project: Path, datastore: LocalDatastore) -> None:
    """Five small text files on the datastore (a file dataset's folder)."""
    datastore.upload_files(sorted((project / "docs").iterdir()), "docs")


def test_changing_one_file_recomputes_only_its_mini_batch(project, instance, datastore, docs):
    first = run_job(_files_pipeline(project).to_definitions(RESOURCES), instance, job="files")
    assert first.success, step_failure_messages(first)
    assert sorted(n for [n] in _trace(project)) == [f"doc{i}.txt" for i in range(5)]
    listing = _rows(datastore, first, "listing", "listing.txt")
    assert listing == [f"doc{i}.txt: DOCUMENT {i}" for i in range(5)]

    (project / "trace.txt").unlink()
    _change_doc(datastore, "doc2.txt", "changed\n")
    second = run_job(_files_pipeline(project).to_definitions(RESOURCES), instance, job="files")
    assert second.success, step_failure_messages(second)
    # Mini-batches [doc0, doc1] [doc2, doc3] [doc4]: only the one holding doc2 ran again.
    assert sorted(n for [n] in _trace(project)) == ["doc2.txt", "doc3.txt"]
    meta = materializations(second)["listing"]
    assert meta["mini_batches"] == 3 and meta["mini_batches_reused"] == 2 and meta["mini_batches_computed"] == 1
    assert _rows(datastore, second, "listing", "listing.txt") == [
        "doc0.txt: DOCUMENT 0", "doc1.txt: DOCUMENT 1", "doc2.txt: CHANGED",
        "doc3.txt: DOCUMENT 3", "doc4.txt: DOCUMENT 4",
    ]


def test_summary_only_keeps_the_files_run_wrote_including_reused_ones(project, instance, datastore, docs):
    first = run_job(_files_pipeline(project, "summary_only").to_definitions(RESOURCES), instance, job="files")
    assert first.success, step_failure_messages(first)
    out = Path(materializations(first)["listing"]["uri"])
    assert sorted(p.name for p in out.iterdir()) == ["_parallel_run_summary.json"] + [
        f"doc{i}.txt.len" for i in range(5)
    ]
    _change_doc(datastore, "doc4.txt", "a longer document\n")
    (project / "trace.txt").unlink()
    second = run_job(_files_pipeline(project, "summary_only").to_definitions(RESOURCES), instance, job="files")
    assert second.success, step_failure_messages(second)
    assert [n for [n] in _trace(project)] == ["doc4.txt"]
    out = Path(materializations(second)["listing"]["uri"])
    # The reused mini-batches' files come from the store; the recomputed one's is new.
    assert (out / "doc0.txt.len").read_text() == str(len("document 0\n"))
    assert (out / "doc4.txt.len").read_text() == str(len("a longer document\n"))
    summary = json.loads((out / "_parallel_run_summary.json").read_text())
    assert summary["rows"] == 5 and summary["failed_items"] == 0


def test_an_entry_script_that_cannot_start_fails_the_step_saying_why(project, instance, datastore, docs):
    (project / "code" / "copy.py").write_text("import copy\ndef init():\n    raise OSError('no model file')\ndef run(b):\n    return b\n")
    (project / "code" / "norun.py").write_text("def init():\n    pass\n")
    for script, why in [("copy.py", "OSError: no model file"), ("norun.py", "has no run(mini_batch) function")]:
        config = ParallelRunConfig(entry_script=script, source_directory=project / "code", mini_batch_size=2)
        step = ParallelRunStep(name="broken", parallel_run_config=config, inputs=[FileDataset.from_files("docs", "docs")])
        result = run_job(Pipeline("broken", [step]).to_definitions(RESOURCES), instance, job="broken")
        assert not result.success
        [message] = step_failure_messages(result)
        assert "the entry script could not start (its import or init() failed)" in message and why in message
        assert "Nothing was published" in message and "broken_output" not in materializations(result)


@pytest.mark.azurite
def test_mini_batch_results_are_reused_from_azure_blob(project, instance, azurite, monkeypatch):
    import uuid

    from dagster import EnvVar

    from aml_assets.data.azure import AzureBlobDatastore

    monkeypatch.setenv("AML_TEST_AZURE_CONNECTION_STRING", azurite.connection_string)
    container = f"t{uuid.uuid4().hex[:16]}"
    azurite.create_container(container)
    store = AzureBlobDatastore(
        name="workspace", container=container,
        connection_string=EnvVar("AML_TEST_AZURE_CONNECTION_STRING"), prefix="aml",
    )
    store.upload_files(sorted((project / "docs").iterdir()), "docs")
    resources = {**RESOURCES, "workspace": store}
    first = run_job(_files_pipeline(project, "summary_only").to_definitions(resources), instance, job="files")
    assert first.success, step_failure_messages(first)
    assert any(name.endswith(".json") for name in store.list_dir(f"_minibatches/{store.list_dir('_minibatches')[0]}"))

    (project / "trace.txt").unlink()
    store.write_bytes("docs/doc0.txt", b"first, changed\n")
    second = run_job(_files_pipeline(project, "summary_only").to_definitions(resources), instance, job="files")
    assert second.success, step_failure_messages(second)
    assert sorted(n for [n] in _trace(project)) == ["doc0.txt", "doc1.txt"]
    meta = materializations(second)["listing"]
    assert meta["mini_batches_reused"] == 2 and meta["uri"].startswith(f"abfs://{container}/aml/")
    # The reused mini-batches' files came back from the blob container into the output.
    rel = meta["uri"].split(f"abfs://{container}/aml/", 1)[1]
    assert store.read_bytes(f"{rel}/doc3.txt.len") == str(len("document 3\n")).encode()
    assert store.read_bytes(f"{rel}/doc0.txt.len") == str(len("first, changed\n")).encode()


# --- pieces, without a pipeline ------------------------------------------------------------------
def test_delimited_mini_batches_cut_at_record_boundaries_outside_quotes(tmp_path):
    data = tmp_path / "t.csv"
    data.write_bytes(b'id,text\n1,"a\nb"\n2,plain\n3,"x,""y""\nz"\n4,last\n\n')
    by_rows = plan_input("t", data, "csv", parse_mini_batch_size("2 rows", True), {"header": True}, None)
    assert [b.items for b in by_rows] == [2, 2]
    assert [b.label for b in by_rows] == ["t.csv rows 1-2", "t.csv rows 3-4"]
    first = by_rows[0].spec
    assert data.read_bytes()[first["offset"] : first["offset"] + first["length"]] == b'1,"a\nb"\n2,plain\n'
    # Bytes: a mini-batch ends at the first record boundary at or past the size.
    by_bytes = plan_input("t", data, "csv", parse_mini_batch_size(1, True), {"header": True}, None)
    assert [b.items for b in by_bytes] == [1, 1, 1, 1]
    # Changing one record changes only its mini-batch's content identity.
    data.write_bytes(b'id,text\n1,"a\nb"\n2,plain\n3,"x,""y""\nz"\n4,LAST\n\n')
    changed = plan_input("t", data, "csv", parse_mini_batch_size("2 rows", True), {"header": True}, None)
    assert changed[0].content == by_rows[0].content and changed[1].content != by_rows[1].content


def test_mini_batch_size_and_thresholds_read_as_azure_does():
    assert parse_mini_batch_size("64KB", True).amount == 64 * 1024
    assert parse_mini_batch_size(None, True).amount == 1024 * 1024
    assert parse_mini_batch_size(None, False).amount == 10
    with pytest.raises(ValueError, match="a file input is cut into a number of files"):
        parse_mini_batch_size("10MB", False)
    assert threshold_problem(5, 1, 10, 5, None, None) is None
    assert "error_threshold=4" in threshold_problem(5, 1, 10, 4, None, None)
    assert threshold_problem(10**6, 9, 10, -1, -1, 100) is None
    assert "allowed_failed_percent=10" in threshold_problem(0, 2, 10, -1, None, 10)
    with pytest.raises(ValueError, match="output_action 'append' is not"):
        ParallelRunConfig(entry_script="s.py", output_action="append")  # type: ignore[arg-type]


def test_v1_signatures_build_ours(tmp_path):
    from aml_assets.compat import NoCounterpartError
    from aml_assets.compat.core import Dataset, Environment
    from aml_assets.compat.pipeline.steps import ParallelRunConfig as V1Config
    from aml_assets.compat.pipeline.steps import ParallelRunStep as V1Step

    (tmp_path / "score.py").write_text("def run(b):\n    return b\n")
    images = Dataset.File.from_files(path=[("workspace", "mnist/")])
    config = V1Config(
        Environment("batch"), "score.py", 10, "append_row", "cpucluster", 2,
        process_count_per_node=2, mini_batch_size="5", source_directory=tmp_path,
        append_row_file_name="out.txt", run_max_try=2,
    )
    assert isinstance(config, ParallelRunConfig) and isinstance(config, V1Config)
    output = OutputDataset("inferences")
    step = V1Step("batch-score", config, [images.as_named_input("mnist")], output, None, ["--x", "1"], False)
    assert isinstance(step, ParallelRunStep)
    assert step.name == "batch_score" and step.outputs == [output] and not step.allow_reuse
    assert step.script_path == tmp_path / "score.py" and step.compute_target == "cpucluster"
    assert step.kind_settings()["mini_batch_size"] == "5 files"
    with pytest.raises(NoCounterpartError, match="partition_keys"):
        V1Config(None, "score.py", 1, "append_row", "cpucluster", 1, partition_keys=["day"])
    with pytest.raises(ValueError, match="mix tabular and file datasets"):
        table = Dataset.Tabular.from_delimited_files(path=[("workspace", "t.csv")])
        V1Step("mixed", config, [images.as_named_input("a"), table.as_named_input("b")])
