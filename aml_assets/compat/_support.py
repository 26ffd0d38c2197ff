"""What the v1 compatibility modules share: the error of a v1 name without a counterpart, the
module-level lookup that raises it, and how v1 objects name a resource."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from aml_assets.errors import AmlAssetsError


class NoCounterpartError(AmlAssetsError):
    """A v1 SDK feature that aml-assets does not have; the message says what to use instead."""


class NoCounterpartImportError(NoCounterpartError, ImportError):
    """A v1 name without a counterpart, imported from a compat module."""


def no_counterpart(what: str, instead: str) -> NoReturn:
    """Raise ``NoCounterpartError`` for ``what`` (a v1 feature), naming what to use instead."""
    raise NoCounterpartError(f"{what} has no counterpart in aml-assets. Instead: {instead}")


def missing_names(module: str, v1_module: str, missing: Mapping[str, str]):
    """A module ``__getattr__`` raising ``NoCounterpartImportError`` for the v1 names in
    ``missing`` (name -> what to use instead), and ``AttributeError`` for any other."""

    def __getattr__(name: str) -> Any:
        if name in missing:
            raise NoCounterpartImportError(
                f"{v1_module}.{name} has no counterpart in aml-assets. Instead: {missing[name]}",
                name=name,
                path=None,
            )
        raise AttributeError(f"module '{module}' has no attribute '{name}'")

    return __getattr__


def resource_name(value: Any, what: str) -> str | None:
    """The resource key a v1 argument names: a string, an object with ``.name`` (a compute
    target, a datastore), or a ``(name, type)`` tuple; None stays None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        return value[0]
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(
        f"{what} {value!r} names no resource; give the resource key (a str) of a compute target "
        "or datastore configured in your Definitions' resources"
    )


def v1_step_name(name: str | None) -> str:
    """A v1 step name as a step name here: v1 allows dashes (``synapse-spark``), a Dagster op
    name does not, so they become underscores (``synapse_spark``); None stays "" (the step's
    default name, from its script)."""
    return (name or "").replace("-", "_")


def compute_key(value: Any, what: str = "compute_target") -> str | None:
    """The resource key of a v1 compute target: v1 names may hold dashes (``link1-spark01``),
    a Dagster resource key may not, so they become underscores (``link1_spark01``), as step
    names do. Datastore names need no mapping (v1 allows no dash in them)."""
    name = resource_name(value, what)
    return None if name is None else name.replace("-", "_")


class BuildsOurs(type):
    """Metaclass of a v1 class name whose call builds the aml-assets object (``__new__``):
    ``isinstance(x, V1Name)`` is ``isinstance(x, Ours)``, and ``dataclasses.replace`` on what
    it built keeps working (the object is ours, not a subclass with another signature)."""

    _ours: type

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls._ours)
