"""CPU clusters as Dagster resources: where script steps run, and how many at once."""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

#: Op tag naming the compute target a step runs on; the executor limits concurrency by it.
COMPUTE_TAG = "aml/compute_target"


class CpuCluster(ConfigurableResource, ABC):
    """Where script steps run, and how many may run at once."""

    max_concurrent_steps: int = Field(
        default=2, ge=1, description="How many steps may run on this target at once."
    )
    default_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A step running longer than this (unless it sets timeout_seconds) is stopped "
        "and publishes nothing.",
    )

    @abstractmethod
    def start(
        self, command: Sequence[str], env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        """Start a step's process; stdout and stderr must be pipes the caller reads."""


def start_local_process(
    command: Sequence[str], env: Mapping[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """A step's process on this machine: what every cluster does on the node running the step
    (this machine, a Celery worker, a Kubernetes step pod). A new session, so a kill of the step
    reaches everything the script started; the launcher (amlrun/launch.py) dies with its parent
    (``PR_SET_PDEATHSIG``), so a killed worker leaves no script behind."""
    return subprocess.Popen(
        list(command),
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


class LocalProcessCluster(CpuCluster):
    """Runs each step as a local process: the embedded default CPU cluster."""

    def start(
        self, command: Sequence[str], env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        return start_local_process(command, env, cwd)
