"""Services around a pipeline: the Dagster instance it runs on."""
