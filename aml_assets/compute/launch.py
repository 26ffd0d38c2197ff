"""Launchers: how a step's script runs on its compute target, and the metrics it logged.

One launcher per kind of target: a script process on a CPU cluster (under Dagster Pipes), or the
script in this process against a Spark pool's session. A launcher knows nothing of reuse: it gets
resolved arguments and paths, runs the script within its timeout, and returns its metrics or
raises ``StepFailedError`` (``StepTimeoutError``) with what the user needs to fix it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import PipesTempFileContextInjector, PipesTempFileMessageReader, open_pipes_session

from aml_assets.compute import isolation
from aml_assets.compute.cluster import CpuCluster
from aml_assets.compute.secrets import (
    Redactor,
    collect_secrets,
    full_environ,
    redacted_stdio,
    scrubbed_environ,
    step_env,
)
from aml_assets.compute.spark import SparkPool
from aml_assets.compute.warm_pool import CONNECT_ENV
from aml_assets.errors import (
    ComputeTargetError,
    StepFailedError,
    StepInterruptedError,
    StepTimeoutError,
)
from amlrun.context import CONTEXT_ENV, Run, in_process_run

_STDERR_TAIL_LINES = 40
#: The Spark Connect variables as this process started with them (see ``run_script_process``).
_CONNECT_ENV_AT_START = {name: os.environ.get(name) for name in CONNECT_ENV}

# --- the steps running in this process, by run: so a run that is interrupted can stop them ---
# With the threaded executor several steps of a run are in flight at once in worker threads; an
# interrupt reaches the orchestrating thread only, which stops them through this registry.
_running_lock = threading.Lock()
_running: dict[str, dict[int, Any]] = {}
#: Runs told to stop: a step of theirs that had not started yet (waiting for a slot or a lock)
#: must not start afterwards.
_stopped_runs: set[str] = set()


@contextlib.contextmanager
def _registered(run_id: str, stop: Any):
    """While a step runs: ``stop()`` stops it (called from another thread)."""
    token = id(stop)
    with _running_lock:
        if run_id in _stopped_runs:
            raise StepInterruptedError(
                "The run was interrupted before this step started; nothing was published."
            )
        _running.setdefault(run_id, {})[token] = stop
    try:
        yield
    finally:
        with _running_lock:
            steps = _running.get(run_id, {})
            steps.pop(token, None)
            if not steps:
                _running.pop(run_id, None)


def stop_running_steps(run_id: str) -> int:
    """Stop every step of ``run_id`` running in this process (each in its own thread, so one
    slow group kill does not delay the others); returns how many were asked to stop."""
    with _running_lock:
        _stopped_runs.add(run_id)
        stops = list(_running.get(run_id, {}).values())
    for stop in stops:
        threading.Thread(target=stop, name="aml-stop-step", daemon=True).start()
    return len(stops)


@dataclass
class StepLaunch:
    """Everything a launcher needs to run one step's script once."""

    step: str
    script: Path
    script_label: str
    source_directory: Path
    arguments: list[str]
    context: dict[str, Any]
    workdir: Path
    log: Any
    timeout_seconds: float | None = None
    dagster_context: Any = None
    #: The interpreter that runs the script (None: this process's).
    python: str | None = None
    #: Whether ``python`` is an isolated environment's: the script then sees only that
    #: environment's packages, plus ``amlrun`` (no inherited ``PYTHONPATH``).
    isolated: bool = False
    #: The environment's ``env_vars``, set in the script's environment (never over aml-assets'
    #: own control variables, see ``reserved_env_var``).
    env_vars: dict[str, str] = field(default_factory=dict)
    #: For a Spark step in an isolated environment: the Python its executors' workers run
    #: (``SparkContext.pythonExec``, i.e. ``spark.pyspark.python``), on a local pool only.
    spark_python: str | None = None
    spark_conf: dict[str, str] = field(default_factory=dict)
    #: Saved data delivered in place (mount/direct inputs): the script must not be able to change it.
    readonly_paths: list[str] = field(default_factory=list)
    #: Secret values the step's datastores hold: kept out of its environment, redacted from its
    #: output (``secrets.collect_secrets`` of the datastores the step can reach).
    secrets: list[str] = field(default_factory=lambda: collect_secrets([]))
    #: Whether the script may see datastore credentials in its environment (the step's setting).
    datastore_credentials: bool = False
    #: The step's ``params`` as ``AML_PARAMETER_<name>`` variables (set after the environment's
    #: own; any such variable this process inherited is not passed on).
    parameter_env: dict[str, str] = field(default_factory=dict)

    def redactor(self) -> Redactor:
        """Redacts this step's secrets (and key-like assignments) from text."""
        return Redactor(self.secrets)

    def run_id(self) -> str:
        return str(self.context.get("run_id", ""))

    def interrupted_error(self) -> StepInterruptedError:
        """The error of a step stopped because its run was interrupted."""
        return StepInterruptedError(
            f"Step '{self.step}' was stopped because its run was interrupted; nothing was published."
        )

    def timeout_error(self) -> StepTimeoutError:
        """The error of a step stopped at its timeout."""
        return StepTimeoutError(
            f"Step '{self.step}' exceeded its {self.timeout_seconds:g} s timeout and was stopped; "
            "nothing was published. If it needs longer, raise timeout_seconds on the step (or "
            "default_timeout_seconds on its compute target)."
        )

    def failure(self, how: str, detail: str = "") -> StepFailedError:
        """The error of a script that failed (with the step's secrets redacted)."""
        return StepFailedError(
            self.redactor()(
                f"Step '{self.step}' failed: script {self.script_label} {how}. Nothing was "
                "published." + detail
            )
        )


def amlrun_root() -> str:
    """The folder holding the ``amlrun`` package, for a script process's PYTHONPATH."""
    import amlrun

    return str(Path(amlrun.__file__).resolve().parent.parent)


def launcher_path() -> str:
    """The script-process launcher (``amlrun/launch.py``)."""
    return str(Path(amlrun_root()) / "amlrun" / "launch.py")


#: Variables aml-assets sets for a step's script itself: an environment's ``env_vars`` never
#: override them (a pipeline's validation refuses them, and the launcher sets them last).
_RESERVED_ENV_VARS = frozenset(
    {
        "PYTHONPATH",
        "PYTHONSAFEPATH",
        "PYTHONUNBUFFERED",
        "PYTHONHOME",
        "PYTHONNOUSERSITE",
        "VIRTUAL_ENV",
        "PYSPARK_PYTHON",
        "PYSPARK_DRIVER_PYTHON",
    }
)
_RESERVED_ENV_PREFIXES = ("AML_", "DAGSTER_PIPES_")
#: Prefix of the variables a step's ``params`` are delivered in (Azure's ``AML_PARAMETER_``).
PARAM_ENV_PREFIX = "AML_PARAMETER_"


def reserved_env_var(name: str) -> bool:
    """Whether ``name`` is one of aml-assets' control variables (``AML_*``, the Pipes
    bootstrap, the interpreter's search path), which an environment's env_vars cannot set."""
    return name in _RESERVED_ENV_VARS or name.startswith(_RESERVED_ENV_PREFIXES) or name == CONTEXT_ENV


def _user_env_vars(launch: StepLaunch) -> dict[str, str]:
    """The environment's ``env_vars`` that are not control variables (those are skipped)."""
    return {k: str(v) for k, v in launch.env_vars.items() if not reserved_env_var(k)}


def _runtime_path(workdir: Path) -> str:
    """A folder holding only ``amlrun`` (and ``aml_assets``, for its read-only view of the
    inputs), for an isolated environment's ``PYTHONPATH``: putting the folder that holds
    ``amlrun`` itself there could expose every package of this process's environment (an
    installed, non-editable aml-assets lives in site-packages)."""
    import aml_assets

    runtime = workdir / "amlrun-path"
    runtime.mkdir(exist_ok=True)
    packages = {
        "amlrun": Path(amlrun_root()) / "amlrun",
        "aml_assets": Path(aml_assets.__file__).resolve().parent,
    }
    for name, package in packages.items():
        link = runtime / name
        if not link.exists():
            link.symlink_to(package, target_is_directory=True)
    return str(runtime)


def _interpreter_env(launch: StepLaunch) -> dict[str, str]:
    """``PYTHONPATH`` (and, in an isolated environment, ``VIRTUAL_ENV`` and ``PATH``) for the
    script process: it imports ``amlrun``; in an isolated environment, nothing else of ours."""
    if not launch.isolated or launch.python is None:
        return {"PYTHONPATH": os.pathsep.join(p for p in (amlrun_root(), os.environ.get("PYTHONPATH")) if p)}
    bin_dir = Path(launch.python).parent
    path = launch.env_vars.get("PATH") or full_environ().get("PATH", os.defpath)
    return {
        "PYTHONPATH": _runtime_path(launch.workdir),
        # Tools the script starts (python, pip, a console script) are the environment's.
        "VIRTUAL_ENV": str(bin_dir.parent),
        "PATH": os.pathsep.join([str(bin_dir), path]),
        "PYTHONNOUSERSITE": "1",
    }


def run_script_process(cluster: CpuCluster, launch: StepLaunch) -> dict[str, Any]:
    """Run the script as a process on ``cluster`` under Dagster Pipes; returns its metrics.

    The process gets no datastore credential (unless the step asks for them), sees the saved
    data it reads in place read-only, and everything it prints or reports is redacted.
    """
    redact = launch.redactor()
    launch, protect_env = _protect_inputs(launch)
    ctx_file = launch.workdir / "run-context.json"
    ctx_file.write_text(json.dumps(launch.context))
    python = launch.python or sys.executable
    # The launcher is run by path with -S, not with -m: its supervisor forks before site-packages
    # and the amlrun package are set up, so the fork copies (almost) nothing.
    command = [python, "-S", launcher_path(), str(launch.script), *launch.arguments]
    metrics: dict[str, Any] = {}
    with open_pipes_session(
        context=launch.dagster_context,
        context_injector=PipesTempFileContextInjector(),
        message_reader=_RedactingMessageReader(redact),
    ) as session:
        env = {
            # A step sees its own params only, never ones this process was started with.
            **{k: v for k, v in full_environ().items() if not k.startswith(PARAM_ENV_PREFIX)},
            # The environment's variables, then ours: they never override a control variable.
            **_user_env_vars(launch),
            **launch.parameter_env,
            **session.get_bootstrap_env_vars(),
            CONTEXT_ENV: str(ctx_file),
            "PYTHONUNBUFFERED": "1",
            # The launcher puts the script's folder (then the source directory) on sys.path
            # itself, after its own imports, so a script named like a stdlib module (copy.py)
            # cannot break the launcher.
            "PYTHONSAFEPATH": "1",
            **_interpreter_env(launch),
            "AML_SOURCE_DIRECTORY": str(launch.source_directory),
        }
        env = {**step_env(env, launch.secrets, launch.datastore_credentials), **protect_env}
        # Spark Connect variables an in-process Spark step (another thread) has set for its
        # script only (a warm pool's URL carries its token): the process gets the user's own.
        for name, value in _CONNECT_ENV_AT_START.items():
            env.pop(name, None)
            if value is not None:
                env[name] = value
        interrupted, started = threading.Event(), threading.Event()
        procs: list[subprocess.Popen[bytes]] = []

        def stop() -> None:
            interrupted.set()
            started.wait()  # a stop between registering and starting waits for the start
            for proc in procs:
                kill_group(proc)

        with _registered(launch.run_id(), stop):
            try:
                procs.append(cluster.start(command, env, launch.source_directory))
            finally:
                started.set()
            with step_output_logs(launch) as copies:
                code, stderr_tail = wait_streaming(procs[0], launch.timeout_seconds, redact, copies)
    for message in session.get_custom_messages():
        if isinstance(message, dict) and "aml_metric" in message:
            name, value = message["aml_metric"]
            metrics[redact(str(name))] = redact.value(value)
    if interrupted.is_set():
        raise launch.interrupted_error()
    if code is None:
        raise launch.timeout_error()
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = "\n".join(stderr_tail) or "(no output on stderr)"
        raise launch.failure(how, f"\n--- last lines of stderr ---\n{tail}")
    return metrics


def _protect_inputs(launch: StepLaunch) -> tuple[StepLaunch, dict[str, str]]:
    """Keep the saved data a script process reads in place from being changed by it.

    Where the process can get a read-only view (a mount namespace), returns the environment that
    asks the launcher for it. Otherwise a root process (which permission bits do not stop) gets
    private copies, swapped into its arguments and run context; a non-root one is refused writes
    by the read-only permission bits of published data.
    """
    paths = [p for p in dict.fromkeys(launch.readonly_paths) if os.path.exists(p)]
    if not paths:
        return launch, {}
    if isolation.can_isolate():
        return launch, {isolation.READONLY_ENV: json.dumps(paths)}
    if not isolation.needs_copies():
        return launch, {}
    copies = isolation.private_copies(paths, launch.workdir / "readonly-copies")
    if launch.log is not None:
        launch.log.info(
            f"Step '{launch.step}': saved inputs read in place are given as private copies "
            "(this process cannot give the script a read-only view of them)."
        )
    context = json.loads(json.dumps(launch.context))
    for handle in context.get("inputs", {}).values():
        if isinstance(handle, dict) and handle.get("path") in copies:
            handle["path"] = copies[handle["path"]]
    arguments = [copies.get(arg, arg) for arg in launch.arguments]
    return dataclasses.replace(launch, arguments=arguments, context=context, readonly_paths=[]), {}


class _RedactingMessageReader(PipesTempFileMessageReader):
    """A Pipes message reader (temp file) that redacts every message before Dagster sees it:
    logs, metrics, materialization metadata and reported exceptions alike."""

    def __init__(self, redact: Redactor):
        super().__init__()
        self._redact = redact

    @contextlib.contextmanager
    def read_messages(self, handler: Any):
        with super().read_messages(_RedactingHandler(handler, self._redact)) as params:
            yield params


class _RedactingHandler:
    """Passes Pipes messages on to Dagster's handler, redacted."""

    def __init__(self, handler: Any, redact: Redactor):
        self._handler, self._redact = handler, redact

    def handle_message(self, message: Any) -> None:
        self._handler.handle_message(self._redact.value(message))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


#: In-process Spark steps swap this process's stdio, argv, sys.path and environment while they
#: run, so they run one at a time (beside script steps, which are separate processes).
_IN_PROCESS_STEP = threading.Lock()


def run_spark_in_process(pool: SparkPool, launch: StepLaunch) -> dict[str, Any]:
    """Run a Spark step's script in this process against the pool's session; returns metrics."""
    with _IN_PROCESS_STEP:
        return _run_spark_in_process(pool, launch)


def _run_spark_in_process(pool: SparkPool, launch: StepLaunch) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    run = Run.from_dict(launch.context, sink=metrics.__setitem__)
    source = str(launch.source_directory)
    before = set(sys.modules)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(launch.script), *launch.arguments]
    # The same search path a script process gets: its own folder, then the source directory.
    for entry in reversed(list(dict.fromkeys([str(launch.script.parent), source]))):
        sys.path.insert(0, entry)
    watchdog = _Watchdog(launch.timeout_seconds, _cancel_spark)
    # The script runs in this process: it cannot be given a read-only view of its inputs, so
    # whether it changed them is checked after it.
    inputs_before = isolation.snapshot(launch.readonly_paths)
    try:
        # Contained first: a session the step starts gets a JVM (and Python workers) without
        # the datastore credentials in its environment too.
        with _contained(launch), pool.step_session(
            launch.log, launch.spark_conf, launch.step
        ) as session, _executor_python(session, launch), watchdog.on(session), _registered(
            launch.run_id(), watchdog.interrupt
        ), in_process_run(run), pool.script_environment():
            runpy.run_path(str(launch.script), run_name="__main__")
    except StepInterruptedError:
        raise launch.interrupted_error() from None
    except StepTimeoutError:
        raise launch.timeout_error() from None
    except ComputeTargetError:
        raise  # the pool could not give the step its settings: said before the script ran
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise launch.failure(f"exited with code {exc.code}") from None
    except Exception as exc:
        if watchdog.interrupted:
            raise launch.interrupted_error() from None
        if watchdog.fired:
            raise launch.timeout_error() from None
        # Redacted, and without the exception's chain: Dagster records an error's causes.
        raise launch.failure(f"raised {type(exc).__name__}: {exc}", _traceback_text(exc)) from None
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        # Helper modules of the source directory must be re-imported next time, or an edit to
        # them would be hashed (and rerun) but not executed.
        for name in set(sys.modules) - before:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(source):
                del sys.modules[name]
    if watchdog.interrupted:  # the script caught the interrupt and went on
        raise launch.interrupted_error()
    if watchdog.fired:  # the script caught the timeout (``except Exception``) and went on
        raise launch.timeout_error()
    _check_inputs_unchanged(launch, inputs_before)
    return launch.redactor().value(metrics)


@contextlib.contextmanager
def _executor_python(session: Any, launch: StepLaunch):
    """While a Spark step in an isolated environment runs: its executors' Python workers run
    the environment's interpreter (``SparkContext.pythonExec``, what ``spark.pyspark.python``
    sets when a context starts). Only an in-process session on a local master runs its workers
    on this machine, where the environment is; anything else is refused before the script."""
    if launch.spark_python is None:
        yield
        return
    in_process = not type(session).__module__.startswith("pyspark.sql.connect")
    master = session.sparkContext.master if in_process else ""
    if not in_process or not master.startswith("local"):
        where = "a Spark Connect server" if not in_process else f"master {master}"
        raise ComputeTargetError(
            f"Spark step '{launch.step}' declares an isolated environment, but its pool runs on "
            f"{where}, whose Python workers cannot use an environment built on this machine. "
            "Use a local pool (master='local[...]', no remote= or warm pool), or drop the "
            "step's environment and install its packages on every worker (see README, "
            "'Per-step environments')."
        )
    context = session.sparkContext
    saved = context.pythonExec
    context.pythonExec = launch.spark_python
    try:
        yield
    finally:
        context.pythonExec = saved


@contextlib.contextmanager
def _contained(launch: StepLaunch):
    """While an in-process step runs: no credentials in ``os.environ`` (unless the step asks
    for them), and its script's output redacted."""
    with scrubbed_environ(launch.secrets, launch.datastore_credentials), redacted_stdio(
        launch.redactor()
    ):
        yield


def _traceback_text(exc: BaseException, limit: int = 4000) -> str:
    """The script's traceback, as text for the failure message (redacted with it)."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"\n--- traceback ---\n{text[-limit:].rstrip()}"


def _check_inputs_unchanged(launch: StepLaunch, before: isolation.Snapshot) -> None:
    """Fail the step when its script changed saved data it read in place."""
    changed = isolation.changes(before)
    if not changed:
        return
    names = isolation.input_names(changed, launch.context.get("inputs", {}))
    path, what = next(iter(changed.items()))
    more = f" ({len(what)} changes: {', '.join(what[:5])}{', ...' if len(what) > 5 else ''})"
    raise launch.failure(
        f"modified its input '{names[path]}' at {path}{more}; saved data must not be changed: "
        "write to an output instead"
    )


def _cancel_spark(session: Any) -> None:
    """Stop whatever Spark work a timed-out step has running."""
    try:
        # A classic session has interruptAll too (Spark 4), but it only stops the session's
        # tagged SQL work, not the RDD jobs a script submits: cancel every job of the context.
        if type(session).__module__.startswith("pyspark.sql.connect"):
            session.interruptAll()
        else:
            session.sparkContext.cancelAllJobs()
    except Exception:  # noqa: BLE001 - best effort: the step is being stopped anyway
        pass


class _Watchdog:
    """Stops an in-process step at its timeout, or when its run is interrupted: cancels its
    Spark jobs, then raises ``StepTimeoutError`` (``StepInterruptedError``) in the step's thread
    (a Python loop cannot be stopped otherwise)."""

    def __init__(self, timeout: float | None, cancel: Any):
        self.timeout, self.cancel = timeout, cancel
        self.fired = self.interrupted = False
        self._timer: threading.Timer | None = None
        self._thread_id = threading.get_ident()
        self._session: Any = None
        self._lock = threading.Lock()
        self._done = False

    def on(self, session: Any) -> _Watchdog:
        """Watch a step that runs on ``session`` (its Spark jobs are cancelled at the timeout)."""
        self._session = session
        return self

    def _fire(self) -> None:
        self._stop(StepTimeoutError)

    def interrupt(self) -> None:
        """Stop the step because its run is being interrupted (from another thread)."""
        self._stop(StepInterruptedError)

    def _stop(self, error: type[BaseException]) -> None:
        with self._lock:
            if self._done or self.fired or self.interrupted:  # ended, or already stopping
                return
            if error is StepInterruptedError:
                self.interrupted = True
            else:
                self.fired = True
            self.cancel(self._session)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(error)
            )

    def __enter__(self) -> _Watchdog:
        if self.timeout:
            self._timer = threading.Timer(self.timeout, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._done = True
            if self.fired or self.interrupted:
                # Not yet raised (the step was ending): it must not go off later, in Dagster's
                # code; the caller sees ``fired`` and reports the timeout.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)


@contextlib.contextmanager
def step_output_logs(launch: StepLaunch):
    """(stdout, stderr) files keeping this step's script output on its own, or (None, None).

    Dagster captures the output of a run's process as a whole when its steps run in one process
    (the pipelines' executors do), so one step's output cannot be told from another's there.
    These are in Dagster's compute log storage under the key Dagster gives a step's own capture
    (``build_log_key_for_run(run_id, step)``, used when steps run in separate processes), where
    ``StepRun.get_stdout_log()`` reads them.
    """
    context = launch.dagster_context
    run_id = launch.run_id()
    if context is None or not run_id:
        yield None, None
        return
    from dagster._core.storage.compute_log_manager import ComputeIOType

    manager = context.instance.compute_log_manager
    key = manager.build_log_key_for_run(run_id, launch.step)
    with manager.open_log_stream(key, ComputeIOType.STDOUT) as out, manager.open_log_stream(
        key, ComputeIOType.STDERR
    ) as err:
        yield out, err


def _pump(
    stream, sink, tail: collections.deque | None, redact: Redactor | None = None, copy=None
) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        if redact is not None:
            line = redact(line)
        sink.write(line)
        sink.flush()
        if copy is not None:
            copy.write(line)
            copy.flush()
        if tail is not None:
            tail.append(line.rstrip("\n"))
    stream.close()


def wait_streaming(
    proc: subprocess.Popen[bytes],
    timeout: float | None = None,
    redact: Redactor | None = None,
    copies: tuple[Any, Any] = (None, None),
) -> tuple[int | None, list[str]]:
    """Forward a process's stdout/stderr to ours (Dagster captures them per step) and wait.

    Returns (exit code, last lines of stderr); the exit code is None when the process ran past
    ``timeout`` seconds and was killed with everything it started. Every line is passed through
    ``redact`` first. Whatever the process left running in its group is killed when it ends.
    """
    tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, sys.stdout, None, redact, copies[0]), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, tail, redact, copies[1]), daemon=True),
    ]
    for t in pumps:
        t.start()
    code: int | None
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        code = None
    except BaseException:
        # The run was terminated: take the script and everything it started down with it.
        kill_group(proc)
        raise
    _kill_stragglers(proc)
    deadline = time.monotonic() + 10
    for t in pumps:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    return code, list(tail)


def _kill_stragglers(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of an ended step's process group (no step process outlives it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(proc: subprocess.Popen[bytes], grace_seconds: float = 10) -> None:
    """Stop a step's process group: SIGTERM, then SIGKILL to whatever is left of the group
    (a child the script started may outlive the script itself)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    _kill_stragglers(proc)
    proc.wait()
