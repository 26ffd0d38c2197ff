"""Runs a ``CommandStep``'s command inside the step's process (the launcher runs this file as the
step's script): ``command.py --shell 'CMD LINE'`` or ``command.py --exec PROGRAM ARG...``.

The command runs in the step's working directory (its source directory) with:

- ``python`` (and the environment's other tools) first on ``PATH``: the step's interpreter, so
  ``python train.py`` runs in the step's environment as it did on Azure ML;
- every input and output path in ``AZUREML_DATAREFERENCE_<name>`` (Azure ML v1's variables), as
  well as in the command's own arguments;
- its scripts free to import their neighbours (``PYTHONSAFEPATH`` is not passed on);
- ``Run.get_context()`` in its Python scripts: what they log is reported when the command ends.

The exit status is the command's: 0 publishes the outputs, anything else fails the step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from amlrun.context import COMMAND_METRICS_ENV, CONTEXT_ENV, _pipes_sink

#: Exit status of a command that could not be started (as a shell says: not found).
NOT_FOUND_EXIT = 127


def command_env() -> dict[str, str]:
    """The command's environment: this one, with the step's interpreter first on PATH and the
    data paths as ``AZUREML_DATAREFERENCE_<name>``."""
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)  # `python script.py` puts the script's folder on sys.path
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    context_file = env.get(CONTEXT_ENV)
    if context_file and os.path.exists(context_file):
        with open(context_file) as fh:
            context = json.load(fh)
        for name, handle in (context.get("inputs") or {}).items():
            env[f"AZUREML_DATAREFERENCE_{name}"] = str(handle.get("path", ""))
        for name, path in (context.get("outputs") or {}).items():
            env[f"AZUREML_DATAREFERENCE_{name}"] = str(path)
    return env


def report_metrics(path: str) -> None:
    """Report what the command's scripts logged (``Run.get_context().log``...) to Dagster."""
    if not os.path.exists(path):
        return
    sink = _pipes_sink()
    with open(path) as fh:
        for line in fh:
            if line.strip() and sink is not None:
                name, value = json.loads(line)
                sink(name, value)


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status the step process should end with."""
    if len(argv) < 2 or argv[0] not in ("--shell", "--exec"):
        sys.stderr.write("usage: command.py --shell 'COMMAND LINE' | --exec PROGRAM [ARG...]\n")
        return 2
    mode, command = argv[0], argv[1:]
    env = command_env()
    # Beside the run context, in the step's private folder (removed with it, whatever happens).
    folder = os.path.dirname(os.environ.get(CONTEXT_ENV, "")) or None
    metrics = tempfile.NamedTemporaryFile(prefix="metrics-", suffix=".jsonl", dir=folder, delete=False)
    metrics.close()
    env[COMMAND_METRICS_ENV] = metrics.name
    try:
        status = _run(mode, command, env)
        report_metrics(metrics.name)
    finally:
        os.unlink(metrics.name)
    if status < 0:  # killed by a signal: end the same way
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _run(mode: str, command: list[str], env: dict[str, str]) -> int:
    try:
        if mode == "--shell":
            shell = shutil.which("bash") or "/bin/sh"  # Azure ML ran command lines with bash
            proc = subprocess.run([shell, "-c", command[0]], env=env)
        else:
            proc = subprocess.run(command, env=env)
    except FileNotFoundError:
        sys.stderr.write(f"aml-assets: command not found: {command[0]!r} (not on PATH, nor a file "
                         f"relative to {os.getcwd()})\n")
        return NOT_FOUND_EXIT
    except PermissionError:
        sys.stderr.write(f"aml-assets: {command[0]!r} is not executable (chmod +x it, or run it "
                         "through its interpreter, e.g. 'bash run.sh')\n")
        return 126
    return proc.returncode


if __name__ == "__main__":
    _status = main(sys.argv[1:])
    if _status:  # a clean end is no exit at all: Pipes reports SystemExit(0) as an exception
        sys.exit(_status)
