"""What determines a step's result, hashed: the step fingerprint and how two of them differ.

Deliberately free of Dagster imports: the cache key is a small pure function of its components,
testable on its own (the Hamilton pattern).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml_assets.data.content import StatCache, canonical_digest, hash_file, ignore_spec, walk_files

#: Bumped whenever the encoding or the set of components changes, so old ledgers never match.
FINGERPRINT_VERSION = 2

def imported_modules(py_file: Path) -> set[str]:
    """Top-level and dotted module names a Python file imports (statically)."""
    import ast

    try:
        tree = ast.parse(py_file.read_bytes(), filename=str(py_file))
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def code_manifest(
    source_directory: Path,
    hash_paths: Iterable[Path] = (),
    cache: StatCache | None = None,
    sibling_scripts: Iterable[str] = (),
) -> dict[str, str]:
    """Digest of every file that makes up a step's code, keyed by a readable path.

    Files of the source directory are keyed by their path relative to it; extra ``hash_paths``
    (files or directories outside it) by their absolute path. ``sibling_scripts`` are other
    steps' entry scripts in the same directory: they are left out unless this step's code
    imports them, so editing ``train.py`` does not rerun ``dataprep`` beside it.
    """
    source_directory = Path(source_directory)
    listed = walk_files(source_directory, ignore_spec(source_directory))
    siblings = set(sibling_scripts)
    if siblings:
        imported: set[str] = set()
        for rel, p in listed:
            if rel.endswith(".py") and rel not in siblings:
                imported |= imported_modules(p)
        module_of = {s: s.removesuffix(".py").replace("/", ".") for s in siblings}
        listed = [
            (rel, p)
            for rel, p in listed
            if rel not in siblings or module_of[rel] in imported
        ]
    files = {rel: hash_file(p, cache) for rel, p in listed}
    for extra in hash_paths:
        extra = Path(extra).resolve()
        if extra.is_dir():
            for rel, p in walk_files(extra, ignore_spec(extra)):
                files[f"{extra.as_posix()}/{rel}"] = hash_file(p, cache)
        else:
            files[extra.as_posix()] = hash_file(extra, cache)
    return files


@dataclass
class StepFingerprint:
    """Everything that determines a step's result, grouped so a change can be named.

    Groups: ``code`` (path -> digest), ``arguments`` (the symbolic argument list), ``parameters``
    (name -> value), ``inputs`` (dataset name -> content digest), ``environment`` and ``settings``.
    """

    step: str
    code: dict[str, str] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def components(self) -> dict[str, Any]:
        """The groups as one plain dict (what the ledger stores)."""
        return {
            "format": FINGERPRINT_VERSION,
            "step": self.step,
            "code": self.code,
            "arguments": self.arguments,
            "parameters": self.parameters,
            "inputs": self.inputs,
            "environment": self.environment,
            "settings": self.settings,
        }

    @property
    def digest(self) -> str:
        """The fingerprint itself."""
        return canonical_digest(self.components(), f"aml-fingerprint/v{FINGERPRINT_VERSION}")


def _describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def explain_difference(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], code_label: Callable[[str], str] = str
) -> list[str]:
    """Name every component that differs between two fingerprints' components, in plain words.

    ``code_label`` turns a code path into what a user recognizes (e.g. ``code/train.py``).
    """
    if old is None:
        return ["no previous run"]
    if old.get("format", 1) != new.get("format", 1):
        return [
            f"the fingerprint format changed (v{old.get('format', 1)} -> v{new.get('format', 1)}) "
            "with an aml-assets upgrade; each step reruns once"
        ]
    reasons: list[str] = []
    old_code, new_code = old.get("code", {}), new.get("code", {})
    for path in sorted(set(old_code) | set(new_code)):
        if path not in old_code:
            reasons.append(f"script {code_label(path)} was added")
        elif path not in new_code:
            reasons.append(f"script {code_label(path)} was removed")
        elif old_code[path] != new_code[path]:
            reasons.append(f"script {code_label(path)} changed")
    old_inputs, new_inputs = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(name) != new_inputs.get(name):
            verb = "changed" if name in old_inputs and name in new_inputs else (
                "was added" if name in new_inputs else "was removed"
            )
            reasons.append(f"input {name} {verb}")
    old_params, new_params = old.get("parameters", {}), new.get("parameters", {})
    for name in sorted(set(old_params) | set(new_params)):
        if old_params.get(name, "<unset>") != new_params.get(name, "<unset>"):
            reasons.append(
                f"parameter {name} changed ({_describe_value(old_params.get(name, '<unset>'))}"
                f" -> {_describe_value(new_params.get(name, '<unset>'))})"
            )
    if old.get("arguments") != new.get("arguments"):
        reasons.append(
            f"arguments changed ({_describe_value(old.get('arguments'))}"
            f" -> {_describe_value(new.get('arguments'))})"
        )
    for group in ("environment", "settings"):
        old_g, new_g = old.get(group, {}), new.get(group, {})
        for key in sorted(set(old_g) | set(new_g)):
            if old_g.get(key) != new_g.get(key):
                reasons.append(
                    f"{group} {key} changed ({_describe_value(old_g.get(key))}"
                    f" -> {_describe_value(new_g.get(key))})"
                )
    if old.get("step") != new.get("step"):
        reasons.append(f"step name changed ({old.get('step')} -> {new.get('step')})")
    return reasons
