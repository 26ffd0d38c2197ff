"""The code a run's steps run: the live source folder, or a published version's frozen snapshot.

(Stub: filled in by the publish work of issue 7.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aml_assets.data.datastore import Datastore
from aml_assets.pipeline.steps import Step


def step_for_run(step: Step, tags: Mapping[str, str], store: Datastore, log: Any) -> Step:
    """The step as this run must execute it (``step`` itself unless the run is of a published
    version, whose scripts come from its code snapshot)."""
    return step
