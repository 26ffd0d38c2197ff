"""Run context for step scripts: input datasets, parameters and metric logging."""

from __future__ import annotations

import contextvars
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Path of the JSON file describing the step's inputs, set by the step runner.
CONTEXT_ENV = "AML_RUN_CONTEXT"

MetricSink = Callable[[str, Any], None]

# Set by an in-process runner (Spark steps share the pool's session in the Dagster process).
_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("aml_current_run", default=None)


@dataclass
class DatasetHandle:
    """One input dataset as the script sees it: a local path (or URI) and its format."""

    name: str
    path: str
    uri: str
    format: str
    mode: str
    separator: str = ","
    dataset: str | None = None
    version: int | None = None

    def _tabular_files(self) -> list[Path]:
        root = Path(self.path)
        if root.is_file():
            return [root]
        ext = ".parquet" if self.format == "parquet" else None
        return [
            p
            for p in sorted(root.rglob("*"))
            if p.is_file()
            and not p.name.startswith(("_", "."))
            and (ext is None or p.suffix == ext)
        ]

    def to_pandas_dataframe(self):
        """Load the dataset as a pandas DataFrame (CSV or Parquet, a file or a folder)."""
        import pandas as pd

        files = self._tabular_files()
        if not files:
            raise FileNotFoundError(f"Input '{self.name}' has no data files under {self.path}.")
        if self.format == "parquet":
            frames = [pd.read_parquet(f) for f in files]
        else:
            frames = [pd.read_csv(f, sep=self.separator) for f in files]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    def to_spark_dataframe(self, spark=None):
        """Load the dataset as a Spark DataFrame on the active (or given) SparkSession."""
        from pyspark.sql import SparkSession

        spark = spark or SparkSession.builder.getOrCreate()
        if self.format == "parquet":
            return spark.read.parquet(self.path)
        return (
            spark.read.option("header", "true")
            .option("inferSchema", "true")
            .option("sep", self.separator)
            .csv(self.path)
        )


@dataclass
class Run:
    """The current step run, like Azure ML's ``Run.get_context()``."""

    step: str | None = None
    run_id: str | None = None
    input_datasets: dict[str, DatasetHandle] = field(default_factory=dict)
    output_paths: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    _sink: MetricSink | None = None

    @property
    def offline(self) -> bool:
        """True when the script runs outside a pipeline."""
        return self.step is None

    @classmethod
    def get_context(cls) -> Run:
        """The step's run context (offline when not run by aml-assets)."""
        current = _current.get()
        if current is not None:
            return current
        path = os.environ.get(CONTEXT_ENV)
        if not path:
            return cls()
        return cls.from_dict(json.loads(Path(path).read_text()), _pipes_sink())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], sink: MetricSink | None = None) -> Run:
        """Build a run from the runner's context description."""
        return cls(
            step=data.get("step"),
            run_id=data.get("run_id"),
            input_datasets={k: DatasetHandle(**v) for k, v in data.get("inputs", {}).items()},
            output_paths=dict(data.get("outputs", {})),
            parameters=dict(data.get("parameters", {})),
            _sink=sink,
        )

    def log(self, name: str, value: Any) -> None:
        """Record a metric; it appears on the step's output materializations in Dagster."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"Metric '{name}' is {value}; log a finite number.")
        if self._sink is None:
            print(f"[amlrun offline] metric {name} = {value!r}")
        else:
            self._sink(name, value)

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Record several metrics at once."""
        for name, value in metrics.items():
            self.log(name, value)


def _pipes_sink() -> MetricSink | None:
    try:
        from dagster_pipes import PipesContext
    except ImportError:
        return None
    if not PipesContext.is_initialized():
        return None
    pipes = PipesContext.get()
    return lambda name, value: pipes.report_custom_message({"aml_metric": [name, value]})


@contextmanager
def in_process_run(run: Run) -> Iterator[Run]:
    """Make ``run`` the context seen by ``Run.get_context()`` in this process, for a block."""
    token = _current.set(run)
    try:
        yield run
    finally:
        _current.reset(token)
