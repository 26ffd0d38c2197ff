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
    #: How the dataset is declared to be read: header, encoding, column_types, options.
    reader: dict[str, Any] = field(default_factory=dict)

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
            header = self.reader.get("header", True)
            frames = [
                pd.read_csv(
                    f,
                    sep=self.separator,
                    header=0 if header else None,
                    encoding=self.reader.get("encoding", "utf-8"),
                )
                for f in files
            ]
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        if not self.reader.get("header", True):
            frame.columns = [f"f{i}" for i in range(len(frame.columns))]  # as Arrow names them
        types = self.reader.get("column_types") or {}
        self._check_columns(types, list(frame.columns))
        return frame.astype({k: _pandas_type(v) for k, v in types.items()}) if types else frame

    def _check_columns(self, types: Mapping[str, str], columns: list[str]) -> None:
        missing = [name for name in types if name not in columns]
        if missing:
            raise KeyError(
                f"Input '{self.name}' (dataset '{self.dataset}'): column_types names column(s) "
                f"{', '.join(missing)}, which the data does not have (columns: "
                f"{', '.join(map(str, columns))}). Fix column_types (or separator/header) on the "
                "dataset's declaration."
            )

    def to_spark_dataframe(self, spark=None):
        """Load the dataset as a Spark DataFrame on the active (or given) SparkSession."""
        from pyspark.sql import SparkSession

        spark = spark or SparkSession.builder.getOrCreate()
        reader = spark.read
        for key, value in (self.reader.get("options") or {}).items():
            reader = reader.option(key, value)
        if self.format == "parquet":
            return reader.parquet(self.path)
        df = (
            reader.option("header", str(bool(self.reader.get("header", True))).lower())
            .option("inferSchema", "true")
            .option("sep", self.separator)
            .option("encoding", self.reader.get("encoding", "utf-8"))
            .csv(self.path)
        )
        if not self.reader.get("header", True):
            df = df.toDF(*[f"f{i}" for i in range(len(df.columns))])  # as Arrow names them
        self._check_columns(self.reader.get("column_types") or {}, list(df.columns))
        for name, kind in (self.reader.get("column_types") or {}).items():
            df = df.withColumn(name, df[name].cast(_spark_type(kind)))
        return df


def _pandas_type(arrow_type: str) -> str:
    """A pandas dtype for an Arrow type alias used in ``column_types``."""
    return {"string": "string", "utf8": "string", "bool": "boolean"}.get(arrow_type, arrow_type)


def _spark_type(arrow_type: str) -> str:
    """A Spark SQL type for an Arrow type alias used in ``column_types``."""
    mapping = {"int8": "tinyint", "int16": "smallint", "int32": "int", "int64": "bigint",
               "float32": "float", "float": "float", "float64": "double", "double": "double",
               "string": "string", "utf8": "string", "bool": "boolean", "date32": "date"}
    return mapping.get(arrow_type, "timestamp" if arrow_type.startswith("timestamp") else arrow_type)


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
