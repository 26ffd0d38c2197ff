"""The reference project's compute targets and datastores, as configuration."""
