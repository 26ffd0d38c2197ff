"""Helpers for running pipelines in-process and reading what they did."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, Definitions
from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult

from aml_assets import LocalDatastore, SparkPool


def reference_defs(project: Path, spark_pool: SparkPool, **resources: Any) -> Definitions:
    """The reference project's Definitions built from a project copy, on the test's datastore."""
    import definitions

    return definitions.build_definitions(
        project, resources={"spark01": spark_pool, "workspace": LocalDatastore(name="workspace"), **resources}
    )


def run_job(
    defs: Definitions,
    instance: DagsterInstance,
    job: str = "synapse_pipeline",
    run_config: dict | None = None,
    tags: dict | None = None,
) -> ExecuteInProcessResult:
    """Execute a job in-process; never raises on step failure (tests assert the outcome)."""
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, run_config=run_config, tags=tags, raise_on_error=False
    )


def materializations(result: ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Asset name -> its materialization metadata (plain values) in this run."""
    out = {}
    for ev in result.all_events:
        if ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            mat = ev.event_specific_data.materialization
            out[mat.asset_key.to_user_string()] = {
                k: getattr(v, "value", v) for k, v in mat.metadata.items()
            }
    return out


def log_messages(instance: DagsterInstance, run_id: str) -> list[str]:
    """Every user-facing log message of a run."""
    return [r.user_message for r in instance.all_logs(run_id) if r.user_message]


def step_failure_messages(result: ExecuteInProcessResult) -> list[str]:
    """The error messages of failed steps."""
    out = []
    for ev in result.all_events:
        if ev.event_type == DagsterEventType.STEP_FAILURE:
            err = ev.event_specific_data.error
            msgs = []
            while err is not None:
                msgs.append(err.message)
                err = err.cause
            out.append("\n".join(msgs))
    return out


def reused(result: ExecuteInProcessResult) -> dict[str, bool]:
    """Step output asset -> whether it was reused."""
    return {k: v["reused"] for k, v in materializations(result).items() if "reused" in v}


def touch_later(path: Path) -> None:
    """Bump a file's mtime (content unchanged), strictly later than before."""
    st = path.stat()
    time.sleep(0.01)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
