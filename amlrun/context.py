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
#: In a process a CommandStep's command started: the file its metrics are appended to (JSON
#: lines), which the command's runner reports to Dagster when the command ends.
COMMAND_METRICS_ENV = "AML_COMMAND_METRICS"

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
    """The current step run, like Azure ML's ``Run.get_context()``.

    ``log``, ``log_list``, ``log_row`` and ``log_table`` record metrics: they appear on the
    step's output materializations in Dagster (lists and tables as text). ``tags`` are
    the pipeline run's own tags; ``tag()`` adds one, recorded as the metric ``tag.<key>``.
    ``parent`` is the pipeline run: what a script logs on it is recorded with the step's
    metrics (the only place a script's metrics are kept).
    """

    step: str | None = None
    run_id: str | None = None
    input_datasets: dict[str, DatasetHandle] = field(default_factory=dict)
    output_paths: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: The pipeline run's description: {"run_id", "pipeline"} (None: offline, or the parent).
    parent_info: dict[str, Any] | None = None
    #: The output that also receives what the script prints (``std_log.txt``), if any.
    std_log_output: str | None = None
    _sink: MetricSink | None = None
    _rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def offline(self) -> bool:
        """True when the script runs outside a pipeline."""
        return self.step is None and self.parent_info is None and self._sink is None

    @property
    def id(self) -> str | None:
        """Azure's name for the run's id."""
        return self.run_id

    @property
    def parent(self) -> Run | None:
        """The pipeline run this step belongs to (None offline)."""
        if self.parent_info is None:
            return None
        return Run(
            run_id=self.parent_info.get("run_id"),
            tags=self.tags,
            _sink=self._sink,
            _rows=self._rows,
        )

    @property
    def experiment(self) -> RunExperiment:
        """The experiment this run belongs to (Azure's ``run.experiment``): its name and the
        workspace (the project; ``Dataset.get_by_id`` takes it and needs nothing from it)."""
        name = self.tags.get("aml/experiment") or (self.parent_info or {}).get("pipeline")
        return RunExperiment(name=name, workspace=RunWorkspace())

    def input_by_id(self, dataset_id: str) -> DatasetHandle:
        """The input dataset whose id is ``dataset_id``: what its argument received (its path:
        v1 passes a named input's dataset id there), or its input or dataset name. Offline, a
        dataset of the file or folder at that path (CSV, or Parquet for ``.parquet``)."""
        for handle in self.input_datasets.values():
            if dataset_id in (handle.path, handle.uri, handle.name, handle.dataset):
                return handle
        if self.offline and Path(dataset_id).exists():
            fmt = "parquet" if dataset_id.rstrip("/").endswith(".parquet") else "csv"
            return DatasetHandle(Path(dataset_id).stem, dataset_id, dataset_id, fmt, "direct")
        known = ", ".join(f"{h.name} ({h.path})" for h in self.input_datasets.values()) or "none"
        raise KeyError(
            f"No input dataset has id {dataset_id!r}; this step's inputs: {known}. Pass the "
            "input itself as the argument (arguments=['--x', ds.as_named_input('x')])."
        )

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
            tags=dict(data.get("tags", {})),
            parent_info=dict(data["parent"]) if data.get("parent") else None,
            std_log_output=data.get("std_log_output"),
            _sink=sink,
        )

    def _record(self, name: str, value: Any) -> None:
        if self._sink is None:
            print(f"[amlrun offline] metric {name} = {value!r}")
        else:
            self._sink(name, value)

    def log(self, name: str, value: Any, description: str = "") -> None:
        """Record a metric; it appears on the step's output materializations in Dagster."""
        _check_value(name, value)
        self._record(name, value)

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Record several metrics at once."""
        for name, value in metrics.items():
            self.log(name, value)

    def log_list(self, name: str, value: Any, description: str = "") -> None:
        """Record a list of values (e.g. a loss per epoch) as one metric."""
        values = list(value)
        for item in values:
            _check_value(name, item)
        self._record(name, values)

    def log_table(self, name: str, value: Mapping[str, Any], description: str = "") -> None:
        """Record a table given as column -> list of values (every column the same length)."""
        table = {str(col): list(items) for col, items in value.items()}
        lengths = {len(items) for items in table.values()}
        if len(lengths) > 1:
            sizes = ", ".join(f"{col} {len(items)}" for col, items in table.items())
            raise ValueError(
                f"Table metric '{name}': columns have different lengths ({sizes}); give every "
                "column the same number of values."
            )
        for items in table.values():
            for item in items:
                _check_value(name, item)
        self._record(name, table)

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        """Add a row to the table metric ``name`` (column=value, ...); the metric is the table of
        every row logged so far, a column missing from a row holding None there."""
        if not kwargs:
            raise ValueError(f"Table metric '{name}': log_row() needs at least one column=value.")
        for item in kwargs.values():
            _check_value(name, item)
        rows = self._rows.setdefault(name, [])
        rows.append(dict(kwargs))
        columns = list(dict.fromkeys(col for row in rows for col in row))
        self._record(name, {col: [row.get(col) for row in rows] for col in columns})

    def tag(self, key: str, value: Any = None) -> None:
        """Tag the run (Azure's ``Run.tag``): in ``tags`` from now on, recorded as ``tag.<key>``."""
        text = "" if value is None else str(value)
        self.tags[key] = text
        self._record(f"tag.{key}", text)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tag the run with several tags at once."""
        for key, value in tags.items():
            self.tag(key, value)

    def get_tags(self) -> dict[str, str]:
        """The run's tags (a copy)."""
        return dict(self.tags)


@dataclass(frozen=True)
class RunWorkspace:
    """What a script sees of the workspace (Azure's ``run.experiment.workspace``): the project."""

    name: str = "local"


@dataclass(frozen=True)
class RunExperiment:
    """What a script sees of its run's experiment (Azure's ``run.experiment``)."""

    name: str | None
    workspace: RunWorkspace


def input_path_env(run: Run) -> dict[str, str]:
    """v1's environment variables named after each input, holding its path
    (``os.environ["step2_input"]``); the runner sets those not already set."""
    return {name: handle.path for name, handle in run.input_datasets.items()}


def _check_value(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"Metric '{name}' is {value}; log a finite number.")


def _pipes_sink() -> MetricSink | None:
    metrics_file = os.environ.get(COMMAND_METRICS_ENV)
    if metrics_file:  # a script run by a CommandStep's command: its runner reports them
        def append(name: str, value: Any) -> None:
            with open(metrics_file, "a") as fh:
                fh.write(json.dumps([name, value], default=str) + "\n")

        return append
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
    """Make ``run`` the context seen by ``Run.get_context()`` in this process, for a block (a
    Spark step's script, run in the pool's process). Its printed output is kept as for a script
    process (``stdout_kept``), and afterwards the checksum files Spark's local filesystem wrote
    beside each output file are removed (``drop_local_checksums``)."""
    token = _current.set(run)
    try:
        with stdout_kept(run):
            yield run
    finally:
        _current.reset(token)
        for path in run.output_paths.values():
            drop_local_checksums(Path(path))


@contextmanager
def stdout_kept(run: Run) -> Iterator[None]:
    """While a step with a ``std_log_output`` runs (compat gives one to a v1 step that declares
    no output), what its script prints is also written there as ``std_log.txt`` (v1 keeps a
    step's output with its run as ``user_logs/std_log.txt``)."""
    import sys

    folder = run.output_paths.get(run.std_log_output) if run.std_log_output else None
    if folder is None:
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / "std_log.txt", "a", encoding="utf-8") as log:
        saved = sys.stdout
        sys.stdout = _Tee(saved, log)
        try:
            yield
        finally:
            sys.stdout = saved


class _Tee:
    """A text stream writing to two others."""

    def __init__(self, first: Any, second: Any):
        self._first, self._second = first, second

    def write(self, text: str) -> int:
        self._second.write(text)
        return self._first.write(text)

    def flush(self) -> None:
        self._second.flush()
        self._first.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._first, name)


def drop_local_checksums(folder: Path) -> None:
    """Remove the ``.<file>.crc`` files Hadoop's local filesystem writes beside each file Spark
    writes (Spark on cloud storage, as on Synapse, writes none): a reader listing the output's
    files (the v1 sample's ``train.py`` prints each one) sees only what the script wrote."""
    if not folder.is_dir():
        return
    for crc in folder.rglob(".*.crc"):
        if (crc.parent / crc.name[1:-4]).exists():
            crc.unlink()
