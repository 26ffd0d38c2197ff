"""Typed pipeline parameters (Azure ML's ``PipelineParameter``), set per run from config or UI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_TYPES = (bool, int, float, str)


@dataclass(frozen=True, eq=False)
class PipelineParameter:
    """A named, typed value a run may override; usable as a step argument.

    The type is the default's type (``bool``, ``int``, ``float`` or ``str``) unless given.
    """

    name: str
    default_value: Any
    description: str | None = None
    type: type | None = None

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

    def __repr__(self) -> str:
        return f"<parameter {self.name}={self.default_value!r}>"
