"""Runs one step inside its Dagster op: fingerprint, decide, then reuse or run, publish, record.

The op built in ``pipeline/assets.py`` hands a ``StepExecution`` everything it needs; this module
never looks anything up by itself, so what a step may depend on is explicit. The parts live in
their own modules: the fingerprint (``reuse.fingerprint``, ``reuse.code``), the decision
(``reuse.decision``, pure), the attempt (``reuse.attempt``: scratch, publish, commit) and the
launcher of the step's compute target (``compute.launch``).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from aml_assets.compute import environments
from aml_assets.compute.cluster import CpuCluster
from aml_assets.compute.launch import (
    PARAM_ENV_PREFIX,
    StepLaunch,
    run_script_process,
    run_spark_in_process,
)
from aml_assets.compute.spark import SparkPool, is_speed_only
from aml_assets.data.content import StatCache
from aml_assets.data.datasets import DatasetInput, DatasetRef, InputMode, OutputDataset
from aml_assets.data.datastore import Datastore, default_work_dir
from aml_assets.data.references import reference_env
from aml_assets.errors import ComputeTargetError, StepFailedError
from aml_assets.pipeline.parameters import PipelineParameter
from aml_assets.pipeline.steps import Step, SynapseSparkStep
from aml_assets.reuse.attempt import Attempt
from aml_assets.reuse.code import CodeManifest, step_code
from aml_assets.reuse.decision import Decision, decide
from aml_assets.reuse.fingerprint import StepFingerprint
from aml_assets.reuse.ledger import StepLedger
from aml_assets.reuse.records import Commit, PublishedOutput, RunRecord
from aml_assets.reuse.verify import check_output


class StepNotStartedError(StepFailedError):
    """A step was not started because another step of its run had failed
    (``continue_on_step_failure=False``); nothing was published."""


@dataclass
class StepResult:
    """What a step produced (or reused), ready to be yielded as Dagster outputs."""

    refs: dict[str, DatasetRef]
    outputs: dict[str, PublishedOutput]
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
    #: Secret values of the datastores the step can reach: kept out of its process and output.
    secrets: list[str] = field(default_factory=list)
    #: False: the step is not started once a step of its run has failed (the pipeline's
    #: ``continue_on_step_failure``).
    continue_on_failure: bool = True
    #: The step's isolated environment, resolved once per execution (``resolved_environment``).
    _resolved: environments.ResolvedEnvironment | None = field(default=None, init=False, repr=False)

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

    def resolved_environment(self) -> environments.ResolvedEnvironment | None:
        """The step's isolated environment resolved to its lock (None: not isolated).

        Resolved once per execution; the lock is recorded on the workspace datastore, so every
        machine and run gets the same one until the request changes (or ``refresh=True``).
        Nothing is built here: a reused step never builds its environment.
        """
        declared = self.step.effective_environment()
        if not declared.isolated:
            return None
        if self._resolved is None:
            self._resolved = environments.resolve(
                declared, store=self.datastore, step=self.step.name, log=self.log
            )
        return self._resolved

    def environment(self) -> dict[str, Any]:
        """The interpreter and packages the script runs with; for Spark steps, the Spark
        version too. An isolated environment contributes its resolved lock: its Python, the
        lock's key, every package's version and its env_vars."""
        declared = self.step.effective_environment()
        resolved = self.resolved_environment()
        env: dict[str, Any]
        if resolved is not None:
            env = {
                "python": resolved.python_version,
                "lock": resolved.key,
                "packages": dict(resolved.packages),
                "env_vars": dict(resolved.env_vars),
            }
        else:
            env = {"python": platform.python_version()}
            if declared.python:
                env["python"] = _interpreter_version(declared.python)
            for package in declared.packages:
                env[f"package {package}"] = _package_version(package)
            if declared.env_vars:
                env["env_vars"] = dict(declared.env_vars)
        if self.step.kind == "spark":
            env["pyspark"] = _package_version("pyspark")
        return env

    def spark_conf(self) -> dict[str, str]:
        """The Spark settings that can change this step's result: the pool's, then the step's."""
        if not isinstance(self.compute, SparkPool) or not isinstance(self.step, SynapseSparkStep):
            return {}
        conf = dict(self.compute.result_conf())
        conf.update({k: v for k, v in self.step.spark_conf().items() if not is_speed_only(k)})
        return conf

    def settings(self) -> dict[str, Any]:
        """Result-affecting settings: the step's kind and script, how it reads and writes."""
        step = self.step
        settings: dict[str, Any] = {
            "kind": step.kind,
            "script": step.script,
            "outputs": {o.name: o.definition() for o in step.all_outputs()},
            # Everything that shapes what the step receives from each input: the dataset's
            # declaration (reader options, path, format) and how it is delivered.
            "inputs": {
                i.name: {"dataset": i.dataset.name, "mode": i.mode.value, **i.dataset.definition()}
                for i in step.all_inputs()
            },
        }
        if step.kind == "spark":
            settings["spark_conf"] = self.spark_conf()
        # Only when given, so a step without them keeps the fingerprint it always had.
        if step.version is not None:
            settings["version"] = step.version
        if params := step.params_settings():
            settings["params"] = params
        return settings

    def parameter_env(self) -> dict[str, str]:
        """The step's ``params`` as the environment variables its script reads
        (``AML_PARAMETER_<name>``), pipeline parameters resolved to this run's values."""
        return {
            f"{PARAM_ENV_PREFIX}{name}": str(
                self.parameter_values[v.name] if isinstance(v, PipelineParameter) else v
            )
            for name, v in self.step.param_values().items()
        }

    def fingerprint(self) -> tuple[StepFingerprint, list[str]]:
        """Everything that determines this step's result, and notes on how the code was found."""
        step = self.step
        code = self.code()
        fp = StepFingerprint(
            step=step.name,
            code=code.files,
            arguments=self.symbolic_arguments(),
            parameters={p.name: self.parameter_values[p.name] for p in step.parameters()},
            # Keyed by dataset, so a change reads "input titanic changed".
            inputs={
                i.dataset.name: self.input_refs[i.dataset.name].content_hash
                for i in step.all_inputs()
            },
            environment=self.environment(),
            settings=self.settings(),
        )
        # Not in it: the steps this one runs after (run_after). They pass it no data, so they
        # cannot change its result; a script that reads what another step left outside its
        # outputs should read that output as an input (then it is in ``inputs``).
        return fp, list(code.notes)

    def code(self) -> CodeManifest:
        """The step's code: the script's import closure, the source directory's other files and
        ``hash_paths`` (a CommandStep, whose command may run anything, counts every file)."""
        step = self.step
        return step_code(step.script, Path(step.source_directory), step.hash_paths, self.stat_cache)

    def script_label(self) -> str:
        """What failure messages call the step's code: its script, relative to the project."""
        return self.code_label(self.step.script)

    def code_label(self, path: str) -> str:
        """A code path as the user knows it: relative to the source directory's parent."""
        if path.startswith("/"):
            return path
        return f"{Path(self.step.source_directory).name}/{path}"

    # --- decide, then reuse or run -----------------------------------------------------------
    def decide(self, fp: StepFingerprint, ledger: StepLedger, previous: RunRecord | None) -> Decision:
        """Gather the facts from the ledger (checking saved outputs) and decide."""
        digest = fp.digest

        def check(commit: Commit) -> tuple[bool, list[str]]:
            present, problems = True, []
            for out in commit.outputs.values():
                ok, found = check_output(self.datastore, out, self.stat_cache)
                present, problems = present and ok, problems + found
            return present, problems

        return decide(
            fingerprint=digest,
            components=fp.components(),
            allow_reuse=self.step.allow_reuse,
            regenerate=self.regenerate,
            candidates=ledger.candidates(digest, check),
            previous=previous,
            code_label=self.code_label,
        )

    def execute(self) -> StepResult:
        """Reuse a committed result when nothing that determines it changed; else run."""
        step, log = self.step, self.log
        if not self.continue_on_failure:
            self._refuse_after_failure()
        fp, notes = self.fingerprint()
        digest, components = fp.digest, fp.components()
        for note in notes:
            log.warning(f"Step '{step.name}': {note}")
        ledger = StepLedger(self.datastore, step.name)
        previous = ledger.latest_record(exclude_run=self.run_id)
        decision = self.decide(fp, ledger, previous)
        for warning in decision.warnings:
            log.error(f"Step '{step.name}': {warning}")
        if decision.forget:
            ledger.forget(digest, decision.forget)
        record = RunRecord(
            run_id=self.run_id,
            step=step.name,
            fingerprint=digest,
            components=components,
            status="reused" if decision.reuse else "started",
            reasons=decision.reasons,
            reused_from_run=decision.commit.run_id if decision.commit else None,
            code_prefix=Path(step.source_directory).name if step.source_directory else "",
            notes=notes,
        )
        ledger.start_record(record, previous)
        if decision.commit is not None:
            log.info(
                f"Step '{step.name}' reused outputs of run {decision.commit.run_id} "
                f"(fingerprint {digest[:12]})"
            )
            return self._result(decision.commit, reused=True, reasons=[])
        log.info(f"Step '{step.name}' runs because {'; '.join(decision.reasons)}")
        try:
            commit = self._run_and_publish(ledger, digest, components)
        except BaseException as exc:
            try:
                ledger.finish_record(record, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            except Exception as record_error:  # noqa: BLE001 - never hide why the step failed
                log.warning(f"Step '{step.name}': could not record the failure: {record_error}")
            raise
        ledger.finish_record(record, "ran")
        return self._result(commit, reused=False, reasons=decision.reasons)

    def _run_context(self) -> dict[str, Any]:
        """What ``Run.get_context()`` tells a script of its pipeline run: ``tags`` (the run's
        own, not Dagster's or aml-assets' bookkeeping) and ``parent`` (the pipeline run)."""
        logs = {"std_log_output": self.step.std_log_output}
        context = self.dagster_context
        if context is None:
            return {"tags": {}, "parent": {"run_id": self.run_id}, **logs}
        tags = {
            k: v for k, v in context.run.tags.items()
            if not k.startswith(("dagster/", ".dagster/", "aml/", "dagster-"))
        }
        return {"tags": tags, "parent": {"run_id": self.run_id, "pipeline": context.job_name}, **logs}

    def _refuse_after_failure(self) -> None:
        """With ``continue_on_step_failure=False``: start no step once one of the run failed.

        Asked of the run's event log (not of an executor), so it holds however the run's steps
        are executed: one after another, in threads, or on other machines.
        """
        context = self.dagster_context
        if context is None:
            return
        from dagster import DagsterEventType

        records = context.instance.get_records_for_run(
            self.run_id, of_type=DagsterEventType.STEP_FAILURE, limit=1
        ).records
        if records:
            failed = records[0].event_log_entry.step_key or "?"
            raise StepNotStartedError(
                f"Step '{self.step.name}' was not started: step '{failed}' failed earlier in this "
                "run, and the pipeline stops at the first failure (continue_on_step_failure="
                "False). Nothing was published; set continue_on_step_failure=True to run the "
                "steps that do not depend on a failed one."
            )

    def _result(self, commit: Commit, reused: bool, reasons: list[str]) -> StepResult:
        input_versions = {
            name: {"content_hash": ref.content_hash, "version": ref.version, "uri": ref.uri}
            for name, ref in self.input_refs.items()
        }
        refs = {}
        for out in self.step.all_outputs():
            published = commit.outputs[out.name]
            refs[out.name] = DatasetRef(
                name=out.name,
                datastore=self.datastore_key,
                path=published.path,
                uri=self.datastore.uri(published.path),
                format=out.format,
                separator=out.separator,
                content_hash=published.content_hash,
                file_count=published.file_count,
                byte_count=published.byte_count,
                producer={
                    "run_id": commit.run_id,
                    "step": self.step.name,
                    "fingerprint": commit.fingerprint,
                    "stats": published.stats,
                },
                input_versions=input_versions,
                files=[asdict(f) for f in published.files],
            )
        return StepResult(
            refs=refs,
            outputs=dict(commit.outputs),
            fingerprint=commit.fingerprint,
            reused=reused,
            reused_from_run=commit.run_id if reused else None,
            reasons=reasons,
            metrics=dict(commit.metrics),
        )

    def _interpreter(self) -> tuple[str | None, bool]:
        """The interpreter the step runs with (None: this process's), and whether it is an
        isolated environment's, built now if it is not yet (only a step that runs builds).

        A Spark step's script runs in this process: its environment is its executors'
        (``StepLaunch.spark_python``), checked against this process first.
        """
        declared = self.step.effective_environment()
        resolved = self.resolved_environment()
        if resolved is None:
            return declared.python, False
        if self.step.kind == "spark":
            self._check_spark_driver(declared, resolved)
        return str(environments.ensure_built(resolved, step=self.step.name, log=self.log)), True

    def _check_spark_driver(
        self, declared: environments.Environment, resolved: environments.ResolvedEnvironment
    ) -> None:
        """Refuse a Spark step whose driver (this process) cannot match its environment: the
        same Python minor version (PySpark refuses workers of another), and the packages the
        step asks for at the same versions (the script imports them here)."""
        problems = []
        if resolved.python_version.split(".")[:2] != platform.python_version().split(".")[:2]:
            problems.append(
                f"python {resolved.python_version} in the environment, {platform.python_version()} "
                "in the Dagster process (PySpark needs the same minor version on both sides)"
            )
        for name in _requested_names(declared):
            wanted, here = resolved.packages.get(name), _package_version(name)
            if wanted is not None and wanted != here:
                problems.append(f"{name} {wanted} in the environment, {here} in the Dagster process")
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise ComputeTargetError(
                f"Spark step '{self.step.name}' runs its script in the Dagster process (in-process "
                f"Spark), which cannot switch interpreters; only its executors use the step's "
                f"environment, and the two differ:\n{lines}\nFix: install those versions in the "
                "environment that runs Dagster (the driver side is yours to install), or move "
                "the code that needs them into a PythonScriptStep."
            )

    def _run_and_publish(self, ledger: StepLedger, digest: str, components: dict[str, Any]) -> Commit:
        step = self.step
        # Before anything else: a failed build fails the step before its script starts, with
        # nothing staged or published.
        python, isolated = self._interpreter()
        workdir = Path(tempfile.mkdtemp(prefix=f"aml-{step.name}-inputs-", dir=default_work_dir()))
        try:
            with Attempt(
                self.datastore, ledger, self.run_id, digest, step.all_outputs(), self.stat_cache
            ) as attempt:
                handles, readonly = self._deliver_inputs(workdir)
                launch = StepLaunch(
                    step=step.name,
                    script=Path(step.script_path),
                    script_label=self.script_label(),
                    source_directory=Path(step.source_directory),
                    arguments=self._resolve_arguments(handles, attempt.out_dirs),
                    context={
                        "step": step.name,
                        "run_id": self.run_id,
                        "inputs": handles,
                        "outputs": {k: str(v) for k, v in attempt.out_dirs.items()},
                        "parameters": {
                            p.name: self.parameter_values[p.name] for p in step.parameters()
                        },
                        **self._run_context(),
                    },
                    workdir=workdir,
                    log=self.log,
                    timeout_seconds=step.timeout_seconds or self.compute.default_timeout_seconds,
                    dagster_context=self.dagster_context,
                    python=None if step.kind == "spark" else python,
                    isolated=isolated and step.kind != "spark",
                    env_vars=dict(step.effective_environment().env_vars),
                    parameter_env={
                        **self.parameter_env(),
                        # v1's AZUREML_DATAREFERENCE_<name> (DataReference, PipelineData)
                        **reference_env(step.all_inputs(), step.all_outputs(), handles, attempt.out_dirs),
                    },
                    spark_python=python if isolated and step.kind == "spark" else None,
                    spark_conf=step.spark_overrides() if isinstance(step, SynapseSparkStep) else {},
                    readonly_paths=readonly,
                    secrets=self.secrets,
                    datastore_credentials=step.datastore_credentials,
                )
                metrics = self.launch(launch, attempt.out_dirs, components)
                return attempt.publish(components, metrics)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def launch(self, launch: StepLaunch, out_dirs: dict[str, Path], components: dict[str, Any]) -> dict[str, Any]:
        """Run the step's code on its compute target (outputs into ``out_dirs``); its metrics.
        A step kind that runs otherwise (``ParallelRunStep``: many worker processes) overrides it."""
        if isinstance(self.compute, SparkPool):
            return run_spark_in_process(self.compute, launch)
        return run_script_process(self.compute, launch)

    # --- inputs and arguments -----------------------------------------------------------------
    def _deliver_inputs(self, workdir: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Local paths (or URIs) of the inputs, and which of them are saved data read in place."""
        handles, readonly = {}, []
        for inp in self.step.all_inputs():
            ref = self.input_refs[inp.dataset.name]
            store = self.input_stores[ref.datastore]
            local = store.local_path(ref.path)
            if inp.mode is InputMode.DOWNLOAD:
                path = str(store.download(ref.path, workdir / inp.name))
            elif inp.mode is InputMode.DIRECT and (local is not None or self.step.kind != "spark"):
                path = str(local) if local is not None else ref.uri
                if local is not None:
                    readonly.append(path)
            elif local is not None:  # mount / tabular on a local store: read in place
                path = str(local)
                readonly.append(path)
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
                "reader": dict(ref.reader),
            }
        return handles, readonly

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


def _requested_names(declared: environments.Environment) -> list[str]:
    """The projects a step's environment asks for by name (its pip= entries and requirements
    file lines), normalized like the resolved lock's."""
    from packaging.requirements import InvalidRequirement, Requirement

    names = []
    for line in declared.requirements_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            names.append(environments.normalize_name(Requirement(line).name))
        except InvalidRequirement:
            continue
    return names
