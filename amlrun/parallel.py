"""The script side of a ParallelRunStep: runs an entry script's ``init()`` and
``run(mini_batch)`` over mini-batches in worker processes (Azure ML's ParallelRunStep contract).

The step process runs this file with a plan (written by ``aml_assets.pipeline.parallel_run``):
the mini-batches to compute (the others were reused), how many worker processes, and the
retry, timeout and error settings. Each worker imports the entry script, calls ``init()`` once,
then ``run(mini_batch)`` for every mini-batch it is given: a pandas DataFrame for a tabular
input, a list of file paths for a file input. ``run()`` returns a DataFrame or a list, one
element per item it processed; fewer elements than items count as failed items.

A failing ``run()`` is tried again up to ``run_max_try`` times (a worker that dies or exceeds
``run_invocation_timeout`` is replaced, and its mini-batch tried again); a mini-batch failing
every try counts all its items as failed. Once failures exceed ``error_threshold`` (items),
``allowed_failed_count`` or ``allowed_failed_percent`` (mini-batches), the rest is not started.
Each success is written to ``<results>/<index>/`` (rows as text, the files run() wrote to
``EntryScript().output_dir``); ``<results>/summary.json`` says what happened. The step process
assembles the output and decides; this file needs only the standard library (and pandas /
pyarrow for tabular inputs).

An entry script finds its output folder and a logger like Azure's ``EntryScript``:

.. code-block:: python

    from amlrun.parallel import EntryScript   # was: from azureml_user.parallel_run import EntryScript

    def init():
        global out
        out = EntryScript().output_dir

    def run(mini_batch):
        ...
        return results
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
#: Where a worker's run() writes files (moved into its mini-batch's result after each run()).
_state: dict[str, Any] = {"output_dir": None, "working_dir": None}


class EntryScript:
    """What an entry script may ask of its runner (Azure's ``EntryScript``)."""

    @property
    def output_dir(self) -> str:
        """The folder run() writes files to; each mini-batch's files become part of the output
        (and are reused with it). Files written outside run() belong to no mini-batch."""
        return str(_state["output_dir"] or "")

    @property
    def working_dir(self) -> str:
        """A private scratch folder of this worker process."""
        return str(_state["working_dir"] or "")

    @property
    def logger(self) -> logging.Logger:
        """A logger whose records reach the step's log (stderr)."""
        logger = logging.getLogger("entry_script")
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        return logger


def threshold_problem(
    failed_items: int,
    failed_batches: int,
    total_batches: int,
    error_threshold: int | None,
    allowed_failed_count: int | None,
    allowed_failed_percent: float | None,
) -> str | None:
    """Which error setting the failures so far exceed (None: within all of them). -1 (or
    None) ignores every failure, as does allowed_failed_percent=100."""
    if error_threshold is not None and error_threshold >= 0 and failed_items > error_threshold:
        return f"{failed_items} failed items, more than error_threshold={error_threshold}"
    if allowed_failed_count is not None and allowed_failed_count >= 0 and failed_batches > allowed_failed_count:
        return (
            f"{failed_batches} failed mini-batches, more than allowed_failed_count="
            f"{allowed_failed_count}"
        )
    if (
        allowed_failed_percent is not None
        and allowed_failed_percent < 100
        and total_batches
        and failed_batches * 100 > allowed_failed_percent * total_batches
    ):
        return (
            f"{failed_batches} of {total_batches} mini-batches failed "
            f"({failed_batches * 100 / total_batches:.1f}%), more than allowed_failed_percent="
            f"{allowed_failed_percent:g}"
        )
    return None


def rows_text(result: Any) -> tuple[bytes, int]:
    """What run() returned, as the lines appended to the output, and how many elements it had.

    A DataFrame: its rows space-separated, without header or index (as Azure appends them);
    a list (or any sized iterable): one line per element, ``str()`` of it.
    """
    if result is None:
        raise TypeError("run() returned None; return a list or a pandas DataFrame with one element per item processed")
    if type(result).__name__ == "DataFrame" and hasattr(result, "to_csv"):
        text = result.to_csv(sep=" ", header=False, index=False)
        return text.encode("utf-8"), len(result)
    if isinstance(result, (str, bytes)) or not hasattr(result, "__len__"):
        raise TypeError(
            f"run() returned a {type(result).__name__}; return a list or a pandas DataFrame with "
            "one element per item processed"
        )
    items = list(result)
    return "".join(f"{item}\n" for item in items).encode("utf-8"), len(items)


# --- building a mini-batch -----------------------------------------------------------------------
def build_mini_batch(batch: dict[str, Any], handle: Any, scratch: Path) -> Any:
    """The value run() receives for one mini-batch: a DataFrame or a list of file paths."""
    root = Path(handle.path)
    spec = batch["spec"]
    if batch["kind"] == "files":
        if spec.get("single"):
            return [str(root)]
        return [str(root / rel) for rel in spec["files"]]
    file = root if root.is_file() else root / spec["file"]
    if batch["kind"] == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(file)
        return table.slice(spec["start"], spec["stop"] - spec["start"]).to_pandas()
    # Delimited: the header and the records' bytes, read as the input declares (the same reader
    # as Run.input_datasets[...].to_pandas_dataframe()).
    with open(file, "rb") as fh:
        head = fh.read(spec["header"])
        fh.seek(spec["offset"])
        body = fh.read(spec["length"])
    piece = scratch / "mini_batch.csv"
    piece.write_bytes(head + body)
    from amlrun.context import DatasetHandle

    local = DatasetHandle(**{**handle.__dict__, "path": str(piece)})
    return local.to_pandas_dataframe()


# --- the worker ----------------------------------------------------------------------------------
def _load_entry_script(path: Path) -> Any:
    import importlib.util

    # Its own module name: an entry script named like a module it imports (copy.py) must not
    # replace that module for the rest of the worker.
    name = f"_aml_entry_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the entry script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise AttributeError(f"entry script {path.name} has no run(mini_batch) function")
    return module


def _clear(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _worker(conn: Any, plan: dict[str, Any], handles: dict[str, Any], number: int) -> None:
    """A worker process: init() once, then run() for each mini-batch the runner sends."""
    work = Path(plan["results_dir"]).parent / f"worker-{number}-{os.getpid()}"
    output, scratch = work / "output", work / "scratch"
    _clear(output)
    _clear(scratch)
    _state.update(output_dir=str(output), working_dir=str(scratch))
    os.environ.update({k: str(v) for k, v in plan.get("environment_variables", {}).items()})
    entry = Path(plan["entry_script"])
    sys.argv = [str(entry), *plan["arguments"]]
    try:
        module = _load_entry_script(entry)
        init = getattr(module, "init", None)
        if callable(init):
            init()
    except BaseException:  # noqa: BLE001 - reported to the runner, which fails the step
        conn.send(("init_failed", traceback.format_exc()))
        return
    conn.send(("ready",))
    results = Path(plan["results_dir"])
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, batch = message
        partial = results / f"{index}.partial-{os.getpid()}"
        try:
            _clear(output)
            mini_batch = build_mini_batch(batch, handles[batch["input"]], scratch)
            rows, returned = rows_text(module.run(mini_batch))
            _clear(partial)
            (partial / "rows.txt").write_bytes(rows)
            shutil.move(str(output), str(partial / "files"))
            output.mkdir()
            (partial / "count.json").write_text(json.dumps({"items": batch["items"], "returned": returned}))
            final = results / str(index)
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            conn.send(("ok", index, returned))
        except BaseException:  # noqa: BLE001 - a failed try; the runner retries or counts it
            shutil.rmtree(partial, ignore_errors=True)
            conn.send(("error", index, traceback.format_exc()))


# --- the runner ----------------------------------------------------------------------------------
class _Slot:
    def __init__(self, ctx: Any, plan: dict[str, Any], handles: dict[str, Any], number: int):
        self.parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, plan, handles, number), daemon=True)
        self.proc.start()
        child.close()
        self.number = number
        self.ready = False
        self.busy: tuple[int, float] | None = None  # (mini-batch index, deadline)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.parent.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.parent.close()


class Runner:
    """Hands mini-batches to worker processes, retries failures, stops past the thresholds."""

    def __init__(self, plan: dict[str, Any], handles: dict[str, Any]):
        import multiprocessing

        self.plan, self.handles = plan, handles
        methods = multiprocessing.get_all_start_methods()
        self.ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.batches = {b["index"]: b for b in plan["batches"]}
        self.pending = deque(sorted(self.batches))
        self.tries = dict.fromkeys(self.batches, 0)
        self.done: dict[int, int] = {}
        self.failed: dict[int, str] = {}
        self.retries = 0
        self.failed_items = int(plan.get("failed_items_before", 0))
        self.aborted: str | None = None
        self.started = 0

    def log(self, message: str) -> None:
        print(f"[parallel run] {message}", flush=True)

    def _new_slot(self, number: int) -> _Slot:
        self.started += 1
        return _Slot(self.ctx, self.plan, self.handles, number)

    def run(self) -> dict[str, Any]:
        from multiprocessing.connection import wait

        count = max(1, min(int(self.plan["workers"]), len(self.pending)))
        slots = [self._new_slot(n) for n in range(count)]
        timeout = float(self.plan["run_invocation_timeout"])
        try:
            while (self.pending or any(s.busy for s in slots)) and self.aborted is None:
                for slot in slots:
                    if slot.ready and slot.busy is None and self.pending:
                        index = self.pending.popleft()
                        self.tries[index] += 1
                        slot.busy = (index, time.monotonic() + timeout)
                        slot.parent.send((index, self.batches[index]))
                busy = [s.busy[1] for s in slots if s.busy]
                wait_for = max(0.0, min(busy) - time.monotonic()) if busy else 1.0
                ready = wait([s.parent for s in slots], timeout=min(wait_for, 1.0))
                for i, slot in enumerate(slots):
                    if slot.parent in ready:
                        slots[i] = self._receive(slot)
                now = time.monotonic()
                for i, slot in enumerate(slots):
                    if slot.busy and slot.busy[1] <= now:
                        index = slot.busy[0]
                        slot.stop(kill=True)
                        self._attempt_failed(
                            index, f"run() exceeded run_invocation_timeout={timeout:g} s; the worker was replaced"
                        )
                        slots[i] = self._new_slot(slot.number)
        finally:
            for slot in slots:
                slot.stop(kill=self.aborted is not None)
        return {
            "succeeded": {str(k): v for k, v in sorted(self.done.items())},
            "failed": {str(k): v for k, v in sorted(self.failed.items())},
            "retries": self.retries,
            "aborted": self.aborted,
            "processes": self.started,
        }

    def _receive(self, slot: _Slot) -> _Slot:
        try:
            message = slot.parent.recv()
        except (EOFError, OSError):
            code = slot.proc.exitcode
            slot.stop(kill=True)
            if slot.busy:
                self._attempt_failed(slot.busy[0], f"the worker process died (exit code {code}); it was replaced")
            elif not slot.ready:
                self.aborted = f"a worker process died before init() finished (exit code {code})"
            return self._new_slot(slot.number) if self.aborted is None else slot
        kind = message[0]
        if kind == "ready":
            slot.ready = True
        elif kind == "init_failed":
            self.aborted = f"the entry script could not start (its import or init() failed):\n{message[1]}"
        elif kind == "ok":
            _, index, returned = message
            slot.busy = None
            self.done[index] = returned
            batch = self.batches[index]
            if returned < batch["items"]:
                self.log(f"mini-batch {index} ({batch['label']}): run() returned {returned} of {batch['items']} items")
                self._count_failure(batch["items"] - returned, 0)
        elif kind == "error":
            _, index, text = message
            slot.busy = None
            self._attempt_failed(index, text)
        return slot

    def _attempt_failed(self, index: int, error: str) -> None:
        batch = self.batches[index]
        tries, most = self.tries[index], int(self.plan["run_max_try"])
        last_line = error.strip().splitlines()[-1] if error.strip() else error
        if tries < most:
            self.retries += 1
            self.log(f"mini-batch {index} ({batch['label']}) failed (try {tries} of {most}): {last_line}; trying again")
            self.pending.append(index)
            return
        sys.stderr.write(f"mini-batch {index} ({batch['label']}) failed on every try ({tries}):\n{error}\n")
        self.failed[index] = error[-4000:]
        self._count_failure(batch["items"], 1)

    def _count_failure(self, items: int, batches: int) -> None:
        self.failed_items += items
        plan = self.plan
        problem = threshold_problem(
            self.failed_items,
            len(self.failed),
            int(plan["total_batches"]),
            plan.get("error_threshold"),
            plan.get("allowed_failed_count"),
            plan.get("allowed_failed_percent"),
        )
        if problem is not None and self.aborted is None:
            self.aborted = problem
            self.log(f"stopping: {problem}")


def main(argv: list[str]) -> None:
    """``parallel.py PLAN -- ARGS...``: compute the plan's mini-batches; write the summary."""
    plan_file, arguments = argv[0], argv[2:] if len(argv) > 1 and argv[1] == "--" else argv[1:]
    plan = json.loads(Path(plan_file).read_text())
    plan["arguments"] = arguments
    entry = Path(plan["entry_script"])
    # The entry script's folder, then the source directory, as a script step's sys.path; never
    # amlrun's own folder (its modules would shadow the user's, e.g. a 'context' module).
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(here)]
    for entry_path in reversed(list(dict.fromkeys([str(entry.parent), plan["source_directory"]]))):
        sys.path.insert(0, entry_path)
    from amlrun.context import Run

    handles = Run.get_context().input_datasets
    if any(b["kind"] != "files" for b in plan["batches"]):
        import pandas  # noqa: F401 - imported once here, so forked workers share it

    results = Path(plan["results_dir"])
    results.mkdir(parents=True, exist_ok=True)
    runner = Runner(plan, handles)
    runner.log(
        f"{len(plan['batches'])} of {plan['total_batches']} mini-batches to compute on "
        f"{min(plan['workers'], len(plan['batches']))} worker processes"
    )
    summary = runner.run()
    (results / SUMMARY).write_text(json.dumps(summary))
    runner.log(
        f"done: {len(summary['succeeded'])} succeeded, {len(summary['failed'])} failed, "
        f"{summary['retries']} retried" + (f"; stopped: {summary['aborted']}" if summary["aborted"] else "")
    )


if __name__ == "__main__":
    from amlrun import parallel as _module  # the importable module, not this __main__ copy

    _module.main(sys.argv[1:])
