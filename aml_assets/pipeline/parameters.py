"""Typed pipeline parameters (Azure ML's ``PipelineParameter``), set per run from config or UI.

A parameter may declare bounds (``min``/``max``, for int and float parameters) or ``choices``.
The default is checked when the pipeline is validated; a run's value is checked before any step
runs (see ``Pipeline.settings_resource``). DataPath parameters live in ``pipeline.datapath``.

For requests (the HTTP API, ``Experiment.submit``, ``aml-assets run --param``),
``check_assignments`` checks values of both kinds before anything starts, and ``to_record`` /
``parameter_from_record`` store declarations with a published pipeline.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from aml_assets.errors import AmlAssetsError
from aml_assets.pipeline.datapath import DataPath, DataPathParameter

_TYPES = (bool, int, float, str)
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_TYPE_NAMES = {t.__name__: t for t in _TYPES}


class ParameterValueError(AmlAssetsError):
    """A run gave a pipeline parameter a value outside its type, bounds or choices.

    Deliberately not a ``ValueError``: pydantic would wrap it in a ``ValidationError`` and bury
    the message; raised from the run-settings resource, it reaches Dagster's log as it is.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{len(self.problems)} pipeline parameters are invalid:\n{lines}")


@dataclass(frozen=True, eq=False)
class PipelineParameter:
    """A named, typed value a run may override; usable as a step argument.

    The type is the default's type (``bool``, ``int``, ``float`` or ``str``) unless given.
    ``min``/``max`` bound an int or float parameter (inclusive); ``choices`` lists the values a
    parameter may take (for a str parameter the UI launchpad shows them as a drop-down)::

        PipelineParameter("n_estimators", 200, min=1, max=5000)
        PipelineParameter("solver", "lbfgs", choices=("lbfgs", "saga"))
    """

    name: str
    default_value: Any
    description: str | None = None
    type: type | None = None
    _: KW_ONLY
    min: int | float | None = None
    max: int | float | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None and not isinstance(self.choices, tuple):
            try:
                object.__setattr__(self, "choices", tuple(self.choices))
            except TypeError:
                pass  # reported by declaration_problems()

    @property
    def value_type(self) -> type:
        """The parameter's Python type."""
        if self.type is not None:
            return self.type
        for t in _TYPES:
            # bool before int: True is an int too.
            if isinstance(self.default_value, t):
                return t
        raise TypeError(
            f"Pipeline parameter '{self.name}' has a default of type "
            f"{type(self.default_value).__name__}; use bool, int, float or str."
        )

    @property
    def has_bounds(self) -> bool:
        return self.min is not None or self.max is not None

    # --- what is allowed --------------------------------------------------------------------
    def allowed(self) -> str:
        """The values this parameter accepts, in words: ``an integer from 1 to 5000``."""
        t = self.value_type
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        word = _TYPE_WORDS.get(t, t.__name__)
        if self.min is not None and self.max is not None:
            return f"{word} from {self.min!r} to {self.max!r}"
        if self.min is not None:
            return f"{word} >= {self.min!r}"
        if self.max is not None:
            return f"{word} <= {self.max!r}"
        return word

    def _type_problem(self, value: Any) -> str | None:
        """Why ``value`` is not of this parameter's type, or None."""
        t = self.value_type
        if t is bool:
            ok = isinstance(value, bool)
        elif t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, t)
        if ok:
            return None
        if t is int and isinstance(value, float):
            # Never truncate: 1e26 "trees" must not become a huge int, nor 2.5 become 2.
            return "is a float, not an integer: write it without a decimal point or exponent"
        return f"is a {type(value).__name__}, but the parameter is {_TYPE_WORDS.get(t, t.__name__)}"

    def _range_problem(self, value: Any) -> str | None:
        """Why a value of the right type is outside the bounds or choices, or None."""
        if self.choices is not None:
            if not any(value == c and type(value) is type(c) or _same_number(value, c) for c in self.choices):
                return "is not one of the choices"
            return None
        if self.has_bounds:
            if isinstance(value, float) and math.isnan(value):
                return "is not a number"
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                return "is out of range"
        return None

    def value_problem(self, value: Any, resource_key: str = "pipeline") -> str | None:
        """Why a run's value for this parameter is refused (a full sentence), or None."""
        if value is None:
            head = f"Pipeline parameter '{self.name}' has no value (null)"
        elif reason := self._type_problem(value) or self._range_problem(value):
            head = f"Pipeline parameter '{self.name}' = {value!r} {reason}"
        else:
            return None
        return (
            f"{head} (allowed: {self.allowed()}). Set resources.{resource_key}.config.{self.name} "
            "in the run config (the launchpad, or `dagster job execute -c run.yaml`) to an allowed "
            f"value, or leave it out to use the default {self.default_value!r}."
        )

    def assignment_problem(self, value: Any) -> str | None:
        """Why a request's value for this parameter is refused (a full sentence), or None."""
        if value is None:
            reason = "has no value (null)"
        elif _looks_like_datapath(value):
            return (
                f"Pipeline parameter '{self.name}' is a value parameter, not a DataPath: give it "
                f"{self.allowed()} in ParameterAssignments, not a datastore path."
            )
        elif found := self._type_problem(value) or self._range_problem(value):
            reason = f"= {value!r} {found}"
        else:
            return None
        return f"Pipeline parameter '{self.name}' {reason} (allowed: {self.allowed()})."

    def config_value(self, value: Any) -> Any:
        """A valid value as run config holds it (an int given for a float parameter: a float)."""
        return float(value) if self.value_type is float else value

    # --- the declaration ------------------------------------------------------------------
    def declaration_problems(self) -> list[str]:
        """Problems with the declared type, bounds, choices and default (empty when valid)."""
        where = f"parameter '{self.name}'"
        try:
            t = self.value_type
        except TypeError as exc:
            return [str(exc)]
        out: list[str] = []
        if t not in _TYPES:
            return [f"{where} has type {t.__name__}; use bool, int, float or str"]
        if self.has_bounds and t not in (int, float):
            hint = "; use choices=(...) to restrict a str parameter" if t is str else ""
            out.append(f"{where} is a {t.__name__} parameter: min/max apply only to int and float parameters{hint}")
        elif self.has_bounds:
            for label in ("min", "max"):
                bound = getattr(self, label)
                if bound is None:
                    continue
                if not isinstance(bound, (int, float)) or isinstance(bound, bool):
                    out.append(f"{where}: {label} must be a number, not {bound!r}")
                elif math.isnan(bound):
                    out.append(f"{where}: {label} is NaN; give a number")
            if not out and self.min is not None and self.max is not None and self.min > self.max:
                out.append(
                    f"{where} has min {self.min!r} greater than max {self.max!r}; "
                    "min must be <= max (swap them?)"
                )
        if self.choices is not None:
            if self.has_bounds:
                out.append(f"{where} declares both choices and min/max; give one or the other")
            if t is bool:
                out.append(f"{where} is a bool parameter: choices do not apply to it")
            elif not isinstance(self.choices, tuple):
                out.append(f"{where}: choices must be a tuple or list of values, not {self.choices!r}")
            elif not self.choices:
                out.append(f"{where} has no choices; list at least one value, or drop choices=")
            else:
                wrong = [c for c in self.choices if self._type_problem(c)]
                if wrong:
                    out.append(
                        f"{where} is a {t.__name__} parameter but its choices "
                        f"{', '.join(repr(c) for c in wrong)} are not {_TYPE_WORDS[t]}; "
                        f"give choices of type {t.__name__}"
                    )
        if out:
            return out
        if (reason := self._type_problem(self.default_value)) is not None:
            return [f"{where} has default {self.default_value!r}, which {reason}"]
        if self._range_problem(self.default_value) is not None:
            return [
                f"{where} has default {self.default_value!r}, which is not allowed: it must be "
                f"{self.allowed()}; change the default or the "
                f"{'choices' if self.choices is not None else 'bounds'}"
            ]
        return []

    def same_declaration(self, other: PipelineParameter) -> bool:
        """Whether two parameter objects declare the same type, default, bounds and choices."""
        return (self.type, self.default_value, self.min, self.max, self.choices) == (
            other.type, other.default_value, other.min, other.max, other.choices
        )

    def to_record(self) -> dict[str, Any]:
        """The declaration as JSON-able data (``parameter_from_record`` rebuilds it)."""
        return {
            "kind": "value",
            "name": self.name,
            "default_value": self.default_value,
            "description": self.description,
            "type": self.value_type.__name__,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices) if self.choices is not None else None,
        }

    def __repr__(self) -> str:
        extra = ""
        if self.choices is not None:
            extra = f" choices={self.choices!r}"
        elif self.has_bounds:
            extra = f" min={self.min!r} max={self.max!r}"
        return f"<parameter {self.name}={self.default_value!r}{extra}>"


def _same_number(a: Any, b: Any) -> bool:
    """1 and 1.0 are the same choice of a float parameter; True is never the number 1."""
    numbers = (int, float)
    return (
        isinstance(a, numbers) and isinstance(b, numbers)
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )


class ParameterRecordError(AmlAssetsError):
    """A stored parameter record cannot be read back into a parameter."""


def parameter_from_record(record: Mapping[str, Any]) -> PipelineParameter | DataPathParameter:
    """The parameter a ``to_record()`` describes (``kind`` "value" or "datapath")."""
    kind = record.get("kind") if isinstance(record, Mapping) else None
    try:
        if kind == "datapath":
            return DataPathParameter.from_record(record)
        if kind == "value":
            default = record["default_value"]
            declared = _TYPE_NAMES[record["type"]]
            inferred = next((t for t in _TYPES if isinstance(default, t)), None)
            choices = record.get("choices")
            return PipelineParameter(
                record["name"],
                default,
                record.get("description"),
                # Only when it is not the default's own type, so a record round-trips exactly.
                type=None if declared is inferred else declared,
                min=record.get("min"),
                max=record.get("max"),
                choices=tuple(choices) if choices is not None else None,
            )
    except (KeyError, TypeError) as exc:
        raise ParameterRecordError(
            f"Parameter record {dict(record)!r} is incomplete or malformed ({exc!r}); publish the "
            "pipeline again to rewrite it."
        ) from exc
    raise ParameterRecordError(
        f"Parameter record {record!r} has kind {kind!r}; expected 'value' or 'datapath'. "
        "Publish the pipeline again with this version of aml-assets to rewrite it."
    )


def check_assignments(
    parameters: Iterable[PipelineParameter | DataPathParameter],
    values: Mapping[str, Any] | None,
    datapaths: Mapping[str, Any] | None = None,
    datastores: Collection[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Check a request's parameter values before anything starts; (run-config values, problems).

    ``values`` are Azure's ParameterAssignments: plain values, and for a DataPath parameter a
    ``DataPath``, ``"datastore:path"``, a relative path (on the parameter's default datastore)
    or a mapping. ``datapaths`` are Azure's DataPathAssignments
    (``{name: {"DataStoreName": ..., "RelativePath": ...}}``). ``datastores``, when given, are
    the datastore resource keys a DataPath may name. The config values go to
    ``tags.parameters_run_config``; the problems are full sentences, empty when all is well.
    """
    by_name = {p.name: p for p in parameters}
    config: dict[str, Any] = {}
    problems: list[str] = []
    datapaths = datapaths or {}
    for where, given in (("ParameterAssignments", values or {}), ("DataPathAssignments", datapaths)):
        if not isinstance(given, Mapping):
            problems.append(
                f"{where} must be an object mapping parameter names to values, not "
                f"{type(given).__name__}."
            )
            continue
        for name, value in given.items():
            param = by_name.get(name)
            if param is None:
                problems.append(_unknown(name, sorted(by_name)))
            elif where == "ParameterAssignments" and name in datapaths:
                problems.append(
                    f"Parameter '{name}' is given in both ParameterAssignments and "
                    "DataPathAssignments; give it once."
                )
            elif isinstance(param, DataPathParameter):
                datapath, problem = param.assignment_problem(value, datastores)
                if problem:
                    problems.append(problem)
                else:
                    config[name] = datapath.to_record()
            elif where == "DataPathAssignments":
                problems.append(
                    f"Pipeline parameter '{name}' is a value parameter, not a DataPath: give it "
                    f"in ParameterAssignments ({param.allowed()}), not in DataPathAssignments."
                )
            elif problem := param.assignment_problem(value):
                problems.append(problem)
            else:
                config[name] = param.config_value(value)
    return config, problems


def _unknown(name: Any, known: list[str]) -> str:
    hint = difflib.get_close_matches(str(name), known, n=1)
    names = f"its parameters are {', '.join(repr(k) for k in known)}" if known else "it has no parameters"
    return (
        f"The pipeline has no parameter '{name}'; {names}."
        + (f" Did you mean '{hint[0]}'?" if hint else "")
    )


def _looks_like_datapath(value: Any) -> bool:
    """A DataPath object or a mapping shaped like one (Azure's or ours)."""
    if isinstance(value, DataPath):
        return True
    if isinstance(value, Mapping):
        keys = {str(k).lower() for k in value}
        return bool(keys & {"datastorename", "relativepath", "datastore", "path_on_datastore"})
    return False
