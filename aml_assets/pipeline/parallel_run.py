"""ParallelRunStep: batch inference over a tabular or file dataset in mini-batches (Azure ML's
``ParallelRunStep`` / ``ParallelRunConfig``), reused per mini-batch.

.. code-block:: python

    config = ParallelRunConfig(
        entry_script="score.py", source_directory="code", mini_batch_size="1MB",
        error_threshold=10, output_action="append_row", process_count_per_node=2,
    )
    score = ParallelRunStep(
        name="score", parallel_run_config=config,
        inputs=[customers.as_named_input("customers")], output=OutputDataset("scores"),
        side_inputs=[model.as_mount("model")], arguments=["--model", model.as_mount("model")],
    )

The entry script has ``init()`` (once per worker process) and ``run(mini_batch)`` (a pandas
DataFrame for a tabular input, a list of file paths for a file input) returning a DataFrame or a
list, one element per item processed. The step runs on its CPU cluster as one step process with
``process_count_per_node x node_count`` worker processes, at most the cluster's
``max_concurrent_steps`` (its slots). With ``output_action="append_row"`` the output holds
``append_row_file_name`` with every returned row IN INPUT ORDER (mini-batch by mini-batch);
with ``"summary_only"`` it holds the files ``run()`` wrote to ``EntryScript().output_dir``. Both
get ``_parallel_run_summary.json`` (counts and the failed mini-batches).

Reuse is two-level. The step as a whole is reused like any step (its fingerprint covers the
whole input). When it runs, each mini-batch's result is looked up by its own key
(``reuse.minibatch_cache``: entry script code + environment + arguments + side inputs + the
mini-batch's content) and only the mini-batches without a stored result are computed: a
rerun after changing one input file recomputes only the mini-batches holding it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from aml_assets.compute.environments import Environment
from aml_assets.compute.launch import StepLaunch, amlrun_root, run_script_process
from aml_assets.data.datasets import DatasetDef, DatasetInput, OutputDataset
from aml_assets.data.minibatches import MiniBatch, parse_mini_batch_size, plan_input
from aml_assets.errors import StepFailedError
from aml_assets.pipeline.execution import StepExecution
from aml_assets.pipeline.steps import Step
from aml_assets.reuse.minibatch_cache import (
    FILES_DIR,
    ROWS_FILE,
    CachedResult,
    MiniBatchCache,
    key_basis,
    minibatch_key,
    result_record,
)
from amlrun.parallel import SUMMARY, threshold_problem

__all__ = ["ParallelRunConfig", "ParallelRunStep", "run_parallel"]

OutputAction = Literal["append_row", "summary_only"]
DEFAULT_APPEND_ROW_FILE = "parallel_run_step.txt"
SUMMARY_FILE = "_parallel_run_summary.json"


@dataclass
class ParallelRunConfig:
    """How a ParallelRunStep runs its entry script (Azure's ``ParallelRunConfig``).

    ``mini_batch_size``: for a tabular input an approximate size in bytes (``1024``, ``"64KB"``,
    ``"10MB"``; default 1 MB) or ``"N rows"``; for a file input a number of files (default 10).
    ``error_threshold``: failed items (rows or files) tolerated over the whole input (-1: any);
    ``allowed_failed_count`` / ``allowed_failed_percent``: failed mini-batches tolerated (None:
    no limit). A mini-batch fails when ``run()`` raised (or its worker died or exceeded
    ``run_invocation_timeout`` seconds) on each of ``run_max_try`` tries; ``run()`` returning
    fewer elements than items counts the missing ones as failed items.
    """

    entry_script: str
    source_directory: Path | str | None = None
    mini_batch_size: int | str | None = None
    error_threshold: int = 0
    output_action: OutputAction = "append_row"
    compute_target: str = ""
    node_count: int = 1
    #: Worker processes per node; None: one per CPU of this machine (Azure: cores per node).
    process_count_per_node: int | None = None
    environment: Environment | None = None
    description: str | None = None
    logging_level: str = "INFO"
    run_invocation_timeout: float = 60
    run_max_try: int = 3
    append_row_file_name: str | None = None
    allowed_failed_count: int | None = None
    allowed_failed_percent: float | None = None
    #: Set in the worker processes' environment (part of every mini-batch's key).
    environment_variables: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.output_action not in ("append_row", "summary_only"):
            problems.append(f"output_action {self.output_action!r} is not 'append_row' or 'summary_only'")
        if self.error_threshold < -1:
            problems.append(f"error_threshold {self.error_threshold} is below -1 (-1 tolerates every failure)")
        if self.allowed_failed_count is not None and self.allowed_failed_count < -1:
            problems.append(f"allowed_failed_count {self.allowed_failed_count} is below -1")
        if self.allowed_failed_percent is not None and not 0 <= self.allowed_failed_percent <= 100:
            problems.append(f"allowed_failed_percent {self.allowed_failed_percent} is not within 0..100")
        if self.run_max_try < 1:
            problems.append(f"run_max_try {self.run_max_try} is below 1")
        if self.run_invocation_timeout <= 0:
            problems.append(f"run_invocation_timeout {self.run_invocation_timeout} is not positive")
        if self.node_count < 1 or (self.process_count_per_node is not None and self.process_count_per_node < 1):
            problems.append("node_count and process_count_per_node must be at least 1")
        name = self.append_row_file_name
        if name is not None and (not name or "/" in name or "\\" in name or name.startswith(".")):
            problems.append(f"append_row_file_name {name!r} must be a plain file name")
        if self.output_action == "summary_only" and name:
            problems.append("append_row_file_name is only used with output_action='append_row'")
        try:
            parse_mini_batch_size(self.mini_batch_size, tabular=True)
        except ValueError:
            try:
                parse_mini_batch_size(self.mini_batch_size, tabular=False)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError(
                f"ParallelRunConfig for {self.entry_script!r}: " + "; ".join(problems) + "."
            )

    @property
    def row_file(self) -> str:
        """The append-row file's name."""
        return self.append_row_file_name or DEFAULT_APPEND_ROW_FILE

    def requested_processes(self) -> int:
        """process_count_per_node x node_count (per node: this machine's CPUs when not set)."""
        return (self.process_count_per_node or os.cpu_count() or 1) * self.node_count


class ParallelExecution(StepExecution):
    """Runs a ParallelRunStep: its settings in the fingerprint, its mini-batches on workers."""

    step: ParallelRunStep

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "parallel": self.step.kind_settings()}

    def launch(self, launch: StepLaunch, out_dirs: dict[str, Path], components: dict[str, Any]) -> dict[str, Any]:
        return run_parallel(self, launch, out_dirs, components)


def _tabular(dataset: DatasetDef) -> bool:
    return getattr(dataset, "format", "files") in ("csv", "parquet")


@dataclass(eq=False)
class ParallelRunStep(Step):
    """Runs ``parallel_run_config.entry_script`` over ``inputs`` in mini-batches (see module).

    ``inputs``: the datasets cut into mini-batches (all tabular, or all file datasets; a dataset
    given bare is used as ``as_named_input(name)``). ``side_inputs``: datasets every worker may
    read whole (e.g. a model), usually also named in ``arguments``. ``output``: where the
    results go (default: ``OutputDataset("<name>_output")``).
    """

    kind: ClassVar[str] = "parallel"
    execution_type: ClassVar[type] = ParallelExecution
    parallel_run_config: ParallelRunConfig | None = None
    output: OutputDataset | None = None
    side_inputs: list[DatasetInput] = field(default_factory=list)
    #: The inputs cut into mini-batches (``inputs`` holds them and the side inputs).
    parallel_inputs: list[DatasetInput] = field(default_factory=list)

    def __post_init__(self) -> None:
        config = self.parallel_run_config
        if not isinstance(config, ParallelRunConfig):
            raise ValueError(
                f"ParallelRunStep '{self.name or '?'}': give parallel_run_config=ParallelRunConfig(...)."
            )
        # Idempotent: dataclasses.replace (pipeline defaults, published versions) calls it again.
        if not self.parallel_inputs:
            self.parallel_inputs = [_as_input(i, "named") for i in self.inputs]
        self.side_inputs = [_as_input(i, "mount") for i in self.side_inputs]
        self.inputs = [*self.parallel_inputs, *self.side_inputs]
        self.script = self.script or config.entry_script
        if self.source_directory is None:
            self.source_directory = config.source_directory
        if self.environment is None:
            self.environment = config.environment
        self.compute_target = self.compute_target or config.compute_target or "cpucluster"
        self.description = self.description or config.description
        if self.output is not None:
            self.outputs = [self.output]
        super().__post_init__()
        # Bound by the base (DataPath parameters, v1 references): split again, in order.
        count = len(self.parallel_inputs)
        self.parallel_inputs, self.side_inputs = self.inputs[:count], self.inputs[count:]
        if not self.parallel_inputs:
            raise ValueError(f"ParallelRunStep '{self.name}': inputs= names no dataset to cut into mini-batches.")
        kinds = {_tabular(i.dataset) for i in self.parallel_inputs}
        if len(kinds) > 1:
            raise ValueError(
                f"ParallelRunStep '{self.name}': inputs mix tabular and file datasets "
                f"({', '.join(i.name for i in self.parallel_inputs)}); all must be of one type."
            )
        parse_mini_batch_size(config.mini_batch_size, tabular=kinds.pop())
        if self.output is None:
            self.output = OutputDataset(f"{self.name}_output")
        self.outputs = [self.output]

    def kind_settings(self) -> dict[str, Any]:
        """What of the parallel run can change the step's result (part of its fingerprint):
        how the inputs are cut, what is tolerated and retried, what the output holds. The
        number of processes is left out: it changes how fast, not what."""
        c = self.parallel_run_config
        assert c is not None
        tabular = _tabular(self.parallel_inputs[0].dataset)
        return {
            "partitioned": [i.name for i in self.parallel_inputs],
            "mini_batch_size": parse_mini_batch_size(c.mini_batch_size, tabular).describe(),
            "error_threshold": c.error_threshold,
            "allowed_failed_count": c.allowed_failed_count,
            "allowed_failed_percent": c.allowed_failed_percent,
            "run_max_try": c.run_max_try,
            "run_invocation_timeout": c.run_invocation_timeout,
            "output_action": c.output_action,
            "append_row_file_name": c.row_file if c.output_action == "append_row" else None,
            "environment_variables": dict(sorted(c.environment_variables.items())),
        }


def _as_input(item: Any, mode: str) -> Any:
    if isinstance(item, DatasetInput):
        return item
    if isinstance(item, DatasetDef):
        return item.as_named_input(item.name) if mode == "named" else item.as_mount(item.name)
    return item  # a DataPath binding etc.: bound (or refused) by Step.__post_init__


# --- running ---------------------------------------------------------------------------------
@dataclass
class _Planned:
    batch: MiniBatch
    index: int
    key: str
    cached: CachedResult | None = None


def runner_path() -> Path:
    """The script-side runner (``amlrun/parallel.py``)."""
    return Path(amlrun_root()) / "amlrun" / "parallel.py"


def worker_count(step: ParallelRunStep, slots: int, log: Any) -> int:
    """Worker processes: what the config asks for, at most the compute target's slots."""
    config = step.parallel_run_config
    assert config is not None
    wanted = config.requested_processes()
    if wanted > slots:
        log.info(
            f"ParallelRunStep '{step.name}' asks for {wanted} processes (process_count_per_node="
            f"{config.process_count_per_node or os.cpu_count()} x node_count={config.node_count}); "
            f"compute target '{step.compute_target}' has {slots} slots: running {slots}."
        )
    return max(1, min(wanted, slots))


def plan_step(execution: StepExecution, handles: dict[str, dict[str, Any]], components: dict[str, Any]) -> list[_Planned]:
    """Every mini-batch of the step's inputs, in input order, with its key."""
    step = execution.step
    assert isinstance(step, ParallelRunStep) and step.parallel_run_config is not None
    side = [i.dataset.name for i in step.side_inputs]
    basis = key_basis(components, side, step.kind_settings())
    declarations = components.get("settings", {}).get("inputs", {})
    planned: list[_Planned] = []
    for inp in step.parallel_inputs:
        handle = handles[inp.name]
        tabular = _tabular(inp.dataset)
        size = parse_mini_batch_size(step.parallel_run_config.mini_batch_size, tabular)
        path = Path(handle["path"])
        if not path.exists():
            raise StepFailedError(
                f"ParallelRunStep '{step.name}': input '{inp.name}' was delivered as "
                f"{handle['path']}, not a local path, so it cannot be cut into mini-batches. "
                "Pass it as dataset.as_named_input(name) (or as_mount / as_download)."
            )
        for batch in plan_input(inp.name, path, handle["format"], size, handle.get("reader", {}), execution.stat_cache):
            declaration = {k: v for k, v in declarations.get(inp.name, {}).items() if k != "mode"}
            planned.append(_Planned(batch, len(planned), minibatch_key(basis, declaration, batch)))
    return planned


def run_parallel(
    execution: StepExecution, launch: StepLaunch, out_dirs: dict[str, Path], components: dict[str, Any]
) -> dict[str, Any]:
    """Run a ParallelRunStep: plan its mini-batches, reuse the stored ones, compute the others
    on the cluster's slots, check the error settings, then assemble the output (in input
    order); returns the step's metrics. Raises ``StepFailedError`` (nothing published) when the
    failures exceed what the config tolerates."""
    step, log = execution.step, execution.log
    assert isinstance(step, ParallelRunStep) and step.parallel_run_config is not None
    planned = plan_step(execution, launch.context["inputs"], components)
    cache = MiniBatchCache(execution.datastore, log)
    if step.allow_reuse and not execution.regenerate:
        for p in planned:
            p.cached = cache.lookup(p.key)
    todo = [p for p in planned if p.cached is None]
    log.info(
        f"ParallelRunStep '{step.name}': {len(planned)} mini-batches, {len(planned) - len(todo)} "
        f"reused, {len(todo)} to compute"
    )
    results = launch.workdir / "parallel-results"
    summary: dict[str, Any] = {"succeeded": {}, "failed": {}, "retries": 0, "aborted": None, "processes": 0}
    if todo:
        summary = _compute(execution, launch, planned, todo, results)
    try:
        _check(step, planned, summary)
        metrics = _assemble(step, planned, summary, results, cache, out_dirs[step.output.name])
    finally:
        # Successful results are stored even when the step fails: they are exact, and a rerun
        # then computes only what failed.
        _store_new(cache, planned, summary, results, log)
    metrics.update(
        mini_batches=len(planned),
        mini_batches_reused=len(planned) - len(todo),
        mini_batches_computed=len(summary["succeeded"]),
        retries=int(summary["retries"]),
        processes=int(summary["processes"]),
    )
    return metrics


def _compute(execution: StepExecution, launch: StepLaunch, planned: list[_Planned], todo: list[_Planned], results: Path) -> dict[str, Any]:
    step = execution.step
    assert isinstance(step, ParallelRunStep) and step.parallel_run_config is not None
    config = step.parallel_run_config
    plan = {
        "entry_script": str(step.script_path),
        "source_directory": str(step.source_directory),
        "workers": worker_count(step, execution.compute.max_concurrent_steps, execution.log),
        "run_max_try": config.run_max_try,
        "run_invocation_timeout": config.run_invocation_timeout,
        "error_threshold": config.error_threshold,
        "allowed_failed_count": config.allowed_failed_count,
        "allowed_failed_percent": config.allowed_failed_percent,
        "total_batches": len(planned),
        "environment_variables": dict(config.environment_variables),
        "results_dir": str(results),
        "batches": [
            {"index": p.index, "input": p.batch.input, "kind": p.batch.kind, "spec": p.batch.spec,
             "items": p.batch.items, "label": p.batch.label}
            for p in todo
        ],
    }
    plan_file = launch.workdir / "parallel-plan.json"
    plan_file.write_text(json.dumps(plan))
    runner = dataclasses.replace(
        launch, script=runner_path(), arguments=[str(plan_file), "--", *launch.arguments]
    )
    try:
        run_script_process(execution.compute, runner)
    except StepFailedError:
        # The runner itself failed (killed, timed out): keep what finished, then fail.
        _store_new(MiniBatchCache(execution.datastore, execution.log), planned, _read_summary(results), results, execution.log)
        raise
    summary = _read_summary(results)
    if summary is None:
        raise launch.failure("ended without a summary of its mini-batches")
    return summary


def _read_summary(results: Path) -> dict[str, Any] | None:
    file = results / SUMMARY
    if file.exists():
        return json.loads(file.read_text())
    # No summary (killed): whatever finished is in a folder named by its index.
    done = {p.name: None for p in results.glob("*") if p.is_dir() and p.name.isdigit()} if results.exists() else {}
    return {"succeeded": done, "failed": {}, "retries": 0, "aborted": "the runner was stopped", "processes": 0}


def _failure_counts(planned: list[_Planned], summary: dict[str, Any]) -> tuple[int, int]:
    failed_batches = {int(i) for i in summary["failed"]}
    items = sum(p.batch.items for p in planned if p.index in failed_batches)
    for p in planned:
        returned = p.cached.returned if p.cached else summary["succeeded"].get(str(p.index))
        if returned is not None and returned < p.batch.items:
            items += p.batch.items - returned
    return items, len(failed_batches)


def _check(step: ParallelRunStep, planned: list[_Planned], summary: dict[str, Any]) -> None:
    config = step.parallel_run_config
    assert config is not None
    failed_items, failed_batches = _failure_counts(planned, summary)
    problem = threshold_problem(
        failed_items, failed_batches, len(planned), config.error_threshold,
        config.allowed_failed_count, config.allowed_failed_percent,
    )
    aborted = summary.get("aborted")
    if problem is None and aborted is None:
        return
    by_index = {p.index: p for p in planned}
    lines = [
        f"  - mini-batch {i} ({by_index[int(i)].batch.label}): {_last_line(err)}"
        for i, err in list(summary["failed"].items())[:5]
    ]
    # An entry script that cannot start says so first, with its traceback.
    reason = aborted if aborted and aborted.startswith("the entry script") else problem or aborted
    raise StepFailedError(
        f"Step '{step.name}' failed: {reason}. Nothing was published."
        + ("\nFailed mini-batches:\n" + "\n".join(lines) if lines else "")
        + "\nFix the entry script or the data, or raise error_threshold / allowed_failed_count / "
        "allowed_failed_percent on the ParallelRunConfig. Mini-batches that succeeded are kept "
        "and reused by the next run."
    )


def _last_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def _assemble(
    step: ParallelRunStep, planned: list[_Planned], summary: dict[str, Any], results: Path,
    cache: MiniBatchCache, out_dir: Path,
) -> dict[str, Any]:
    """Write the output: the rows of every succeeded mini-batch in input order (append_row),
    the files run() wrote (each mini-batch's, in input order; two writing one name is an error),
    and the summary."""
    config = step.parallel_run_config
    assert config is not None
    failed = {int(i) for i in summary["failed"]}
    owners: dict[str, int] = {}
    rows_written = 0
    row_file = out_dir / config.row_file if config.output_action == "append_row" else None
    with open(row_file, "wb") if row_file else open(os.devnull, "wb") as rows_out:
        for p in planned:
            if p.index in failed:
                continue
            if p.cached is not None:
                rows, returned = p.cached.rows, p.cached.returned
                files_root = None
            else:
                folder = results / str(p.index)
                if not folder.is_dir():
                    continue  # not computed (the run stopped early)
                rows, returned = (folder / "rows.txt").read_bytes(), summary["succeeded"][str(p.index)]
                files_root = folder / "files"
            rows_out.write(rows)
            rows_written += returned
            names = p.cached.files.keys() if p.cached else _files_under(files_root)
            for name in names:
                if name in owners or (row_file is not None and name == row_file.name) or name == SUMMARY_FILE:
                    other = f"mini-batch {owners[name]}" if name in owners else "the runner"
                    raise StepFailedError(
                        f"Step '{step.name}' failed: mini-batch {p.index} ({p.batch.label}) and "
                        f"{other} both wrote '{name}' to the output. Nothing was published. "
                        "Name the files run() writes after its mini-batch's items."
                    )
                owners[name] = p.index
            if p.cached is not None:
                cache.copy_files(p.cached, out_dir)
            elif files_root is not None and files_root.is_dir():
                shutil.copytree(files_root, out_dir, dirs_exist_ok=True)
    failed_items, failed_batches = _failure_counts(planned, summary)
    by_index = {p.index: p for p in planned}
    report = {
        "mini_batches": len(planned),
        "items": sum(p.batch.items for p in planned),
        "rows": rows_written,
        "failed_items": failed_items,
        "failed_mini_batches": [
            {"index": int(i), "batch": by_index[int(i)].batch.label, "error": _last_line(err)}
            for i, err in sorted(summary["failed"].items(), key=lambda kv: int(kv[0]))
        ],
    }
    # Only what the results are (no reused/computed counts): the output's content hash must not
    # depend on how much of it was reused.
    (out_dir / SUMMARY_FILE).write_text(json.dumps(report, indent=2, sort_keys=True))
    return {"rows": rows_written, "items_failed": failed_items, "mini_batches_failed": failed_batches}


def _files_under(root: Path | None) -> list[str]:
    if root is None or not root.is_dir():
        return []
    return [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]


def _store_new(cache: MiniBatchCache, planned: list[_Planned], summary: dict[str, Any] | None, results: Path, log: Any) -> None:
    """Store each newly computed result under its key (record, rows, files)."""
    if summary is None:
        return
    stored = 0
    for p in planned:
        folder = results / str(p.index)
        count_file = folder / "count.json"
        if p.cached is not None or not count_file.exists():
            continue  # reused, not computed, or already stored
        count = json.loads(count_file.read_text())
        count_file.unlink()
        files = folder / FILES_DIR
        record = result_record(count["items"], count["returned"], (folder / ROWS_FILE).read_bytes(), files)
        try:
            stored += cache.store_result(p.key, folder, record)
        except Exception as exc:  # noqa: BLE001 - a result not stored is only recomputed later
            log.warning(f"Could not store the result of mini-batch {p.index} ({p.batch.label}): {exc}")
    if stored:
        log.info(f"Stored {stored} mini-batch results for reuse")
