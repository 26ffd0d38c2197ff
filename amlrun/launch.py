"""Launches a step script inside a Dagster Pipes session: ``python -m amlrun.launch SCRIPT ARGS``.

The script itself needs no Dagster code: this wrapper opens the Pipes channel (so metrics and
the script's failure reach Dagster), then runs the script as ``__main__`` with its arguments.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    """Run ``argv[0]`` as a script with ``argv[1:]`` as its arguments."""
    from dagster_pipes import open_dagster_pipes

    script = Path(argv[0]).resolve()
    with open_dagster_pipes():
        sys.argv = [str(script), *argv[1:]]
        sys.path.insert(0, str(script.parent))
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
