"""Steps: a script with arguments, inputs and outputs on a compute target.

``PythonScriptStep`` runs its script as a separate process on a CPU cluster;
``SynapseSparkStep`` runs it against a Spark pool's session. Inputs and outputs are read from the
arguments (plus ``inputs=`` for inputs the script finds through ``Run.input_datasets``), so the
DAG follows the data and is never wired twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from aml_assets.compute.environments import Environment
from aml_assets.data.datasets import DatasetInput, OutputDataset
from aml_assets.data.references import bind_references
from aml_assets.pipeline.datapath import DataPathParameter, bind_input
from aml_assets.pipeline.parameters import PipelineParameter

__all__ = [
    "Argument",
    "Environment",
    "PythonScriptStep",
    "Step",
    "SynapseSparkStep",
    "default_step_name",
]

#: A DataPathParameter given directly (or as Azure's ``(param, DataPathComputeBinding)``) is
#: bound as an input when the step is declared (``datapath.bind_input``).
Argument = str | int | float | bool | DatasetInput | OutputDataset | PipelineParameter | DataPathParameter


@dataclass(eq=False)
class Step:
    """What every step has. Use ``PythonScriptStep`` or ``SynapseSparkStep``."""

    kind: ClassVar[str]
    #: False for a step that runs no code of its own (``DataTransferStep``): it has no script,
    #: source directory or environment, and its output is written where it says (another
    #: datastore). ``CommandStep`` runs code: a command instead of a script.
    runs_code: ClassVar[bool] = True

    #: The step's name; "" (not given): the script's name without ``.py`` (Azure's default).
    name: str = ""
    script: str = ""
    #: The folder holding the script; None: the pipeline's ``default_source_directory``.
    source_directory: Path | str | None = None
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
    #: A label of the step's own making (Azure's ``version=``), part of its fingerprint:
    #: changing it reruns the step ("version changed: 1 -> 2"). None: not part of it at all,
    #: so a step without one keeps the fingerprint it always had.
    version: str | None = None
    #: The output (by name) that also receives what the script prints, as ``std_log.txt`` (set by
    #: the v1 compat layer for a step that declares no output; v1 keeps that log with the run).
    std_log_output: str | None = None
    #: Steps this one runs after without reading their outputs (``run_after``).
    ordered_after: list[Step] = field(default_factory=list, repr=False)
    #: Whether ``name`` was derived from the script (a clash then says so).
    name_from_script: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not self.script and self.runs_code:
            raise ValueError(
                f"Step '{self.name or '?'}': no script; give script= (Azure's script_name=)."
            )
        if not self.name:
            self.name = default_step_name(self.script)
            self.name_from_script = True
        if self.version is not None:
            self.version = str(self.version)
        # Every path is resolved where the step is declared, so a later chdir (a notebook, a
        # test, a daemon started elsewhere) can never make the same step hash another folder.
        if self.source_directory is not None:
            self.source_directory = Path(self.source_directory).expanduser().resolve()
        self.arguments = [bind_input(a) for a in self.arguments]
        self.inputs = [bind_input(i) for i in self.inputs]
        # v1's DataReference / PipelineData / OutputFileDatasetConfig (data.references).
        self.arguments, self.inputs = bind_references(self.name, self.arguments, self.inputs, self.outputs)
        self.hash_paths = [Path(p).expanduser().resolve() for p in self.hash_paths]
        if self.timeout_seconds is not None and self.timeout_seconds <= 0:
            raise ValueError(
                f"Step '{self.name}': timeout_seconds must be positive (got {self.timeout_seconds})."
            )

    @property
    def script_path(self) -> Path:
        """Absolute path of the script (only ``script`` while the step has no source directory)."""
        if self.source_directory is None:
            return Path(self.script)
        return Path(self.source_directory) / self.script

    def run_after(self, step: Step) -> Step:
        """Run this step after ``step`` even though it reads none of its outputs (Azure's
        ``run_after``). The order is a Dagster dependency carrying no data: this step's
        fingerprint does not change, and when ``step`` fails this one does not run."""
        if step is self:
            raise ValueError(f"Step '{self.name}' cannot run after itself.")
        if not isinstance(step, Step):
            raise TypeError(
                f"Step '{self.name}': run_after() takes a step, not {type(step).__name__}."
            )
        if all(s is not step for s in self.ordered_after):
            self.ordered_after.append(step)
        return self

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
        """Pipeline parameters the step's arguments (and ``params``) use, each once."""
        seen: dict[int, PipelineParameter] = {}
        for a in [*self.arguments, *self.param_values().values()]:
            if isinstance(a, PipelineParameter):
                seen.setdefault(id(a), a)
        return list(seen.values())

    def param_values(self) -> dict[str, Any]:
        """The step's ``params`` (name -> literal or PipelineParameter); none for this kind."""
        return {}

    def params_settings(self) -> dict[str, dict[str, str]]:
        """The step's ``params`` as they determine its result: a literal as the script receives
        it (the variable's text: 1 and "1" are the same to it); a PipelineParameter by name, its
        run value being the run's. Empty without params."""
        return {
            name: {"parameter": v.name} if isinstance(v, PipelineParameter) else {"value": str(v)}
            for name, v in sorted(self.param_values().items())
        }

    def own_problems(self, where: str, resources: Mapping[str, Any] | None) -> list[str]:
        """What is wrong with this kind of step's own settings (validation lists them with the
        pipeline's); none for script steps, whose settings the pipeline checks itself."""
        return []

    def settings(self) -> dict[str, Any]:
        """Step settings that can change the result (part of the fingerprint)."""
        return {"kind": self.kind, "script": self.script}


_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


def default_step_name(script: str) -> str:
    """The name of a step declared without one: its script's file name without ``.py``, with
    characters a step name cannot hold (``-``, ``.``) as ``_`` (``prep-data.py`` -> ``prep_data``)."""
    stem = Path(script).name.removesuffix(".py")
    name = _NOT_NAME.sub("_", stem)
    return f"step_{name}" if name[:1].isdigit() else name


@dataclass(eq=False)
class PythonScriptStep(Step):
    """Runs ``script`` from ``source_directory`` as a process on a CPU cluster.

    ``params`` (Azure's): name -> value, delivered to the script as the environment variable
    ``AML_PARAMETER_<name>``; a value may be a ``PipelineParameter`` (resolved per run). Part of
    the fingerprint.
    """

    kind: ClassVar[Literal["python", "spark"]] = "python"
    compute_target: str = "cpucluster"
    params: dict[str, str | int | float | bool | PipelineParameter] = field(default_factory=dict)

    def param_values(self) -> dict[str, Any]:
        return dict(self.params)


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
