"""``azureml.data.output_dataset_config`` (v1): ``OutputFileDatasetConfig``."""

from aml_assets.compat.data import OutputFileDatasetConfig

__all__ = ["OutputFileDatasetConfig"]
