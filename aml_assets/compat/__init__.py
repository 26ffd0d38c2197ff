"""Azure ML SDK v1 import paths over aml-assets: port a v1 pipeline by changing its imports.

.. code-block:: python

    # was: from azureml.pipeline.steps import PythonScriptStep
    from aml_assets.compat.pipeline.steps import PythonScriptStep
    # was: from azureml.pipeline.core import Pipeline, PipelineParameter
    from aml_assets.compat.pipeline.core import Pipeline, PipelineParameter
    # was: from azureml.core import Run, Experiment, Datastore, Dataset, Environment
    from aml_assets.compat.core import Run, Experiment, Datastore, Dataset, Environment
    # was: import azureml.core   (then azureml.core.VERSION, ...)
    import aml_assets.compat as azureml

Each v1 name with a counterpart builds (or is) the aml-assets object, taking v1's argument
names; a v1 name without one (``AdlaStep``, ``DatabricksStep``, ``ComputeTarget.create``,
Azure AD authentication, ...) raises ``NoCounterpartError`` where it is imported or used, saying
what to use instead. The migration guide maps every v1 class.
"""

import importlib
from typing import Any

from aml_assets.compat._support import NoCounterpartError, NoCounterpartImportError

__all__ = ["NoCounterpartError", "NoCounterpartImportError"]

_SUBPACKAGES = ("core", "data", "pipeline")


def __getattr__(name: str) -> Any:
    # ``import azureml.core`` becomes ``import aml_assets.compat as azureml``: code then says
    # ``azureml.core.VERSION`` / ``azureml.core.Run`` as before, the subpackage loaded on first use.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module '{__name__}' has no attribute '{name}'")
