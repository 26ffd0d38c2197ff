"""What determines a step's result, hashed: the step fingerprint and how two of them differ.

Deliberately free of Dagster imports: the cache key is a small pure function of its components,
testable on its own (the Hamilton pattern).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aml_assets.data.content import canonical_digest

#: Bumped whenever the encoding or the set of components changes, so old ledgers never match.
#: v3: code is the script's import closure (comments ignored), inputs carry their declaration,
#: Spark settings include the pool's.
FINGERPRINT_VERSION = 3

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


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _flatten(value: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested settings as (path...) -> leaf value, so a change names the exact setting."""
    out: dict[tuple[str, ...], Any] = {}
    for key, item in value.items():
        path = (*prefix, str(key))
        if isinstance(item, Mapping):
            out.update(_flatten(item, path))  # an empty mapping is the same as none
        else:
            out[path] = item
    return out


def _setting_label(group: str, path: tuple[str, ...]) -> str:
    """How a user would name a setting: "input titanic: separator", "Spark setting X"."""
    if group == "settings" and path[0] == "inputs" and len(path) > 2:
        return f"input {path[1]}: {'.'.join(path[2:])}"
    if group == "settings" and path[0] == "outputs" and len(path) > 2:
        return f"output {path[1]}: {'.'.join(path[2:])}"
    if group == "settings" and path[0] == "spark_conf" and len(path) > 1:
        return f"Spark setting {'.'.join(path[1:])}"
    if group == "settings" and path[0] == "params" and len(path) > 1:
        # {"value": text} or {"parameter": name}: "params mode (AML_PARAMETER_mode)".
        kind = " pipeline parameter" if path[2:] == ("parameter",) else ""
        return f"params {path[1]} (AML_PARAMETER_{path[1]}){kind}"
    return f"{group} {'.'.join(path)}"


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
    reasons.extend(_environment_changes(old.get("environment", {}), new.get("environment", {})))
    old_settings, new_settings = dict(old.get("settings", {})), dict(new.get("settings", {}))
    # The step's own version label (Azure's version=) reads as the user wrote it.
    old_version, new_version = old_settings.pop("version", None), new_settings.pop("version", None)
    if old_version != new_version:
        reasons.append(f"version changed: {old_version or 'none'} -> {new_version or 'none'}")
    old_s, new_s = _flatten(old_settings), _flatten(new_settings)
    if old_s == new_s and old_settings != new_settings:
        reasons.append("settings changed")  # only in form ({} vs absent): say so anyway
    for key in sorted(set(old_s) | set(new_s)):
        if old_s.get(key, _UNSET) != new_s.get(key, _UNSET):
            reasons.append(
                f"{_setting_label('settings', key)} changed ({_describe_value(old_s.get(key, _UNSET))}"
                f" -> {_describe_value(new_s.get(key, _UNSET))})"
            )
    if old.get("step") != new.get("step"):
        reasons.append(f"step name changed ({old.get('step')} -> {new.get('step')})")
    return reasons


def _packages(env: Mapping[str, Any]) -> dict[str, Any]:
    """Package -> version of an environment component: an isolated environment's resolved
    ``packages``, or the legacy ``package NAME`` entries of the running interpreter's."""
    out = {k.removeprefix("package "): v for k, v in env.items() if k.startswith("package ")}
    out.update(env.get("packages") or {})
    return out


def _mapping_changes(old: Mapping[str, Any], new: Mapping[str, Any], what: str = "") -> list[str]:
    """"NAME A -> B", "added NAME B", "removed NAME A" for every entry that differs."""
    out = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append(f"added {what}{name} {new[name]}")
        elif name not in new:
            out.append(f"removed {what}{name} {old[name]}")
        elif old[name] != new[name]:
            out.append(f"{what}{name} {old[name]} -> {new[name]}")
    return out


def _environment_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """How a step's environment changed, as a user names it: "environment changed:
    scikit-learn 1.5.2 -> 1.6.0", "environment changed: python 3.11.9 -> 3.12.4"."""
    if old == new:
        return []
    changes: list[str] = []
    if old.get("python") != new.get("python"):
        changes.append(f"python {old.get('python', _UNSET)} -> {new.get('python', _UNSET)}")
    if bool(old.get("lock")) != bool(new.get("lock")):
        # Into or out of an isolated environment: every dependency differs; say it once.
        changes.append(
            f"now runs in its own environment (lock {str(new['lock'])[:12]})" if new.get("lock")
            else "now runs in the pipeline's own interpreter (no isolated environment)"
        )
    else:
        changes.extend(_mapping_changes(_packages(old), _packages(new)))
        if not changes and old.get("lock") != new.get("lock"):
            changes.append(
                f"lock {str(old['lock'])[:12]} -> {str(new['lock'])[:12]} (same versions: the "
                "packages' files or sources differ)"
            )
    changes.extend(
        _mapping_changes(
            {k: _describe_value(v) for k, v in (old.get("env_vars") or {}).items()},
            {k: _describe_value(v) for k, v in (new.get("env_vars") or {}).items()},
            "env var ",
        )
    )
    known = {"python", "lock", "packages", "env_vars"}
    others = {k for k in set(old) | set(new) if k not in known and not k.startswith("package ")}
    changes.extend(
        _mapping_changes({k: old[k] for k in others if k in old}, {k: new[k] for k in others if k in new})
    )
    # Only in form ({} vs absent): say so anyway, the fingerprint differs.
    return [f"environment changed: {c}" for c in changes] or ["environment changed"]
