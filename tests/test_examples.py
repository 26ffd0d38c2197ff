"""The README's examples as a user meets them: `make run` ends with the run's summary, and
"Write your own pipeline" shows the files of `examples/my_pipeline/` as they are and runs with
exactly the commands it prints (`aml-assets run` and Dagster's `dg launch`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from aml_assets import DatasetRegistry, LocalDatastore

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "my_pipeline"
VENV = Path(sys.executable).parent.parent


def _section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(section: str) -> list[tuple[str, str, str]]:
    """(line before the fence, language, body) of every fenced block."""
    pattern = re.compile(r"(?:^|\n)([^\n]*)\n\n?```(\w*)\n(.*?)```", re.S)
    return [(m.group(1), m.group(2), m.group(3)) for m in pattern.finditer(section)]


def _shown_files(section: str) -> dict[str, str]:
    """Blocks that name a file: on their first line (`# examples/...`) or just before them."""
    shown = {}
    for before, _, body in _blocks(section):
        first = re.match(r"# (examples/\S+?):?(\s|$)", body)
        named = re.fullmatch(r"`(examples/\S+)`:", before.strip())
        if first or named:
            shown[(first or named).group(1)] = body
    return shown


def test_the_readme_shows_every_file_of_the_example_as_it_is():
    shown = _shown_files(_section("Write your own pipeline"))
    files = sorted(
        p.relative_to(REPO).as_posix()
        for p in EXAMPLE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert sorted(shown) == files, "the README must show each file of examples/my_pipeline once"
    for rel, body in shown.items():
        assert body == (REPO / rel).read_text(), f"README's {rel} differs from the repository's"


def _run_commands(section: str) -> str:
    commands = [body for _, lang, body in _blocks(section) if lang == "bash" and "aml-assets run" in body]
    assert len(commands) == 1, "one block of commands to run the example"
    return commands[0]


@pytest.mark.spark
@pytest.mark.slow
def test_the_example_runs_as_the_readme_prints_it(tmp_path, datastore):
    # A copy of what the commands touch, run from its root as the README says; DAGSTER_HOME is
    # unset (conftest) so `aml-assets run` picks ./.dagster_home, and the datastore is the test's.
    root = tmp_path / "repo"
    shutil.copytree(EXAMPLE, root / "examples" / "my_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dagster.yaml", root / "dagster.yaml")
    script = _run_commands(_section("Write your own pipeline"))
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    # Each command's output after a marker line, so each can be checked on its own.
    marked = "".join(f"echo '>>> {line}'\n{line}\n" for line in script.splitlines() if line.strip())
    done = subprocess.run(
        ["bash", "-e", "-c", marked], cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    outputs = dict(
        (chunk.split("\n", 1) + [""])[:2] for chunk in done.stdout.split(">>> ")[1:]
    )
    upload, first, second, _, launched, shown = outputs.values()

    assert f"to {datastore.uri('sales/2024.csv')}" in upload
    assert (root / ".dagster_home").is_dir()
    assert "DAGSTER_HOME is not set: run history goes to" in done.stderr
    # The job is named after the Pipeline.
    assert re.search(r"^Run \w{8} of sales: succeeded in", first, re.M), first
    assert "  prep       ran: no previous run" in first
    assert "sales_clean: registered version 1 (new)" in first
    assert "  summarize  ran: no previous run" in first
    assert "rows=6  total_amount=525.5" in first  # the row without an amount is dropped
    first_id = re.search(r"^Run (\w{8})", first, re.M).group(1)
    assert f"  prep       reused outputs of run {first_id}" in second
    assert "  summarize  ran: parameter top_n changed (3 -> 2)" in second
    report = re.search(r"sales_report: (\S+)", second).group(1)
    assert (Path(report) / "top_regions.csv").read_text().splitlines() == [
        "region,amount", "west,200.0", "north,165.75",
    ]
    # `dg launch`: an ordinary run on the same home, with the default top_n, so both are reused.
    assert "RUN_SUCCESS" in launched + done.stderr
    assert f"  prep       reused outputs of run {first_id}" in shown
    assert f"  summarize  reused outputs of run {first_id}" in shown
    runs = DagsterInstance.from_config(str(root / ".dagster_home")).get_runs()
    assert [r.job_name for r in runs] == ["sales"] * 3
    assert DatasetRegistry(datastore).versions("sales_clean") == [1]


@pytest.mark.spark
@pytest.mark.slow
def test_make_run_ends_with_the_summary(tmp_path, datastore):
    home = tmp_path / "home"
    make = [
        "make", "-C", str(REPO), "--no-print-directory", f"VENV={VENV}",
        "-o", f"{VENV}/bin/.installed",  # the test's environment is installed already
        "run", f"DAGSTER_HOME={home}",
    ]
    cold = subprocess.run(make, capture_output=True, text=True, timeout=900)
    assert cold.returncode == 0, cold.stdout[-3000:] + cold.stderr[-5000:]
    summary = cold.stdout[cold.stdout.index("\nRun "):].strip().splitlines()
    run_id = re.match(r"Run (\w{8}) of synapse_pipeline: succeeded in [\d.]+ s \(Dagster run \1", summary[0])
    assert run_id, summary[0]
    store = re.escape(datastore.uri())
    path = re.escape(str(datastore.root_dir()))
    expected = [
        r"  titanic   described",
        rf"              titanic: {store}/titanic/titanic\.csv",
        r"  dataprep  ran: no previous run",
        rf"              titanic_prepared: registered version 1 \(new\)  {path}/steps/dataprep/\w+/\w+-\w+/titanic_prepared  prepared_rows=891",
        r"  train     ran: no previous run",
        rf"              titanic_model: {path}/steps/train/\w+/\w+-\w+/titanic_model  accuracy=0\.8\d*  test_rows=179",
    ]
    assert len(summary) == 1 + len(expected), summary
    for pattern, line in zip(expected, summary[1:], strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)
    assert "SupersessionWarning" not in cold.stderr  # no `dagster job execute` underneath

    prepared = DatasetRegistry(LocalDatastore()).get("titanic_prepared")
    assert prepared.version == 1 and len(prepared.to_pandas_dataframe()) == 891
    instance = DagsterInstance.from_config(str(home))
    model = instance.get_latest_materialization_event(AssetKey("titanic_model")).asset_materialization
    assert model.metadata["accuracy"].value >= 0.75

    started = time.perf_counter()
    again = subprocess.run(make, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert again.returncode == 0, again.stderr[-3000:]
    last = again.stdout.strip().splitlines()[-7:]
    assert last[0].startswith("Run ") and " of synapse_pipeline: succeeded in " in last[0]
    assert last[3] == f"  dataprep  reused outputs of run {run_id.group(1)}"
    assert "titanic_prepared: registered version 1 (unchanged)" in last[4]
    assert last[5] == f"  train     reused outputs of run {run_id.group(1)}"
    assert "accuracy=0.8" in last[6]
    print(f"reused `make run`: {seconds:.1f} s (load average {os.getloadavg()[0]:.1f})")


def test_datasets_upload_copies_files_and_refuses_to_replace_them(tmp_path, datastore, capsys):
    from aml_assets.cli import main

    local = tmp_path / "local"
    (local / ".hidden").mkdir(parents=True)
    (local / "a.csv").write_text("x\n1\n")
    (local / ".hidden" / "b.csv").write_text("x\n2\n")

    def upload(*args: str) -> tuple[int, str]:
        code = main(["datasets", "upload", *args])
        printed = capsys.readouterr()
        return code, printed.out + printed.err

    code, out = upload(str(local), "--to", "in")
    assert code == 0, out
    assert datastore.read_bytes("in/a.csv") == b"x\n1\n"
    assert datastore.read_bytes("in/.hidden/b.csv") == b"x\n2\n"
    assert "2 file(s) on datastore 'workspace'" in out
    (local / "a.csv").write_text("x\n3\n")
    code, out = upload(str(local), "--to", "in")
    assert code == 2 and "already has in/.hidden/b.csv, in/a.csv" in out and "--overwrite" in out
    assert datastore.read_bytes("in/a.csv") == b"x\n1\n"  # nothing replaced without --overwrite
    assert upload(str(local), "--to", "in", "--overwrite")[0] == 0
    assert datastore.read_bytes("in/a.csv") == b"x\n3\n"
    assert upload(str(local / "a.csv"))[0] == 0 and datastore.read_bytes("a.csv") == b"x\n3\n"
    code, out = upload(str(local / "a.csv"), "--to", "../out")
    assert code == 2 and "escapes the datastore root" in out
    code, out = upload(str(local / "a.csv"), "--to", "steps/x")
    assert code == 2 and "cannot upload to 'steps/x/a.csv'" in out
    code, out = upload(str(tmp_path / "nope.csv"))
    assert code == 2 and "no such file or folder" in out
