"""``azureml.pipeline``'s v1 paths: ``steps`` and ``core``."""
