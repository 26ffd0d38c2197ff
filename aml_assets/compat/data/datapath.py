"""``azureml.data.datapath`` (v1): ``DataPath`` and ``DataPathComputeBinding`` are ours."""

from aml_assets.pipeline.datapath import DataPath, DataPathComputeBinding

__all__ = ["DataPath", "DataPathComputeBinding"]
