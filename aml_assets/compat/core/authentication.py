"""``azureml.core.authentication`` (v1): there is nothing to sign in to."""

from aml_assets.compat._support import missing_names

_NONE = (
    "nothing to sign in to: runs use the local Dagster instance, and an Azure Blob datastore "
    "takes its key or connection string from the environment (dagster.EnvVar) in its resource."
)
__getattr__ = missing_names(
    "aml_assets.compat.core.authentication",
    "azureml.core.authentication",
    {
        name: _NONE
        for name in (
            "InteractiveLoginAuthentication",
            "ServicePrincipalAuthentication",
            "MsiAuthentication",
            "AzureCliAuthentication",
            "TokenAuthentication",
        )
    },
)
