"""Script steps: failures publish nothing, killed steps are never reused, concurrent runs are safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from aml_assets import DatasetRegistry
from aml_assets.reuse.ledger import StepLedger
from tests.support.runs import materializations, run_job, step_failure_messages
from tests.support.small import small_defs

REPO = Path(__file__).resolve().parent.parent


def _published_attempts(datastore) -> list[Path]:
    root = datastore.local_path("steps/copy")
    return [p for p in root.glob("*/*") if p.is_dir() and p.name != "commits"] if root.exists() else []


def test_step_runs_and_reports_script_output(tmp_path, instance, datastore):
    result = run_job(small_defs(tmp_path), instance, job="small")
    assert result.success
    mats = materializations(result)
    assert mats["copied"]["dagster/row_count"] == 20
    assert mats["copied"]["dataset_version"] == 1
    out = datastore.local_path(result.output_for_node("copy", "copied").path)
    assert (out / "data.csv").read_text().count("\n") == 21
    # The script's stdout is captured per step by Dagster's compute log manager.
    captured = "".join(
        p.read_text(errors="replace") for p in Path(instance.root_directory).rglob("*") if p.is_file() and p.suffix in (".out", ".err", ".log")
    )
    assert "copied 20 rows" in captured


def test_failing_script_fails_step_with_stderr_and_publishes_nothing(tmp_path, instance, datastore):
    result = run_job(small_defs(tmp_path, mode="fail"), instance, job="small")
    assert not result.success
    [message] = step_failure_messages(result)
    assert "Step 'copy' failed: script small_code/copy.py exited with code 3" in message
    assert "boom: bad row 2" in message
    assert "Nothing was published" in message
    assert _published_attempts(datastore) == []
    assert list(datastore.local_path("steps").rglob("commits/*.json")) == []
    assert DatasetRegistry(datastore).versions("copied") == []
    assert list(datastore.local_path("_tmp").iterdir()) == []  # scratch cleaned up

    # The failure is never reused: the next run (fixed) computes for real.
    fixed = run_job(small_defs(tmp_path), instance, job="small")
    assert fixed.success
    assert materializations(fixed)["copied"]["reused"] is False


def test_sigkill_mid_write_is_never_visible_and_recomputes(tmp_path, instance, datastore):
    pidfile = tmp_path / "pid"
    defs = small_defs(tmp_path, pidfile=str(pidfile), sleep=6.0)
    box = {}
    runner = threading.Thread(target=lambda: box.setdefault("r", run_job(defs, instance, job="small")))
    runner.start()
    deadline = time.time() + 60
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.05)
    # Wait until the script has written part of its output (bounded; it writes a row every ~0.3 s).
    partial: list = []
    while time.time() < deadline:
        partial = list(datastore.local_path("_tmp").rglob("data.csv"))
        if partial and partial[0].read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert partial and 3 <= partial[0].read_text().count("\n") < 21, "the script should be mid-write"
    # Mid-write, nothing is visible outside the private scratch folder.
    assert _published_attempts(datastore) == []
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    runner.join(60)
    result = box["r"]
    assert not result.success
    assert "was killed by signal 9" in step_failure_messages(result)[0]
    assert _published_attempts(datastore) == []
    assert DatasetRegistry(datastore).versions("copied") == []

    pidfile.unlink()
    rerun = run_job(small_defs(tmp_path, pidfile=str(pidfile)), instance, job="small")
    assert rerun.success
    mats = materializations(rerun)
    assert mats["copied"]["reused"] is False
    assert mats["copied"]["dagster/row_count"] == 20


CONCURRENT = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from dagster import DagsterInstance
from tests.support.small import small_defs
defs = small_defs(Path({root!r}), sleep=2.0)
result = defs.resolve_job_def("small").execute_in_process(instance=DagsterInstance.ephemeral(), raise_on_error=False)
ref = result.output_for_node("copy", "copied") if result.success else None
print("RESULT", result.success, result.run_id, ref.path if ref else None)
"""


def test_two_concurrent_runs_of_one_fingerprint_are_safe(tmp_path, datastore):
    script = tmp_path / "race_runner.py"
    (tmp_path / "proj").mkdir()
    script.write_text(CONCURRENT.format(repo=str(REPO), root=str(tmp_path / "proj")))
    env = dict(os.environ)
    procs = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    results = [line.split() for out, _ in outs for line in out.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2, [err[:3000] for _, err in outs]
    assert all(r[1] == "True" for r in results), [err[-4000:] for _, err in outs]
    # Each run saw a complete output; whichever published, the bytes are identical and whole.
    contents = {(datastore.local_path(r[3]) / "data.csv").read_text() for r in results}
    assert len(contents) == 1 and next(iter(contents)).count("\n") == 21
    # Identical content registers one version, however the two runs interleaved.
    assert DatasetRegistry(datastore).versions("copied") == [1]
    records = StepLedger(datastore, "copy").run_records()
    assert len(records) == 2
    assert len({r.fingerprint for r in records}) == 1
    assert list(datastore.local_path("_tmp").iterdir()) == []


MODES_SCRIPT = """
import json, sys
from pathlib import Path
from amlrun import Run
download, mount, direct, out = sys.argv[1:5]
run = Run.get_context()
report = {
    "download": download, "mount": mount, "direct": direct,
    "download_files": sorted(p.name for p in Path(download).iterdir()),
    "mount_files": sorted(p.name for p in Path(mount).iterdir()),
    "named": run.input_datasets["named"].path,
    "named_rows": len(run.input_datasets["table"].to_pandas_dataframe()),
}
Path(download, "a.txt").write_text("scribbled on the private copy")
(Path(out) / "report.json").write_text(json.dumps(report))
run.log("files_seen", len(report["download_files"]))
"""


def test_file_dataset_input_modes(tmp_path, instance, datastore):
    from aml_assets import (
        FileDataset,
        LocalDatastore,
        LocalProcessCluster,
        OutputDataset,
        Pipeline,
        PythonScriptStep,
        TabularDataset,
    )

    code = tmp_path / "modes_code"
    code.mkdir()
    (code / "modes.py").write_text(MODES_SCRIPT)
    datastore.write_bytes("docs/a.txt", b"alpha")
    datastore.write_bytes("docs/b.txt", b"beta")
    datastore.write_bytes("table/t.csv", b"x,y\n1,2\n3,4\n")
    docs = FileDataset.from_files("docs", "docs")
    table = TabularDataset.from_delimited_files("table", "table/t.csv")
    report = OutputDataset("report")
    step = PythonScriptStep(
        "modes", "modes.py", code,
        arguments=[docs.as_download("dl"), docs.as_mount("mnt"), docs.as_direct("direct"), report],
        inputs=[docs.as_named_input("named"), table.as_named_input("table")],
    )
    defs = Pipeline("modes", [step]).to_definitions({"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster()})
    result = run_job(defs, instance, job="modes")
    assert result.success, step_failure_messages(result)
    out = datastore.local_path(result.output_for_node("modes", "report").path)
    import json

    seen = json.loads((out / "report.json").read_text())
    root = str(datastore.root_dir())
    assert seen["download_files"] == seen["mount_files"] == ["a.txt", "b.txt"]
    assert not seen["download"].startswith(root), "download mode gives a private copy"
    assert seen["mount"] == seen["direct"] == str(datastore.local_path("docs"))
    assert seen["named"] == str(datastore.local_path("docs"))
    assert seen["named_rows"] == 2
    # The script changed its downloaded copy, never the datastore.
    assert datastore.read_bytes("docs/a.txt") == b"alpha"
    assert materializations(result)["report"]["files_seen"] == 2
