"""One run of a pipeline's job from the command line (``aml-assets run``), and its summary.

The run is an ordinary Dagster run: the job is loaded from the definitions file the way
``dagster job execute -f`` loads it, executed on the instance of ``$DAGSTER_HOME`` with the
pipeline's own executor, and recorded in its run storage, so the UI shows it like any other.
What this adds is what a user reads at the end: each step ran or reused (and why), the
registered versions, the metrics, where the outputs are, how long it took.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aml_assets.errors import AmlAssetsError


class RunRequestError(AmlAssetsError):
    """A run could not be started as asked (no such file, job or parameter syntax)."""


@dataclass
class RunRequest:
    """What ``aml-assets run`` was asked for; plain data, so it can travel to a warm runner."""

    definitions: str = "definitions.py"
    job: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    regenerate: bool = False
    log_level: str = "info"
    cwd: str = field(default_factory=os.getcwd)

    @staticmethod
    def parse_parameters(items: list[str]) -> dict[str, Any]:
        """``name=value`` pairs; values are JSON where they parse (10, 0.5, true), else text."""
        out: dict[str, Any] = {}
        for item in items:
            name, sep, raw = item.partition("=")
            if not sep or not name.strip():
                raise RunRequestError(f"--param '{item}' is not name=value (e.g. --param n_estimators=200)")
            try:
                out[name.strip()] = json.loads(raw)
            except ValueError:
                out[name.strip()] = raw
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "definitions": self.definitions,
            "job": self.job,
            "parameters": self.parameters,
            "regenerate": self.regenerate,
            "log_level": self.log_level,
            "cwd": self.cwd,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRequest:
        return cls(**{k: data[k] for k in cls().to_json() if k in data})


def _load_job(request: RunRequest):
    """The reconstructable job named in the request (the file's only pipeline job by default)."""
    from dagster import Definitions, RepositoryDefinition
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.workspace.autodiscovery import loadable_targets_from_python_file

    path = Path(request.cwd, request.definitions).resolve()
    if not path.is_file():
        raise RunRequestError(
            f"Definitions file '{request.definitions}' not found in {request.cwd}; pass -f PATH "
            "to the file that builds your pipeline's Definitions."
        )
    targets = [
        t
        for t in loadable_targets_from_python_file(str(path), request.cwd)
        if isinstance(t.target_definition, (Definitions, RepositoryDefinition))
    ]
    if len(targets) != 1:
        raise RunRequestError(
            f"'{path.name}' defines {len(targets)} Definitions objects ("
            + ", ".join(t.attribute for t in targets)
            + "); keep exactly one at module level."
        )
    repo = ReconstructableRepository.for_file(str(path), targets[0].attribute, request.cwd)
    jobs = sorted(n for n in repo.get_definition().job_names if not n.startswith("__"))
    name = request.job
    if name is None:
        if len(jobs) != 1:
            raise RunRequestError(
                f"'{path.name}' has {len(jobs)} jobs ({', '.join(jobs) or 'none'}); name one with -j."
            )
        name = jobs[0]
    elif name not in jobs:
        hint = difflib.get_close_matches(name, jobs, n=1)
        raise RunRequestError(
            f"'{path.name}' has no job '{name}'"
            + (f"; did you mean '{hint[0]}'?" if hint else f"; its jobs: {', '.join(jobs)}")
        )
    return repo.get_reconstructable_job(name), name


def execute(request: RunRequest, out: TextIO | None = None, where: str = "") -> int:
    """Run the job in this process on ``$DAGSTER_HOME``'s instance; print the summary.

    Returns the exit status: 0 when the run succeeded, 1 when it failed.
    """
    from dagster import DagsterInstance, execute_job

    # Imported here, not at the top: the warm runner's client imports this module and must
    # not pay for Dagster.
    from aml_assets.pipeline.assets import REGENERATE_TAG, RUN_SETTINGS_KEY

    out = out or sys.stdout
    started = time.perf_counter()
    if request.cwd not in sys.path:
        sys.path.insert(0, request.cwd)  # as ``dagster job execute`` does: the project's packages
    job, name = _load_job(request)
    run_config: dict[str, Any] = {
        "loggers": {"console": {"config": {"log_level": request.log_level.upper()}}}
    }
    if request.parameters:
        run_config["resources"] = {RUN_SETTINGS_KEY: {"config": _checked_parameters(job, request.parameters)}}
    tags = {REGENERATE_TAG: "true"} if request.regenerate else {}
    instance = DagsterInstance.get()
    with instance:
        result = execute_job(job, instance=instance, run_config=run_config, tags=tags, raise_on_error=False)
        print_summary(
            instance, result.run_id, name, result.success, time.perf_counter() - started, out, where
        )
    return 0 if result.success else 1


def _checked_parameters(job: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``--param`` values as run config, checked against the job's pipeline parameters first.

    A DataPath parameter may be given as ``datastore:path/on/it`` or a relative path. A job that
    is not an aml-assets pipeline's (no settings resource) gets the values as they are.
    """
    from aml_assets.pipeline.parameters import check_assignments
    from aml_assets.pipeline.tags import RUN_SETTINGS_KEY

    settings = job.get_definition().resource_defs.get(RUN_SETTINGS_KEY)
    cls = getattr(settings, "configurable_resource_cls", None)
    declared = getattr(cls, "declared_parameters", None)
    if declared is None:
        return dict(values)
    config, problems = check_assignments(declared, values, datastores=getattr(cls, "declared_datastores", None))
    if problems:
        raise RunRequestError(
            problems[0] if len(problems) == 1
            else f"{len(problems)} --param values are invalid:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return config


def print_summary(
    instance: Any, run_id: str, job: str, success: bool, seconds: float, out: TextIO, where: str = ""
) -> None:
    """What each step did, the registered versions and metrics, where the outputs are."""
    from dagster import DagsterEventType

    steps: dict[str, dict[str, Any]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        step = steps.setdefault(event.step_key, {"outputs": [], "status": "not run", "order": 1e9})
        if event.event_type == DagsterEventType.STEP_START:
            step["order"] = record.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            step["status"] = "ok"
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            step["status"] = "failed"
            step["error"] = _failure_text(event.event_specific_data.error)
        elif event.event_type == DagsterEventType.STEP_SKIPPED:
            step["status"] = "skipped (an upstream step failed)"
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.event_specific_data.materialization
            meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
            step["outputs"].append((mat.asset_key.to_user_string(), meta))
    width = max((len(s) for s in steps), default=4)
    print(
        f"\nRun {run_id[:8]} of {job}: {'succeeded' if success else 'FAILED'} in {seconds:.1f} s"
        f"{' ' + where if where else ''} (Dagster run {run_id})",
        file=out,
    )
    for key, step in sorted(steps.items(), key=lambda item: item[1]["order"]):
        outputs = step["outputs"]
        if step["status"] == "failed":
            line = f"failed: {step.get('error', '')}"
        elif not outputs:
            line = step["status"]
        elif "reused" in outputs[0][1] and outputs[0][1]["reused"] is True:
            line = f"reused outputs of run {str(outputs[0][1].get('reused_from_run', ''))[:8]}"
        elif "reused" in outputs[0][1]:
            line = f"ran: {outputs[0][1].get('runs_because', '')}"
        else:
            line = "described"  # a source dataset
        print(f"  {key:<{width}}  {line}", file=out)
        for name, meta in outputs:
            detail = [str(meta["uri"])] if meta.get("uri") else []
            if meta.get("dataset_version") is not None:
                new = "new" if meta.get("dataset_version_created") else "unchanged"
                detail.insert(0, f"registered version {meta['dataset_version']} ({new})")
            metrics = {k: v for k, v in meta.items() if _is_metric(k, v)}
            detail += [f"{k}={_fmt(v)}" for k, v in metrics.items()]
            print(f"  {'':<{width}}    {name}: {'  '.join(detail)}", file=out)


def _failure_text(error: Any) -> str:
    """A step failure in a line or two: our error's message, and the script's last stderr line."""
    while error.cause is not None and "StepFailedError" not in (error.cls_name or ""):
        error = error.cause
    message = (error.message or "").strip()
    head, _, rest = message.partition(": ")
    if "." in head and " " not in head:  # "aml_assets.errors.StepFailedError: ..."
        message = rest
    first, _, tail = message.partition("\n--- last lines of stderr ---\n")
    last = [line for line in tail.splitlines() if line.strip()][-1:]
    return first.splitlines()[0][:400] + (f" ({last[0].strip()[:200]})" if last else "") if first else ""


#: Output metadata that is ours or Dagster's, not a metric the step logged.
_NOT_METRICS = {
    "fingerprint", "reused", "content_hash", "uri", "file_count", "byte_count", "lineage",
    "reused_from_run", "runs_because", "preview",
}


def _is_metric(key: str, value: Any) -> bool:
    return (
        key not in _NOT_METRICS
        and not key.startswith(("dagster/", "aml/", "dataset_"))
        and isinstance(value, (int, float, str, bool))
        and len(str(value)) < 80
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
