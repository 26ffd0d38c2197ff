"""``CommandStep``: a shell command (or a program with arguments) as a pipeline step.

The command gets what a script step gets: its inputs staged the same way (download, mount,
direct), fresh output folders published atomically only when it exits 0, ``params`` as
``AML_PARAMETER_<name>``, the step's environment, timeout and compute target. The command runs
in the step's source directory, through ``amlrun/command.py`` started by the usual launcher.

Reuse is exact: a command may run any file, so **every file of the source directory** (``.amlignore``
/ ``.gitignore`` honoured) is part of the fingerprint, with the command itself, its inputs'
content, parameters, environment and ``version=``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aml_assets.data.content import hash_file, ignore_spec, walk_files
from aml_assets.data.datasets import DatasetInput, OutputDataset
from aml_assets.pipeline.execution import StepExecution
from aml_assets.pipeline.parameters import PipelineParameter
from aml_assets.pipeline.steps import Argument, Step, default_step_name
from aml_assets.reuse.code import CodeManifest, hash_python_file

__all__ = ["CommandStep", "command_code"]


def _runner() -> Path:
    """The file the launcher runs for every command step (``amlrun/command.py``)."""
    import amlrun

    return Path(amlrun.__file__).resolve().parent / "command.py"


def command_code(source_directory: Path, hash_paths: list[Path], cache: Any = None) -> CodeManifest:
    """Digest of every file a command may run: all of ``source_directory`` (``.amlignore``, else
    ``.gitignore``, excludes) and every file of ``hash_paths``. Python files get the
    normalized-token digest (comment-only edits do not count), other files their raw digest."""
    files: dict[str, str] = {}
    roots = [(Path(source_directory), "")] + [(Path(p), Path(p).as_posix()) for p in hash_paths]
    for root, prefix in roots:
        listed = walk_files(root, ignore_spec(root)) if root.is_dir() else [("", root)]
        for rel, path in listed:
            key = f"{prefix}/{rel}" if prefix and rel else (prefix or rel)
            files[key] = hash_python_file(path, cache) if path.suffix == ".py" else hash_file(path, cache)
    return CodeManifest(dict(sorted(files.items())), [])


def _words(command: str | list[Argument]) -> list[str]:
    """The command's words as text (placeholders by name), for labels and checks."""
    if isinstance(command, str):
        try:
            return shlex.split(command)
        except ValueError:
            return command.split()
    return [
        f"{{{a.name}}}" if isinstance(a, (DatasetInput, OutputDataset, PipelineParameter)) else str(a)
        for a in command
    ]


def _same_words(arguments: list[Any], words: list[Any]) -> bool:
    """Whether ``arguments`` are the command's words (as bound when the step was declared):
    a copy of the step (``dataclasses.replace``) passes them back in."""
    return len(arguments) == len(words) and all(
        # A DataPath parameter or a bare DataReference is bound as an input of it.
        a is w or a == w or (isinstance(a, DatasetInput) and a.dataset is w)
        for a, w in zip(arguments, words, strict=True)
    )


class CommandExecution(StepExecution):
    """Runs a CommandStep: the command's words are the arguments of ``amlrun/command.py``."""

    step: CommandStep

    def code(self) -> CodeManifest:
        return command_code(Path(self.step.source_directory), self.step.hash_paths, self.stat_cache)

    def script_label(self) -> str:
        return f"`{self.step.command_text()}` (the step's command)"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "shell": self.step.shell}

    def _resolve_arguments(self, handles: dict[str, dict[str, Any]], out_dirs: dict[str, Path]) -> list[str]:
        words = super()._resolve_arguments(handles, out_dirs)
        return ["--shell" if self.step.shell else "--exec", *words]


@dataclass(eq=False)
class CommandStep(Step):
    """Runs ``command`` in ``source_directory`` as a process on a CPU cluster (Azure's
    ``CommandStep``).

    ``command`` is a command line (a str, run by ``bash -c``: pipes, ``&&`` and variables
    work) or a list of words run without a shell, where a word may be an input
    (``dataset.as_download()``...), an ``OutputDataset`` or a ``PipelineParameter``: each
    becomes its path or value, as in a script step's arguments. Inputs and outputs given in
    ``inputs=`` / ``outputs=`` only are in ``$AZUREML_DATAREFERENCE_<name>`` (and
    ``Run.get_context()``). ``python`` is the step's environment's interpreter. The name
    defaults to the command's first word (Azure's default).

    Example::

        prepared = OutputDataset("prepared")
        CommandStep(
            command=["python", "prep.py", "--raw", raw.as_download(), "--out", prepared],
            source_directory="code",
        )
        CommandStep(name="archive", command="tar czf $AZUREML_DATAREFERENCE_archive/code.tgz .",
                    outputs=[OutputDataset("archive")], source_directory="code")
    """

    kind: ClassVar[str] = "command"
    execution_type: ClassVar[type] = CommandExecution
    compute_target: str = "cpucluster"
    command: str | list[Argument] = ""
    params: dict[str, str | int | float | bool | PipelineParameter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.command, (tuple, list)):
            self.command = list(self.command)
        elif not isinstance(self.command, str):
            raise TypeError(
                f"Step '{self.name or '?'}': command must be a str (a command line) or a list of "
                f"words, not {type(self.command).__name__}."
            )
        words = _words(self.command)
        if not words:
            raise ValueError(
                f"Step '{self.name or '?'}': no command; give command= (a command line, or a list "
                "of words)."
            )
        words_in = [self.command] if self.shell else list(self.command)
        if self.arguments and not _same_words(self.arguments, words_in):
            raise ValueError(
                f"Step '{self.name or words[0]}': a CommandStep takes no arguments=; put them in "
                "the command (a list may hold inputs, outputs and PipelineParameters)."
            )
        if not self.name:
            self.name = default_step_name(words[0])
            self.name_from_script = True
        # The command's words are the step's arguments: inputs, outputs and parameters in them
        # are found, fingerprinted and resolved exactly as a script step's.
        self.arguments = words_in
        self.script = self.script or words[0]
        if self.description is None:
            self.description = f"Runs `{self.command_text()}`"
        super().__post_init__()

    @property
    def shell(self) -> bool:
        """Whether the command is a command line run by a shell (a str), not a list of words."""
        return isinstance(self.command, str)

    @property
    def script_path(self) -> Path:
        """The runner the launcher starts (it runs the command)."""
        return _runner()

    def command_text(self) -> str:
        """The command as a user wrote it (placeholders by name)."""
        return self.command if isinstance(self.command, str) else shlex.join(_words(self.command))

    def param_values(self) -> dict[str, Any]:
        return dict(self.params)

    def own_problems(self, where: str, resources: Any) -> list[str]:
        """A program or script named by a relative path must be in the source directory."""
        if self.source_directory is None or not Path(self.source_directory).is_dir():
            return []  # the pipeline says so already
        words = _words(self.command)
        named = [words[0]] if "/" in words[0] else []
        if Path(words[0]).name.startswith(("python", "bash", "sh")) and len(words) > 1:
            named += [w for w in words[1:2] if w.endswith((".py", ".sh")) and not w.startswith("{")]
        return [
            f"{where}: the command runs '{w}', which is not in source directory "
            f"'{self.source_directory}'; check command= and source_directory="
            for w in named
            if not Path(w).is_absolute() and not (Path(self.source_directory) / w).exists()
        ]
