"""Run tags and run-config shapes that every way of starting a run agrees on.

A run started from the CLI, the UI, the HTTP API, ``Experiment.submit``, a schedule or a
data-change trigger is an ordinary Dagster run; these tags say how it was started and which
published code it runs, so the UI can filter on them and the step ops can honour them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: "true": run every step even when a reusable result exists.
REGENERATE_TAG = "aml/regenerate_outputs"
#: The experiment a run belongs to (Azure ML's ``Experiment``): filter the run list on it.
EXPERIMENT_TAG = "aml/experiment"
#: A run of a published pipeline version: its id, name and version number.
PUBLISHED_ID_TAG = "aml/published_id"
PUBLISHED_NAME_TAG = "aml/published_pipeline"
PUBLISHED_VERSION_TAG = "aml/published_version"
#: A run of a pipeline endpoint: the endpoint's name.
ENDPOINT_TAG = "aml/endpoint"
#: The content-addressed code snapshot a published run's steps run (their scripts are taken
#: from it, never from the live source folder).
SNAPSHOT_TAG = "aml/code_snapshot"
#: Which schedule or data-change trigger started a run, and the file that triggered it.
SCHEDULE_TAG = "aml/schedule"
TRIGGER_PATH_TAG = "aml/trigger_path"
#: How a run was submitted: cli, http, python, schedule, trigger.
SUBMITTED_VIA_TAG = "aml/submitted_via"

#: The resource holding a run's pipeline parameters (``resources.<key>.config.<name>``).
RUN_SETTINGS_KEY = "pipeline"


def parameters_run_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The run config setting pipeline parameters (DataPath values are
    ``{"datastore": ..., "path_on_datastore": ...}`` mappings)."""
    if not values:
        return {}
    return {"resources": {RUN_SETTINGS_KEY: {"config": dict(values)}}}


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")
