"""Typed pipeline parameters (Azure ML's ``PipelineParameter``), set per run from config or UI.

A parameter may declare bounds (``min``/``max``, for int and float parameters) or ``choices``.
The default is checked when the pipeline is validated; a run's value is checked before any step
runs (see ``Pipeline.settings_resource``).
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import Any

from aml_assets.errors import AmlAssetsError

_TYPES = (bool, int, float, str)
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


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
