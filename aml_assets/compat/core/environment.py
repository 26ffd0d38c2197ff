"""``azureml.core.environment`` (v1): ``Environment`` and ``CondaDependencies``."""

from aml_assets.compat.core._environment import CondaDependencies
from aml_assets.compat.core._objects import Environment

__all__ = ["CondaDependencies", "Environment"]
