"""Dagster schedules and sensors of a pipeline's stored schedules and data-change triggers.

(Stub: filled in by the schedules work of issue 7.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aml_assets.pipeline.definition import Pipeline


def instigators_for(pipeline: Pipeline, resources: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """(schedules, sensors) to add to the pipeline's Definitions."""
    return [], []
