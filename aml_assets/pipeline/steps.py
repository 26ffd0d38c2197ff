"""Steps: a script with arguments, inputs and outputs on a compute target.

``PythonScriptStep`` runs its script as a separate process on a CPU cluster;
``SynapseSparkStep`` runs it against a Spark pool's session. Inputs and outputs are read from the
arguments (plus ``inputs=`` for inputs the script finds through ``Run.input_datasets``), so the
DAG follows the data and is never wired twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from aml_assets.compute.environments import Environment
from aml_assets.data.datasets import DatasetInput, OutputDataset
from aml_assets.pipeline.datapath import DataPathParameter, bind_input
from aml_assets.pipeline.parameters import PipelineParameter

__all__ = ["Argument", "Environment", "PythonScriptStep", "Step", "SynapseSparkStep"]

#: A DataPathParameter given directly (or as Azure's ``(param, DataPathComputeBinding)``) is
#: bound as an input when the step is declared (``datapath.bind_input``).
Argument = str | int | float | bool | DatasetInput | OutputDataset | PipelineParameter | DataPathParameter


@dataclass(eq=False)
class Step:
    """What every step has. Use ``PythonScriptStep`` or ``SynapseSparkStep``."""

    kind: ClassVar[Literal["python", "spark"]]

    name: str
    script: str
    source_directory: Path | str
    arguments: list[Argument] = field(default_factory=list)
    inputs: list[DatasetInput] = field(default_factory=list)
    outputs: list[OutputDataset] = field(default_factory=list)
    compute_target: str = ""
    allow_reuse: bool = True
    hash_paths: list[Path | str] = field(default_factory=list)
    #: The Python environment the script runs in (``compute.environments``). None: the
    #: pipeline's ``environment=``, else the interpreter running the pipeline.
    environment: Environment | None = None
    description: str | None = None
    #: Stop the step (and publish nothing) after this many seconds; None: the compute target's
    #: ``default_timeout_seconds``.
    timeout_seconds: float | None = None
    #: Whether the script needs the datastore's credentials in its environment. Off by default:
    #: a script that prints its environment must not leak the storage account key.
    datastore_credentials: bool = False

    def __post_init__(self) -> None:
        # Every path is resolved where the step is declared, so a later chdir (a notebook, a
        # test, a daemon started elsewhere) can never make the same step hash another folder.
        self.source_directory = Path(self.source_directory).expanduser().resolve()
        self.arguments = [bind_input(a) for a in self.arguments]
        self.inputs = [bind_input(i) for i in self.inputs]
        self.hash_paths = [Path(p).expanduser().resolve() for p in self.hash_paths]
        if self.timeout_seconds is not None and self.timeout_seconds <= 0:
            raise ValueError(
                f"Step '{self.name}': timeout_seconds must be positive (got {self.timeout_seconds})."
            )

    @property
    def script_path(self) -> Path:
        """Absolute path of the script."""
        return Path(self.source_directory) / self.script

    def effective_environment(self) -> Environment:
        """The step's environment; ``Environment()`` (the running interpreter) when it has none."""
        return self.environment if self.environment is not None else Environment()

    def all_inputs(self) -> list[DatasetInput]:
        """Inputs named in the arguments and in ``inputs=``, each once, in order."""
        seen: dict[str, DatasetInput] = {}
        for item in [*self.arguments, *self.inputs]:
            if isinstance(item, DatasetInput) and item.name not in seen:
                seen[item.name] = item
        return list(seen.values())

    def all_outputs(self) -> list[OutputDataset]:
        """Outputs named in the arguments and in ``outputs=``, each once, in order."""
        seen: dict[str, OutputDataset] = {}
        for item in [*self.arguments, *self.outputs]:
            if isinstance(item, OutputDataset) and item.name not in seen:
                seen[item.name] = item
        return list(seen.values())

    def parameters(self) -> list[PipelineParameter]:
        """Pipeline parameters the step's arguments use."""
        return [a for a in self.arguments if isinstance(a, PipelineParameter)]

    def settings(self) -> dict[str, Any]:
        """Step settings that can change the result (part of the fingerprint)."""
        return {"kind": self.kind, "script": self.script}


@dataclass(eq=False)
class PythonScriptStep(Step):
    """Runs ``script`` from ``source_directory`` as a process on a CPU cluster."""

    kind: ClassVar[Literal["python", "spark"]] = "python"
    compute_target: str = "cpucluster"


@dataclass(eq=False)
class SynapseSparkStep(Step):
    """Runs ``script`` against a Spark pool's session, with Synapse's sizing settings.

    Sizing settings (memory, cores, executors) apply when the pool's session starts and are left
    out of the fingerprint: they change how fast, not what. ``conf`` entries other than those the
    pool lists as speed-only are part of it (``spark.sql.ansi.enabled`` can change a result), and
    are applied to the session for the step's duration (or refused clearly when they cannot be).
    """

    kind: ClassVar[Literal["python", "spark"]] = "spark"
    compute_target: str = "spark01"
    driver_memory: str | None = None
    driver_cores: int | None = None
    executor_memory: str | None = None
    executor_cores: int | None = None
    num_executors: int | None = None
    conf: dict[str, str] = field(default_factory=dict)

    def spark_overrides(self) -> dict[str, str]:
        """The step's settings as Spark configuration entries."""
        sizing = {
            "spark.driver.memory": self.driver_memory,
            "spark.driver.cores": self.driver_cores,
            "spark.executor.memory": self.executor_memory,
            "spark.executor.cores": self.executor_cores,
            "spark.executor.instances": self.num_executors,
        }
        return {**{k: str(v) for k, v in sizing.items() if v is not None}, **self.conf}

    def spark_conf(self) -> dict[str, str]:
        """The step's own Spark configuration (sizing excluded), applied for its duration."""
        return dict(self.conf)
