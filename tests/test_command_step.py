"""CommandStep (issue 11): a command line or a list of words as a step, with the staging, outputs,
params and exact reuse of a script step; and v1's CommandStep through the compat shim.

Real small pipelines on temporary instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from aml_assets import (
    CommandStep,
    FileDataset,
    LocalDatastore,
    LocalProcessCluster,
    OutputDataset,
    Pipeline,
    PipelineParameter,
    PipelineValidationError,
    TabularDataset,
)
from aml_assets.reuse.ledger import StepLedger
from tests.support.runs import materializations, reused, run_job, step_failure_messages

RESOURCES = {"workspace": LocalDatastore(), "cpucluster": LocalProcessCluster(max_concurrent_steps=2)}

#: Reads a CSV (its path an argument), scales one column by a factor read from a data file of
#: the source directory (not imported: only a command step's whole-folder hash sees it).
SCALE = """
import sys
from pathlib import Path
from helper import scale
src, out, label = sys.argv[1:4]
factor = int(Path("factor.txt").read_text())
rows = Path(src).read_text().splitlines()
body = [f"{r.split(',')[0]},{scale(int(r.split(',')[1]), factor)}" for r in rows[1:]]
Path(out, "scaled.csv").write_text("\\n".join([rows[0], *body]) + "\\n")
Path(out, "label.txt").write_text(label)
from amlrun import Run
run = Run.get_context()
run.log("rows", len(body))
run.log_list("values", [int(r.split(",")[1]) for r in body])
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    (d / "scale.py").write_text(SCALE)
    (d / "helper.py").write_text("def scale(v, f):\n    return v * f\n")
    (d / "factor.txt").write_text("10")
    (d / "fail.sh").write_text("echo 'about to fail' >&2\nexit 7\n")
    (tmp_path / "seed.csv").write_text("id,value\n1,1\n2,2\n3,3\n")
    return d


def _numbers(tmp_path: Path) -> TabularDataset:
    return TabularDataset.from_delimited_files("numbers", "numbers/numbers.csv", seed=tmp_path / "seed.csv")


def _scale_step(tmp_path: Path, code: Path, label: str | PipelineParameter = "a", **kw) -> CommandStep:
    return CommandStep(
        command=["python", "scale.py", _numbers(tmp_path).as_download("numbers_in"), OutputDataset("scaled"), label],
        source_directory=code,
        **kw,
    )


def _scaled_text(result, name: str = "scaled", file: str = "scaled.csv") -> str:
    uri = materializations(result)[name]["uri"]
    return (Path(uri) / file).read_text()


def test_a_list_command_gets_inputs_outputs_parameters_and_reuse_is_exact(tmp_path, code, instance):
    mode = PipelineParameter("label", "first")
    step = _scale_step(tmp_path, code, label=mode)
    assert step.name == "python" and step.name_from_script  # Azure: the command's first word
    pipeline = Pipeline("cmd", [step])
    defs = pipeline.to_definitions(RESOURCES)

    first = run_job(defs, instance, job="cmd")
    assert first.success, step_failure_messages(first)
    assert _scaled_text(first) == "id,value\n1,10\n2,20\n3,30\n"
    assert _scaled_text(first, file="label.txt") == "first"
    # What the command's Python script logged through Run.get_context() reaches the step.
    assert materializations(first)["scaled"]["rows"] == 3
    assert materializations(first)["scaled"]["values"] == "[10, 20, 30]"

    assert reused(run_job(defs, instance, job="cmd")) == {"scaled": True}

    # A file the command reads but no script imports still counts: every file of the folder.
    (code / "factor.txt").write_text("100")
    third = run_job(defs, instance, job="cmd")
    assert reused(third) == {"scaled": False}
    assert _scaled_text(third) == "id,value\n1,100\n2,200\n3,300\n"
    assert "script code/factor.txt changed" in materializations(third)["scaled"]["runs_because"]

    # An imported module too; and a pipeline parameter's run value.
    (code / "helper.py").write_text("def scale(v, f):\n    return v * f + 1\n")
    fourth = run_job(defs, instance, job="cmd", run_config={
        "resources": {"pipeline": {"config": {"label": "second"}}}
    })
    because = materializations(fourth)["scaled"]["runs_because"]
    assert "script code/helper.py changed" in because and "parameter label changed" in because
    assert _scaled_text(fourth, file="label.txt") == "second"


def test_a_command_line_runs_in_a_shell_with_params_and_data_reference_variables(tmp_path, code, instance):
    archive, listing = OutputDataset("archive"), OutputDataset("listing")
    inp = FileDataset.from_files("seeded", "seeded/seed.csv", seed=tmp_path / "seed.csv")
    step = CommandStep(
        name="pack",
        command=(
            "wc -l < $AZUREML_DATAREFERENCE_seeded_in | tr -d ' ' > $AZUREML_DATAREFERENCE_archive/rows.txt"
            " && echo \"$AML_PARAMETER_who-$(basename $PWD)\" > $AZUREML_DATAREFERENCE_listing/who.txt"
            " && test \"$(command -v python)\" -ef \"$(python -c 'import sys; print(sys.executable)')\""
        ),
        inputs=[inp.as_download("seeded_in")],
        outputs=[archive, listing],
        params={"who": PipelineParameter("who", "me")},
        source_directory=code,
    )
    result = run_job(Pipeline("shell", [step]).to_definitions(RESOURCES), instance, job="shell")
    assert result.success, step_failure_messages(result)
    assert _scaled_text(result, "archive", "rows.txt").strip() == "4"
    # params arrive as AML_PARAMETER_<name>; the command runs in the source directory.
    assert _scaled_text(result, "listing", "who.txt").strip() == "me-code"
    assert reused(run_job(Pipeline("shell", [step]).to_definitions(RESOURCES), instance, job="shell")) == {
        "archive": True, "listing": True,
    }


def test_a_failing_or_missing_command_fails_the_step_naming_it_and_publishes_nothing(tmp_path, code, instance):
    out = OutputDataset("never")
    bad = CommandStep(name="bad", command="bash fail.sh", outputs=[out], source_directory=code)
    missing = CommandStep(
        name="missing", command=["no-such-program-xyz", OutputDataset("never2")], source_directory=code
    )
    result = run_job(Pipeline("bad", [bad, missing]).to_definitions(RESOURCES), instance, job="bad")
    assert not result.success
    messages = "\n".join(step_failure_messages(result))
    assert "Step 'bad' failed: script `bash fail.sh` (the step's command) exited with code 7" in messages
    assert "about to fail" in messages  # the stderr tail
    assert "Step 'missing' failed" in messages and "exited with code 127" in messages
    assert "command not found: 'no-such-program-xyz'" in messages
    assert materializations(result) == {}
    for name in ("bad", "missing"):
        assert StepLedger(LocalDatastore(), name).latest_record().status == "failed"


def test_a_command_past_its_timeout_is_stopped_with_what_it_started(tmp_path, code, instance):
    marker = tmp_path / "child-survived"
    step = CommandStep(
        name="slow",
        command=f"(sleep 2; touch {marker}) & sleep 30",
        outputs=[OutputDataset("never")],
        source_directory=code,
        timeout_seconds=1,
    )
    result = run_job(Pipeline("slow", [step]).to_definitions(RESOURCES), instance, job="slow")
    assert "Step 'slow' exceeded its 1 s timeout and was stopped" in "\n".join(step_failure_messages(result))
    import time

    time.sleep(2.5)
    assert not marker.exists()  # the command's own children went with it


def test_allow_reuse_false_and_command_changes_rerun(tmp_path, code, instance):
    step = _scale_step(tmp_path, code, name="scale", allow_reuse=False)
    defs = Pipeline("cmd", [step]).to_definitions(RESOURCES)
    assert run_job(defs, instance, job="cmd").success
    again = run_job(defs, instance, job="cmd")
    assert reused(again) == {"scaled": False}
    assert materializations(again)["scaled"]["runs_because"] == "allow_reuse=False"

    changed = _scale_step(tmp_path, code, label="b", name="scale")
    result = run_job(Pipeline("cmd", [changed]).to_definitions(RESOURCES), instance, job="cmd")
    assert "arguments changed" in materializations(result)["scaled"]["runs_because"]


def test_declaration_errors_say_what_to_fix(tmp_path, code):
    with pytest.raises(ValueError, match="no command"):
        CommandStep(name="x", command="  ", source_directory=code)
    with pytest.raises(ValueError, match="no command"):
        CommandStep(name="x", command=[], source_directory=code)
    with pytest.raises(TypeError, match="command must be a str"):
        CommandStep(name="x", command=42, source_directory=code)
    with pytest.raises(ValueError, match="takes no arguments="):
        CommandStep(name="x", command="ls", arguments=["-l"], source_directory=code)
    assert CommandStep(command="./run.sh --fast", source_directory=code).name == "run_sh"

    steps = [
        CommandStep(name="a", command=["python", "nope.py", OutputDataset("o1")], source_directory=code),
        CommandStep(name="b", command="./missing.sh", outputs=[OutputDataset("o2")], source_directory=code),
        CommandStep(name="c", command="bash fail.sh", outputs=[OutputDataset("o3")], source_directory=code),
    ]
    with pytest.raises(PipelineValidationError) as caught:
        Pipeline("bad", steps).validate(RESOURCES)
    text = str(caught.value)
    assert "step 'a': the command runs 'nope.py', which is not in source directory" in text
    assert "step 'b': the command runs './missing.sh'" in text
    assert "step 'c'" not in text


def test_compat_command_step_takes_v1_arguments(tmp_path, code, instance):
    from aml_assets.compat.core import Environment
    from aml_assets.compat.core.runconfig import RunConfiguration
    from aml_assets.compat.pipeline.steps import CommandStep as V1CommandStep

    runconfig = RunConfiguration()
    runconfig.environment = Environment("env")
    out = OutputDataset("scaled")
    step = V1CommandStep(
        command=["python", "scale.py", _numbers(tmp_path).as_download("numbers_in"), out, "v1"],
        name="scale",
        compute_target="cpucluster",
        runconfig=runconfig,
        source_directory=str(code),
        allow_reuse=True,
        version="1",
    )
    assert isinstance(step, CommandStep) and isinstance(step, V1CommandStep)
    assert step.version == "1" and step.environment is runconfig.environment
    result = run_job(Pipeline("v1", [step]).to_definitions(RESOURCES), instance, job="v1")
    assert result.success, step_failure_messages(result)
    assert _scaled_text(result) == "id,value\n1,10\n2,20\n3,30\n"

    # A bare DataReference in the command is an input in its mode (a copy of the step, as a
    # pipeline default makes one, keeps it so).
    from aml_assets.data.references import DataReference

    numbers = DataReference(datastore="workspace", data_reference_name="numbers_ref",
                            path_on_datastore="numbers/numbers.csv")
    by_ref = V1CommandStep(command=["python", "scale.py", numbers, OutputDataset("by_ref_out"), "ref"], name="by_ref")
    with_default = Pipeline("ref", [by_ref], default_source_directory=code)
    assert with_default.steps[0] is not by_ref and with_default.steps[0].source_directory == code
    result = run_job(with_default.to_definitions(RESOURCES), instance, job="ref")
    assert result.success, step_failure_messages(result)
    assert _scaled_text(result, "by_ref_out") == "id,value\n1,10\n2,20\n3,30\n"


def test_a_published_pipeline_with_a_command_and_a_transfer_runs_its_frozen_command(tmp_path, code, datastore, instance):
    from aml_assets import DataTransferStep

    archive = LocalDatastore(name="archive", root=str(tmp_path / "archive"))
    resources = {**RESOURCES, "archive": archive}

    def pipeline() -> Pipeline:
        transfer = DataTransferStep(name="keep", source=_numbers(tmp_path), destination=("archive", "numbers"))
        assert transfer.output.format == "csv"  # a table stays a table
        scale = CommandStep(
            name="scale",
            command=["python", "scale.py", transfer.output.as_download("kept"), OutputDataset("scaled"), "p"],
            source_directory=code,
        )
        return Pipeline("pub", [transfer, scale])

    defs = pipeline().to_definitions(resources)
    v1 = pipeline().publish("pub", datastore=datastore, resources=resources)
    (code / "factor.txt").write_text("2")  # the live folder changes; version 1 keeps its copy
    old = run_job(defs, instance, job="pub", tags=v1.run_tags())
    assert old.success, step_failure_messages(old)
    assert _scaled_text(old) == "id,value\n1,10\n2,20\n3,30\n"
    assert (tmp_path / "archive" / "numbers" / "numbers.csv").exists()
    live = run_job(defs, instance, job="pub")
    assert _scaled_text(live) == "id,value\n1,2\n2,4\n3,6\n"
