"""The script side of aml-assets: what a step's script imports (no Dagster needed).

.. code-block:: python

    from amlrun import Run

    run = Run.get_context()
    df = run.input_datasets["titanic"].to_pandas_dataframe()
    run.log("accuracy", 0.83)

A script run outside a pipeline gets an *offline* run: metrics are printed, and inputs come from
its own arguments, so the same script is debuggable with plain ``python script.py --args``.
"""

from amlrun.context import DatasetHandle, Run

__all__ = ["DatasetHandle", "Run"]
