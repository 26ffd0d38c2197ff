"""``azureml.core.conda_dependencies`` (v1): ``CondaDependencies`` (pip packages only)."""

from aml_assets.compat.core._environment import CondaDependencies

__all__ = ["CondaDependencies"]
