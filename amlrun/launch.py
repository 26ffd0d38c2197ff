"""Launches a step script inside a Dagster Pipes session: ``python -S .../amlrun/launch.py SCRIPT
ARGS`` (``python -m amlrun.launch SCRIPT ARGS`` works too).

The script itself needs no Dagster code: this wrapper opens the Pipes channel (so metrics and
the script's failure reach Dagster), then runs the script as ``__main__`` with its arguments.

The wrapper is also a tiny supervisor, so a step's processes die with their run. Before anything
heavy is imported it forks: the child runs the script; the parent (the leader of the step's
process group, started in its own session by the runner) waits for the child and exits with its
status (the same exit code, or the same signal). If the runner goes away (killed with SIGKILL,
crashed) the supervisor notices (``PR_SET_PDEATHSIG`` and a poll of ``getppid()`` every 0.2 s)
and kills the script and everything it started with SIGKILL. It is a child subreaper too, so
whatever the script started and left behind (even in another session) is killed when the script
ends: no step process outlives its step.

The script's ``sys.path`` starts with its own folder, then ``$AML_SOURCE_DIRECTORY`` (set by the
runner), so a script in a subfolder imports the source directory's modules.
"""

from __future__ import annotations

import os
import signal
import sys

#: Seconds between two checks that the runner is still there.
_POLL_SECONDS = 0.2
#: Seconds the script may run before the parent-death signal and the subreaper are set up.
_FIRST_WAIT = 0.05
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: Saved data the script must see read-only (JSON list), set by the runner when it can isolate.
READONLY_ENV = "AML_READONLY_PATHS"
#: Exit code of a script process that could not be given its read-only view of its inputs.
ISOLATION_FAILED_EXIT = 121


def main(argv: list[str]) -> None:
    """Run ``argv[0]`` as a script with ``argv[1:]`` as its arguments."""
    from pathlib import Path

    readonly = os.environ.pop(READONLY_ENV, None)
    if readonly:
        _enter_readonly_view(readonly)
    from dagster_pipes import open_dagster_pipes

    script = Path(argv[0]).resolve()
    with open_dagster_pipes():
        sys.argv = [str(script), *argv[1:]]
        # The script's own folder first, then the source directory's root, so a script in a
        # subfolder imports the source directory's modules as it would on Azure ML.
        source = os.environ.get("AML_SOURCE_DIRECTORY")
        for entry in reversed(list(dict.fromkeys(p for p in (str(script.parent), source) if p))):
            sys.path.insert(0, entry)
        import runpy

        from amlrun.context import Run, input_path_env, stdout_kept

        run = Run.get_context()
        # v1 puts each input's path in a variable named after it (os.environ["step2_input"]).
        for name, path in input_path_env(run).items():
            os.environ.setdefault(name, path)
        with stdout_kept(run):
            runpy.run_path(str(script), run_name="__main__")


def _enter_readonly_view(paths_json: str) -> None:
    """Make the saved data this script reads in place read-only to it (and its children)."""
    import json

    try:
        from aml_assets.compute.isolation import enter_readonly_view

        enter_readonly_view(json.loads(paths_json))
    except Exception as exc:  # noqa: BLE001 - never run the script with writable saved data
        sys.stderr.write(
            f"aml-assets: could not make the step's saved inputs read-only ({exc}); the script "
            "was not run.\n"
        )
        sys.stderr.flush()
        os._exit(ISOLATION_FAILED_EXIT)


# --- the supervisor ------------------------------------------------------------------------------
def supervise() -> None:
    """Fork; return in the child (which runs the script); never return in the parent."""
    import gc

    runner = os.getppid()
    gc.freeze()  # the collector then leaves the shared objects alone: fewer pages to copy
    child = os.fork()
    if child == 0:
        return
    _Supervisor(runner, child).run()


class _Supervisor:
    def __init__(self, runner: int, child: int):
        self.runner, self.child = runner, child
        self.linux = sys.platform.startswith("linux")

    def runner_gone(self) -> bool:
        return os.getppid() != self.runner

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        wait_signal = getattr(signal, "sigtimedwait", None)
        if wait_signal is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        delay, first, armed = 0.005, True, not self.linux
        while True:
            status = self._reap()
            if status is not None:
                break
            if self.runner_gone():
                self.kill_all()
            if not first and not armed:
                # Only for a script that runs a while: a short one pays nothing for this.
                self._prctl()
                armed = True
                continue  # the runner may have gone before the parent-death signal was set
            if wait_signal is not None:
                wait_signal([signal.SIGCHLD], _FIRST_WAIT if first else _POLL_SECONDS)
                first = False
            else:  # no sigtimedwait (macOS): poll, quickly at first
                import time

                time.sleep(delay)
                delay = min(delay * 2, _POLL_SECONDS)
        self._kill_descendants()
        self._exit_like(status)

    def _prctl(self) -> None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - the poll still applies
            pass

    def _on_signal(self, signum: int, _frame: object) -> None:
        # SIGTERM is also the parent-death signal: the runner is gone, take everything down.
        if self.runner_gone():
            self.kill_all()
        # Otherwise someone asked the step to stop (the runner's SIGTERM to the group already
        # reached the script, but a signal sent to this process alone must reach it too).
        try:
            os.kill(self.child, signum)
        except ProcessLookupError:
            pass

    def _reap(self) -> int | None:
        """The script's wait status once it has ended; reaps adopted orphans on the way."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - only we reap the script
                return 1 << 8
            if pid == 0:
                return None
            if pid == self.child:
                return status

    def _children(self) -> list[int]:
        pid = os.getpid()
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                return [int(p) for p in fh.read().split()]
        except OSError:
            return []

    def _kill_descendants(self) -> None:
        """SIGKILL whatever the script left behind (orphans are re-parented to us)."""
        if not self.linux:
            return
        for _ in range(200):
            children = self._children()
            if not children:
                return
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in children:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass

    def kill_all(self) -> None:
        """The runner is gone: SIGKILL the script, everything it started, then this process."""
        try:
            os.kill(self.child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._kill_descendants()
        os.killpg(os.getpgid(0), signal.SIGKILL)
        os._exit(137)  # pragma: no cover - not in a group of our own

    def _exit_like(self, status: int) -> None:
        """Exit with the script's status: its exit code, or killed by the same signal."""
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                import resource

                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the script already dumped
            except (ImportError, OSError, ValueError):
                pass
            if sig != signal.SIGKILL:
                signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # run by path without PYTHONSAFEPATH (Python < 3.11): not amlrun/ itself
    if hasattr(os, "fork"):
        supervise()
    if sys.flags.no_site:
        # Started with -S (as the runner does), so the supervisor forked before site-packages
        # were set up (the less a fork copies, the less it costs); the script gets them now.
        import site

        site.main()
    main(sys.argv[1:])
