"""Runs one step inside its Dagster op: fingerprint, reuse or run, publish, commit.

The op built in ``pipeline.py`` hands a ``StepExecution`` everything it needs; this module never
looks anything up by itself, so what a step may depend on is explicit.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import platform
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from aml_assets.compute.cluster import CpuCluster
from aml_assets.compute.spark import SparkPool
from aml_assets.data.content import StatCache, data_manifest, manifest_digest
from aml_assets.data.datasets import (
    DatasetInput,
    DatasetRef,
    InputMode,
    OutputDataset,
    tabular_stats,
)
from aml_assets.data.datastore import Datastore
from aml_assets.errors import StepFailedError
from aml_assets.pipeline.parameters import PipelineParameter
from aml_assets.pipeline.steps import Step
from aml_assets.reuse.fingerprint import StepFingerprint, code_manifest, explain_difference
from aml_assets.reuse.ledger import Commit, StepLedger
from amlrun.context import CONTEXT_ENV, Run, in_process_run

_STDERR_TAIL_LINES = 40


@dataclass
class StepResult:
    """What a step produced (or reused), ready to be yielded as Dagster outputs."""

    refs: dict[str, DatasetRef]
    outputs: dict[str, dict[str, Any]]
    fingerprint: str
    reused: bool
    reused_from_run: str | None
    reasons: list[str]
    metrics: dict[str, Any]


@dataclass
class StepExecution:
    """One execution of a step in one run."""

    step: Step
    run_id: str
    log: Any
    datastore: Datastore
    datastore_key: str
    input_refs: dict[str, DatasetRef]
    input_stores: dict[str, Datastore]
    parameter_values: dict[str, Any]
    regenerate: bool
    compute: CpuCluster | SparkPool
    stat_cache: StatCache
    dagster_context: Any = None
    sibling_scripts: frozenset[str] = frozenset()
    _metrics: dict[str, Any] = field(default_factory=dict)

    # --- fingerprint -----------------------------------------------------------------------
    def symbolic_arguments(self) -> list[str]:
        """The arguments with placeholders named, not resolved (temp paths never hash)."""
        out = []
        for arg in self.step.arguments:
            if isinstance(arg, DatasetInput):
                out.append(f"{{input:{arg.name}:{arg.dataset.name}:{arg.mode.value}}}")
            elif isinstance(arg, OutputDataset):
                out.append(f"{{output:{arg.name}:{arg.format}}}")
            elif isinstance(arg, PipelineParameter):
                out.append(f"{{parameter:{arg.name}}}")
            else:
                out.append(f"{type(arg).__name__}:{arg}")
        return out

    def environment(self) -> dict[str, Any]:
        """Interpreter and declared packages; for Spark steps, the Spark version too."""
        env: dict[str, Any] = {"python": platform.python_version()}
        if self.step.environment.python:
            env["python"] = _interpreter_version(self.step.environment.python)
        for package in self.step.environment.packages:
            env[f"package {package}"] = _package_version(package)
        if self.step.kind == "spark":
            env["pyspark"] = _package_version("pyspark")
        return env

    def fingerprint(self) -> StepFingerprint:
        """Everything that determines this step's result."""
        step = self.step
        return StepFingerprint(
            step=step.name,
            code=code_manifest(
                Path(step.source_directory), step.hash_paths, self.stat_cache, self.sibling_scripts
            ),
            arguments=self.symbolic_arguments(),
            parameters={p.name: self.parameter_values[p.name] for p in step.parameters()},
            # Keyed by dataset, so a change reads "input titanic changed"; how each input is
            # delivered (name, mode) is part of the settings below.
            inputs={
                i.dataset.name: self.input_refs[i.dataset.name].content_hash
                for i in step.all_inputs()
            },
            environment=self.environment(),
            settings={
                **step.settings(),
                "outputs": {o.name: o.format for o in step.all_outputs()},
                "inputs": {i.name: f"{i.dataset.name}:{i.mode.value}" for i in step.all_inputs()},
            },
        )

    def code_label(self, path: str) -> str:
        """A code path as the user knows it: relative to the source directory's parent."""
        if path.startswith("/"):
            return path
        return f"{Path(self.step.source_directory).name}/{path}"

    # --- decide, then reuse or run -----------------------------------------------------------
    def execute(self) -> StepResult:
        """Reuse a committed result when nothing that determines it changed; else run."""
        step, log = self.step, self.log
        fp = self.fingerprint()
        digest = fp.digest
        components = fp.components()
        ledger = StepLedger(self.datastore, step.name)
        previous = ledger.latest_record(exclude_run=self.run_id)

        commit, stale = ledger.find(digest)
        if stale:
            log.warning(
                f"Step '{step.name}': the published outputs of run(s) "
                f"{', '.join(c.run_id for c in stale)} were deleted; they will not be reused."
            )
            ledger.forget(digest, stale)

        if commit is not None and step.allow_reuse and not self.regenerate:
            log.info(f"Step '{step.name}' reused outputs of run {commit.run_id} (fingerprint {digest[:12]})")
            result = self._result_from_commit(commit, reused=True, reasons=[])
        else:
            if not step.allow_reuse:
                reasons = ["allow_reuse=False"]
            elif self.regenerate:
                reasons = ["regenerate_outputs was requested"]
            elif stale and previous and previous.get("fingerprint") == digest:
                reasons = [f"its published outputs (run {stale[0].run_id}) were deleted; recomputing"]
            else:
                reasons = explain_difference(
                    previous.get("components") if previous else None, components, self.code_label
                ) or [f"no published outputs exist for fingerprint {digest[:12]}"]
            log.info(f"Step '{step.name}' runs because {'; '.join(reasons)}")
            commit = self._run_and_publish(ledger, digest, components)
            result = self._result_from_commit(commit, reused=False, reasons=reasons)

        ledger.record_run(
            self.run_id,
            {
                "step": step.name,
                "fingerprint": digest,
                "components": components,
                "reused": result.reused,
                "reused_from_run": result.reused_from_run,
                "reasons": result.reasons,
                "code_prefix": Path(step.source_directory).name,
                "created": time.time(),
            },
        )
        return result

    def _result_from_commit(self, commit: Commit, reused: bool, reasons: list[str]) -> StepResult:
        refs = {}
        input_versions = {
            name: {"content_hash": ref.content_hash, "version": ref.version, "uri": ref.uri}
            for name, ref in self.input_refs.items()
        }
        for out in self.step.all_outputs():
            published = commit.outputs[out.name]
            refs[out.name] = DatasetRef(
                name=out.name,
                datastore=self.datastore_key,
                path=published["path"],
                uri=self.datastore.uri(published["path"]),
                format=out.format,
                separator=out.separator,
                content_hash=published["content_hash"],
                file_count=published["file_count"],
                byte_count=published["byte_count"],
                producer={
                    "run_id": commit.run_id,
                    "step": self.step.name,
                    "fingerprint": commit.fingerprint,
                    "stats": published.get("stats"),
                },
                input_versions=input_versions,
            )
        return StepResult(
            refs=refs,
            outputs=commit.outputs,
            fingerprint=commit.fingerprint,
            reused=reused,
            reused_from_run=commit.run_id if reused else None,
            reasons=reasons,
            metrics=dict(commit.metrics),
        )

    def _run_and_publish(self, ledger: StepLedger, digest: str, components: dict[str, Any]) -> Commit:
        step = self.step
        attempt = f"{self.run_id[:8]}-{uuid.uuid4().hex[:8]}"
        scratch = self.datastore.scratch_dir(f"{step.name}-{attempt}")
        workdir = Path(tempfile.mkdtemp(prefix=f"aml-{step.name}-inputs-"))
        try:
            out_dirs = {o.name: scratch / o.name for o in step.all_outputs()}
            for d in out_dirs.values():
                d.mkdir(parents=True)
            handles = self._deliver_inputs(workdir)
            args = self._resolve_arguments(handles, out_dirs)
            context = {
                "step": step.name,
                "run_id": self.run_id,
                "inputs": handles,
                "outputs": {k: str(v) for k, v in out_dirs.items()},
                "parameters": {p.name: self.parameter_values[p.name] for p in step.parameters()},
            }
            if step.kind == "spark":
                self._run_spark(args, context)
            else:
                self._run_process(args, context, workdir)
            outputs = {}
            for out in step.all_outputs():
                local = out_dirs[out.name]
                entries = data_manifest(local)
                if not entries:
                    raise StepFailedError(
                        f"Step '{step.name}' finished but wrote nothing to output '{out.name}' "
                        f"({local}). Write the output into the folder passed as its argument."
                    )
                stats = (
                    tabular_stats(local, out.format, out.separator, out.name)
                    if out.format in ("csv", "parquet")
                    else None
                )
                outputs[out.name] = {
                    "path": ledger.output_path(digest, attempt, out.name),
                    "content_hash": manifest_digest(entries),
                    "file_count": len(entries),
                    "byte_count": sum(e.size for e in entries),
                    "stats": stats,
                }
            # Publish every output, then commit: a reader only ever follows a commit.
            for out in step.all_outputs():
                self.datastore.publish_dir(out_dirs[out.name], outputs[out.name]["path"])
            commit = Commit(
                fingerprint=digest,
                run_id=self.run_id,
                outputs=outputs,
                components=components,
                created=time.time(),
                metrics=dict(self._metrics),
            )
            ledger.commit(commit, attempt)
            return commit
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(workdir, ignore_errors=True)

    # --- inputs and arguments -----------------------------------------------------------------
    def _deliver_inputs(self, workdir: Path) -> dict[str, dict[str, Any]]:
        handles = {}
        for inp in self.step.all_inputs():
            ref = self.input_refs[inp.dataset.name]
            store = self.input_stores[ref.datastore]
            local = store.local_path(ref.path)
            if inp.mode is InputMode.DOWNLOAD:
                path = str(store.download(ref.path, workdir / inp.name))
            elif inp.mode is InputMode.DIRECT and (local is not None or self.step.kind != "spark"):
                path = str(local) if local is not None else ref.uri
            elif local is not None:  # mount / tabular on a local store: read in place
                path = str(local)
            else:  # remote store: stage a local copy (Spark and plain readers can't read it)
                self.log.info(f"Staging input '{inp.name}' from {ref.uri} to local disk")
                path = str(store.download(ref.path, workdir / inp.name))
            handles[inp.name] = {
                "name": inp.name,
                "path": path,
                "uri": ref.uri,
                "format": ref.format,
                "mode": inp.mode.value,
                "separator": ref.separator,
                "dataset": ref.name,
                "version": ref.version,
            }
        return handles

    def _resolve_arguments(self, handles: dict[str, dict[str, Any]], out_dirs: dict[str, Path]) -> list[str]:
        args = []
        for arg in self.step.arguments:
            if isinstance(arg, DatasetInput):
                args.append(handles[arg.name]["path"])
            elif isinstance(arg, OutputDataset):
                args.append(str(out_dirs[arg.name]))
            elif isinstance(arg, PipelineParameter):
                args.append(str(self.parameter_values[arg.name]))
            else:
                args.append(str(arg))
        return args

    # --- running scripts ------------------------------------------------------------------------
    def _run_process(self, args: list[str], context: dict[str, Any], workdir: Path) -> None:
        from dagster import (
            PipesTempFileContextInjector,
            PipesTempFileMessageReader,
            open_pipes_session,
        )

        step = self.step
        assert isinstance(self.compute, CpuCluster)
        ctx_file = workdir / "run-context.json"
        ctx_file.write_text(json.dumps(context))
        python = step.environment.python or sys.executable
        command = [python, "-m", "amlrun.launch", str(step.script_path), *args]
        with open_pipes_session(
            context=self.dagster_context,
            context_injector=PipesTempFileContextInjector(),
            message_reader=PipesTempFileMessageReader(),
        ) as session:
            env = {
                **os.environ,
                **session.get_bootstrap_env_vars(),
                CONTEXT_ENV: str(ctx_file),
                "PYTHONUNBUFFERED": "1",
                # The launcher puts the script's folder on sys.path itself, after its own imports,
                # so a script named like a stdlib module (copy.py) cannot break the launcher.
                "PYTHONSAFEPATH": "1",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (_amlrun_root(), os.environ.get("PYTHONPATH")) if p
                ),
            }
            proc = self.compute.start(command, env, Path(step.source_directory))
            code, stderr_tail = _wait_streaming(proc)
        for message in session.get_custom_messages():
            if isinstance(message, dict) and "aml_metric" in message:
                name, value = message["aml_metric"]
                self._metrics[name] = value
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            tail = "\n".join(stderr_tail) or "(no output on stderr)"
            raise StepFailedError(
                f"Step '{step.name}' failed: script {self.code_label(step.script)} {how}. "
                f"Nothing was published.\n--- last lines of stderr ---\n{tail}"
            )

    def _run_spark(self, args: list[str], context: dict[str, Any]) -> None:
        step = self.step
        assert isinstance(self.compute, SparkPool)
        self.compute.session(self.log, step.spark_overrides())  # type: ignore[attr-defined]
        run = Run.from_dict(context, sink=self._metrics.__setitem__)
        source = str(step.source_directory)
        before = set(sys.modules)
        saved_argv, saved_path = sys.argv, list(sys.path)
        sys.argv = [str(step.script_path), *args]
        sys.path.insert(0, source)
        try:
            with in_process_run(run), self.compute.script_environment():
                runpy.run_path(str(step.script_path), run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise StepFailedError(
                    f"Step '{step.name}' failed: script {self.code_label(step.script)} exited with "
                    f"code {exc.code}. Nothing was published."
                ) from exc
        except Exception as exc:
            raise StepFailedError(
                f"Step '{step.name}' failed: script {self.code_label(step.script)} raised "
                f"{type(exc).__name__}: {exc}. Nothing was published."
            ) from exc
        finally:
            sys.argv = saved_argv
            sys.path[:] = saved_path
            # Helper modules of the source directory must be re-imported next time, or an edit
            # to them would be hashed (and rerun) but not executed.
            for name in set(sys.modules) - before:
                module_file = getattr(sys.modules[name], "__file__", None) or ""
                if module_file.startswith(source):
                    del sys.modules[name]


def _amlrun_root() -> str:
    import amlrun

    return str(Path(amlrun.__file__).resolve().parent.parent)


@functools.lru_cache(maxsize=256)
def _package_version(package: str) -> str:
    # Installed versions do not change under a running step process; reading the metadata costs
    # ~1.5 ms a package, on every step of every run, reused or not.
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def _interpreter_version(python: str) -> str:
    resolved = shutil.which(python) or python
    st = os.stat(resolved)
    return _interpreter_version_cached(resolved, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _interpreter_version_cached(python: str, mtime_ns: int) -> str:
    out = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _pump(stream, sink, tail: collections.deque | None) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        sink.write(line)
        sink.flush()
        if tail is not None:
            tail.append(line.rstrip("\n"))
    stream.close()


def _wait_streaming(proc: subprocess.Popen[bytes]) -> tuple[int, list[str]]:
    """Forward a process's stdout/stderr to ours (Dagster captures them per step); wait for it."""
    tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, sys.stdout, None), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, tail), daemon=True),
    ]
    for t in pumps:
        t.start()
    try:
        code = proc.wait()
    except BaseException:
        # The run was terminated: take the script and everything it started down with it.
        _kill_group(proc)
        raise
    for t in pumps:
        t.join()
    return code, list(tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
