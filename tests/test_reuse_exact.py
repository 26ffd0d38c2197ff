"""Reuse that is exact, on real (Spark-free) pipelines: everything a step sees is in its
fingerprint, nothing else is. Each family of change is tried with several members."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from aml_assets import (
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PythonScriptStep,
    TabularDataset,
)
from aml_assets.cli import main
from aml_assets.reuse.ledger import StepLedger
from tests.support.runs import materializations, reused, run_job

RESOURCES = {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=2)}

READ_SCRIPT = """
import sys
from pathlib import Path
from amlrun import Run
df = Run.get_context().input_datasets["src"].to_pandas_dataframe()
(Path(sys.argv[1]) / "out.csv").write_text(df.to_csv(index=False))
"""


def _reader_pipeline(root: Path, **declaration) -> Pipeline:
    code = root / "code"
    code.mkdir(exist_ok=True)
    (code / "read.py").write_text(READ_SCRIPT)
    src = TabularDataset.from_delimited_files("src", declaration.pop("path", "src/data.csv"), **declaration)
    out = OutputDataset("read_out", format="csv")
    step = PythonScriptStep(
        name="reader", script="read.py", source_directory=code,
        arguments=[out], inputs=[src.as_named_input("src")],
    )
    return Pipeline("readers", steps=[step])


def _run_reader(root, instance, **declaration):
    defs = _reader_pipeline(root, **declaration).to_definitions(RESOURCES)
    result = run_job(defs, instance, job="readers")
    assert result.success
    return result


@pytest.fixture
def csv_data(datastore):
    data = datastore.local_path("src/data.csv")
    data.parent.mkdir(parents=True)
    data.write_bytes("a,b\n1,x\n2,y\n".encode("latin-1"))
    other = datastore.local_path("src/copy.csv")
    other.write_bytes(data.read_bytes())
    return data


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"separator": ";"}, "input src: separator changed (',' -> ';')"),
        ({"header": False}, "input src: header changed (True -> False)"),
        ({"encoding": "latin-1"}, "input src: encoding changed ('utf-8' -> 'latin-1')"),
        ({"column_types": {"a": "double"}}, "input src: column_types.a changed (<unset> -> 'double')"),
        ({"options": {"quote": "'"}}, "input src: options.quote changed (<unset> -> \"'\")"),
        # The same bytes at another path: the declaration changed, whatever the content says.
        ({"path": "src/copy.csv"}, "input src: path changed ('src/data.csv' -> 'src/copy.csv')"),
    ],
)
def test_changing_how_a_source_is_read_reruns_its_readers(
    tmp_path, instance, datastore, csv_data, change, reason
):
    first = _run_reader(tmp_path, instance)
    assert reused(_run_reader(tmp_path, instance)) == {"read_out": True}
    changed = _run_reader(tmp_path, instance, **change)
    assert reused(changed) == {"read_out": False}
    assert reason in materializations(changed)["read_out"]["runs_because"]
    assert first.success


def test_the_reader_options_shape_what_the_script_receives(tmp_path, instance, datastore, csv_data):
    _run_reader(tmp_path, instance, column_types={"a": "double"})
    out = StepLedger(datastore, "reader").latest_record()
    assert out.status == "ran"
    ref = DatasetPath(datastore, "read_out")
    assert ref.read().splitlines() == ["a,b", "1.0,x", "2.0,y"]


class DatasetPath:
    """The published file of a step output, found through its latest reference."""

    def __init__(self, store, asset):
        self.store, self.asset = store, asset

    def read(self) -> str:
        import json

        ref = json.loads(self.store.read_bytes(f"_refs/{self.asset}/latest.json"))
        return next(self.store.local_path(ref["path"]).glob("*.csv")).read_text()


def test_changing_the_input_mode_reruns(tmp_path, instance, datastore, csv_data):
    code = tmp_path / "code"
    code.mkdir()
    (code / "cp.py").write_text(
        "import shutil, sys\nfrom pathlib import Path\n"
        "src = Path(sys.argv[1]); src = src if src.is_file() else next(src.iterdir())\n"
        "shutil.copy(src, Path(sys.argv[2]) / 'c.csv')\n"
    )
    src = TabularDataset.from_delimited_files("src", "src/data.csv")

    def run(mode):
        out = OutputDataset("cp_out", format="files")
        step = PythonScriptStep(name="cp", script="cp.py", source_directory=code,
                                arguments=[src.as_input("src", mode), out])
        return run_job(Pipeline("modes", [step]).to_definitions(RESOURCES), instance, job="modes")

    assert run("download").success
    mount = run("mount")
    assert reused(mount) == {"cp_out": False}
    assert materializations(mount)["cp_out"]["runs_because"].startswith("arguments changed")


# --- code: the import closure -------------------------------------------------------------------

FAN_SCRIPT = """
import sys
from pathlib import Path
{imports}
prep = Path(sys.argv[1]).read_text() if Path(sys.argv[1]).is_file() else next(Path(sys.argv[1]).iterdir()).read_text()
(Path(sys.argv[2]) / "v.txt").write_text(f"{{prep.strip()}}-{i}-{{VALUE}}\\n")
"""


def _fan_out(root: Path, n: int = 20) -> Pipeline:
    """prep -> n steps sharing one source directory (half import helpers.py) -> aggregate."""
    code = root / "fan"
    code.mkdir(exist_ok=True)
    (code / "helpers.py").write_text("# shared helper\nVALUE = 1\n")
    (code / "prep.py").write_text(
        "import sys\nfrom pathlib import Path\n(Path(sys.argv[1]) / 'p.txt').write_text('prep')\n"
    )
    prepared = OutputDataset("prepared")
    steps = [PythonScriptStep(name="prep", script="prep.py", source_directory=code, arguments=[prepared])]
    outs = []
    for i in range(n):
        imports = "from helpers import VALUE" if i % 2 == 0 else "VALUE = 1"
        (code / f"s{i}.py").write_text(FAN_SCRIPT.format(imports=imports, i=i))
        out = OutputDataset(f"o{i}")
        outs.append(out)
        steps.append(PythonScriptStep(name=f"s{i}", script=f"s{i}.py", source_directory=code,
                                      arguments=[prepared.as_download(f"p{i}"), out]))
    (code / "aggregate.py").write_text(
        "import sys\nfrom pathlib import Path\n*ins, out = sys.argv[1:]\n"
        "text = ''.join(next(Path(p).iterdir()).read_text() for p in ins)\n"
        "(Path(out) / 'all.txt').write_text(text)\n"
    )
    total = OutputDataset("total")
    steps.append(PythonScriptStep(name="aggregate", script="aggregate.py", source_directory=code,
                                  arguments=[*(o.as_download() for o in outs), total]))
    return Pipeline("fan", steps=steps)


@pytest.mark.slow
def test_a_helper_edit_reruns_only_its_importers_and_what_they_feed(tmp_path, instance):
    defs = _fan_out(tmp_path).to_definitions(RESOURCES)
    assert run_job(defs, instance, job="fan").success
    helper = tmp_path / "fan" / "helpers.py"

    helper.write_text("# shared helper, reworded comment\n\nVALUE  =  1   # same value\n")
    comment_only = run_job(defs, instance, job="fan")
    assert comment_only.success and all(reused(comment_only).values()), reused(comment_only)

    helper.write_text("VALUE = 2\n")
    edited = run_job(defs, instance, job="fan")
    flags = reused(edited)
    rerun = sorted(k for k, v in flags.items() if not v)
    assert rerun == sorted([f"o{i}" for i in range(0, 20, 2)] + ["total"]), rerun
    assert flags["prepared"] is True
    because = materializations(edited)["o0"]["runs_because"]
    assert because == "script fan/helpers.py changed"


def test_a_chain_of_step_scripts_and_a_subfolder_script(tmp_path, instance):
    """a imports b imports c (all three are step scripts); models/tuned.py imports its neighbour."""
    code = tmp_path / "chain"
    (code / "models").mkdir(parents=True)
    body = "import sys\nfrom pathlib import Path\nif __name__ == '__main__':\n    (Path(sys.argv[1]) / 'x').write_text(str({value}))\n"
    (code / "a.py").write_text("from b import B\n" + body.format(value="B"))
    (code / "b.py").write_text("from c import C\nB = C + 1\n" + body.format(value="B"))
    (code / "c.py").write_text("C = 1\n" + body.format(value="C"))
    (code / "models" / "base.py").write_text("X = 1\n")
    (code / "models" / "tuned.py").write_text("from base import X\n" + body.format(value="X"))
    steps = [
        PythonScriptStep(name=n, script=s, source_directory=code, arguments=[OutputDataset(f"{n}_out")])
        for n, s in [("a", "a.py"), ("b", "b.py"), ("c", "c.py"), ("tuned", "models/tuned.py")]
    ]
    defs = Pipeline("chain", steps=steps).to_definitions(RESOURCES)
    assert run_job(defs, instance, job="chain").success
    (code / "c.py").write_text("C = 2\n" + body.format(value="C"))
    (code / "models" / "base.py").write_text("X = 2\n")
    second = run_job(defs, instance, job="chain")
    assert reused(second) == {"a_out": False, "b_out": False, "c_out": False, "tuned_out": False}
    assert "script chain/c.py changed" in materializations(second)["a_out"]["runs_because"]
    assert "script chain/models/base.py changed" in materializations(second)["tuned_out"]["runs_because"]
    (code / "b.py").write_text("from c import C\nB = C + 1\n# comment\n" + body.format(value="B"))
    third = run_job(defs, instance, job="chain")
    assert all(reused(third).values())


# --- paths are resolved where they are declared ---------------------------------------------------


def test_relative_hash_paths_and_seed_resolve_where_declared(tmp_path, instance, monkeypatch):
    project = tmp_path / "proj"
    (project / "code").mkdir(parents=True)
    (project / "conf").mkdir()
    (project / "conf" / "settings.yaml").write_text("alpha: 1\n")
    (project / "seed.csv").write_text("a\n1\n")
    (project / "code" / "s.py").write_text(
        "import sys, shutil\nfrom pathlib import Path\nshutil.copy(sys.argv[1], Path(sys.argv[2]) / 'a.csv')\n"
    )
    monkeypatch.chdir(project)
    src = TabularDataset.from_delimited_files("seeded", "seeded/a.csv", seed="seed.csv")
    step = PythonScriptStep(name="s", script="s.py", source_directory="code", hash_paths=["conf"],
                            arguments=[src.as_download(), OutputDataset("s_out")])
    defs = Pipeline("paths", [step]).to_definitions(RESOURCES)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "conf").mkdir(parents=True)
    (elsewhere / "conf" / "settings.yaml").write_text("alpha: 999\n")
    (elsewhere / "seed.csv").write_text("a\n999\n")
    monkeypatch.chdir(elsewhere)
    assert run_job(defs, instance, job="paths").success
    assert LocalDatastore().local_path("seeded/a.csv").read_text() == "a\n1\n"  # the project's seed
    assert reused(run_job(defs, instance, job="paths")) == {"s_out": True}
    (project / "conf" / "settings.yaml").write_text("alpha: 2\n")
    changed = run_job(defs, instance, job="paths")
    assert reused(changed) == {"s_out": False}
    assert f"script {project / 'conf' / 'settings.yaml'} changed" in materializations(changed)["s_out"]["runs_because"]


# --- explain ----------------------------------------------------------------------------------------


def test_explain_shows_failed_runs_and_names_the_datastore(tmp_path, instance, datastore, csv_data):
    code = tmp_path / "code"
    code.mkdir()
    script = code / "read.py"
    script.write_text("import sys\nsys.exit(3)\n")
    src = TabularDataset.from_delimited_files("src", "src/data.csv")
    step = PythonScriptStep(name="reader", script="read.py", source_directory=code,
                            arguments=[OutputDataset("read_out")], inputs=[src.as_named_input("src")])
    defs = Pipeline("readers", steps=[step]).to_definitions(RESOURCES)
    ok = run_job(defs, instance, job="readers")  # fails: exit 3
    assert not ok.success
    failed_again = run_job(defs, instance, job="readers")
    assert not failed_again.success
    records = StepLedger(datastore, "reader").run_records()
    assert [r.status for r in records] == ["failed", "failed"]
    assert "exited with code 3" in records[-1].error
    root = str(datastore.root_dir())

    out = io.StringIO()
    assert main(["--root", root, "explain", "reader", "--list"], out=out) == 0
    text = out.getvalue()
    assert f"Datastore 'workspace': {datastore.uri()}" in text
    assert text.count(" failed") == 2

    out = io.StringIO()
    assert main(["--root", root, "explain", "reader"], out=out) == 0
    text = out.getvalue()
    assert f"run {failed_again.run_id} tried to run because: the previous attempt (run {ok.run_id}) failed; trying again; it failed:" in text
    assert "exited with code 3" in text

    script.write_text("import sys\nfrom pathlib import Path\n(Path(sys.argv[1]) / 'x').write_text('1')\n")
    fixed = run_job(defs, instance, job="readers")
    assert fixed.success
    assert materializations(fixed)["read_out"]["runs_because"] == "script code/read.py changed"


def test_explain_suggests_close_step_names(tmp_path, instance, datastore, csv_data, capsys):
    _run_reader(tmp_path, instance)
    assert main(["--root", str(datastore.root_dir()), "explain", "raeder"]) == 2
    err = capsys.readouterr().err
    assert "Step 'raeder' has no recorded runs on datastore 'workspace'" in err
    assert "Did you mean 'reader'?" in err
    assert str(datastore.root_dir()) in err


def test_explain_stays_fast_with_a_long_history(tmp_path, datastore):
    """The latest decision is found through a pointer and a link, not by reading every record."""
    import time

    from aml_assets.reuse.records import RunRecord

    for i in range(10_000):
        record = RunRecord(run_id=f"run{i:05d}", step="train", fingerprint="f", components={}, status="reused")
        record.name = f"{i:020d}-run{i:05d}.json"
        record.previous = f"{i - 1:020d}-run{i - 1:05d}.json" if i else None
        datastore._write_record(f"steps/train/runs/{record.name}", record.to_json())
    datastore._write_record("steps/train/latest-run.json", record.to_json())
    started = time.perf_counter()
    out = io.StringIO()
    assert main(["--root", str(datastore.root_dir()), "explain", "train"], out=out) == 0
    assert time.perf_counter() - started < 0.5
    assert "run run09999 reused" in out.getvalue() and "nothing changed" in out.getvalue()
    # The API answers as fast, and prune_runs (gc --keep-runs) trims the history.
    ledger = StepLedger(datastore, "train")
    started = time.perf_counter()
    current, previous, reasons = ledger.explain()
    assert time.perf_counter() - started < 0.5
    assert (current.run_id, previous.run_id, reasons) == ("run09999", "run09998", [])
    assert len(ledger.prune_runs(keep=100)) == 9_900
    assert len(ledger.record_names()) == 100 and ledger.explain()[0].run_id == "run09999"
