"""What a process id stands for now: the check before signalling a process named in a state file.

A pid recorded in a file (a warm Spark pool's server, the warm runner) may since have exited and
been given to another process; stopping "it" must first confirm, from its command line, that it
is still the process the file describes. Standard library only: the CLI imports it on start.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def command_line(pid: int) -> list[str] | None:
    """The arguments of a live (not zombie) process, or None if there is none."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return None
        return None if state in ("Z", "X") else [a.decode(errors="replace") for a in args if a]
    out = subprocess.run(
        ["ps", "-ww", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True
    )
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split()[1:]
