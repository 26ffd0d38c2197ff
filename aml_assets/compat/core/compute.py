"""``azureml.core.compute`` (v1): a compute target is a configured resource here, named by its
resource key; creating or provisioning one at run time says what to configure instead."""

from __future__ import annotations

from typing import Any, NoReturn

from aml_assets.compat._support import missing_names, no_counterpart

__all__ = ["AmlCompute", "ComputeTarget"]

_CONFIGURE = (
    "configure it as a resource in your Definitions (resources/compute.py in the reference "
    "project): LocalProcessCluster(max_concurrent_steps=...) for script steps, "
    "SparkPool(master=... or remote='sc://...') for Spark steps; then name it by its key."
)


class ComputeTarget:
    """v1's ``ComputeTarget(workspace, name)``: the compute target whose resource key is ``name``."""

    def __init__(self, workspace: Any = None, name: str = "cpucluster"):
        self.workspace, self.name = workspace, name

    def __repr__(self) -> str:
        return f"ComputeTarget('{self.name}')"

    @staticmethod
    def create(workspace: Any, name: str, provisioning_configuration: Any = None) -> NoReturn:
        """v1 provisions compute in Azure; compute targets are configured resources here."""
        no_counterpart(f"ComputeTarget.create('{name}')", _CONFIGURE)

    @staticmethod
    def attach(workspace: Any, name: str, attach_configuration: Any = None) -> NoReturn:
        """v1 attaches an Azure resource (a Synapse pool, ...); compute targets are configured
        resources here."""
        no_counterpart(f"ComputeTarget.attach('{name}')", _CONFIGURE)

    def wait_for_completion(self, show_output: bool = False, **_: Any) -> None:
        """Nothing to wait for: a configured resource is ready when the run starts."""


class AmlCompute(ComputeTarget):
    """v1's ``AmlCompute``: a CPU cluster named by its resource key."""

    @staticmethod
    def provisioning_configuration(**_: Any) -> NoReturn:
        """v1 describes a cluster to provision; configure the resource instead."""
        no_counterpart("AmlCompute.provisioning_configuration", _CONFIGURE)


__getattr__ = missing_names(
    "aml_assets.compat.core.compute",
    "azureml.core.compute",
    {
        "DatabricksCompute": "a SparkPool with remote='sc://<host>:<port>/;token=...' (Databricks "
        "Connect / Spark Connect).",
        "AksCompute": "no model deployment here; a KubernetesCluster compute target runs steps as Kubernetes Jobs (docs/scaling-out.md).",
        "ComputeInstance": "run locally (LocalProcessCluster).",
        "SynapseCompute": "a SparkPool resource (name it as the step's compute_target).",
    },
)
