"""Kubernetes as a CPU cluster: each step on the target runs as its own Kubernetes Job.

``KubernetesCluster`` does not start anything itself. It describes the pod a step needs (size,
image, node selector, tolerations, ...) as dagster-k8s's per-step ``dagster-k8s/config`` op tag,
and ``kubernetes_executor`` gives the pipeline's job dagster-k8s's ``k8s_job_executor``, which
creates one Kubernetes Job per step from that tag. This only works on a Dagster deployment whose
run launcher is ``K8sRunLauncher`` (the ``dagster/dagster`` Helm chart); see the README's
"Kubernetes" section for the chart values. Inside the step's pod the script runs as a local
process, exactly as on a ``LocalProcessCluster``.

dagster-k8s (and the kubernetes client it pulls in, ~0.7 s) is imported only where it is used,
so a project without a Kubernetes target never pays for it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from dagster import Config, DagsterUnmetExecutorRequirementsError, ExecutorDefinition, Field
from pydantic import Field as PydanticField
from pydantic import field_validator, model_validator

from aml_assets.compute.cluster import COMPUTE_TAG, CpuCluster, start_local_process
from aml_assets.compute.spark import SparkPool
from aml_assets.errors import ComputeTargetError

#: The op tag dagster-k8s's executor reads a step's pod and job settings from.
K8S_CONFIG_TAG = "dagster-k8s/config"
#: Extended resource name of an NVIDIA GPU (the NVIDIA device plugin, as on AKS GPU node pools).
GPU_RESOURCE = "nvidia.com/gpu"


class KubernetesDeploymentError(ComputeTargetError, DagsterUnmetExecutorRequirementsError):
    """The Dagster instance cannot run steps as Kubernetes Jobs (its run launcher is not
    K8sRunLauncher). Also a Dagster error, so Dagster records it as the run's failure, before any
    step starts, instead of the run process crashing."""


@dataclass(frozen=True)
class VmSize:
    """An Azure VM size: what one node of that size has."""

    vcpus: int
    memory_gib: float
    gpus: int = 0


#: Azure VM sizes common for Azure ML compute clusters (names as in ``AmlCompute(vm_size=...)``).
VM_SIZES: dict[str, VmSize] = {
    "STANDARD_D2_V2": VmSize(2, 7),
    "STANDARD_D3_V2": VmSize(4, 14),
    "STANDARD_D4_V2": VmSize(8, 28),
    "STANDARD_D5_V2": VmSize(16, 56),
    "STANDARD_D11_V2": VmSize(2, 14),
    "STANDARD_D12_V2": VmSize(4, 28),
    "STANDARD_DS2_V2": VmSize(2, 7),
    "STANDARD_DS3_V2": VmSize(4, 14),
    "STANDARD_DS4_V2": VmSize(8, 28),
    "STANDARD_D2S_V3": VmSize(2, 8),
    "STANDARD_D4S_V3": VmSize(4, 16),
    "STANDARD_D8S_V3": VmSize(8, 32),
    "STANDARD_E4S_V3": VmSize(4, 32),
    "STANDARD_E8S_V3": VmSize(8, 64),
    "STANDARD_F4S_V2": VmSize(4, 8),
    "STANDARD_NC6": VmSize(6, 56, gpus=1),
    "STANDARD_NC12": VmSize(12, 112, gpus=2),
    "STANDARD_NC6S_V3": VmSize(6, 112, gpus=1),
    "STANDARD_NC4AS_T4_V3": VmSize(4, 28, gpus=1),
}

#: Left on every node for system DaemonSets (kube-proxy, CNI, CSI, log and metrics agents).
_DAEMONSET_CPU_MILLI = 200
_DAEMONSET_MEMORY_MI = 512


def _aks_allocatable(vm: VmSize) -> tuple[int, int]:
    """(millicores, MiB) AKS leaves allocatable to pods on one node of size ``vm``.

    AKS reserves CPU for the kubelet by core count and memory by a regressive rate plus a 750Mi
    eviction threshold (learn.microsoft.com/azure/aks/node-resource-reservations, the more
    conservative pre-1.29 memory rule), so a pod sized from this fits on such a node.
    """
    cpu_reserved = {1: 60, 2: 100, 4: 140, 8: 180, 16: 260, 32: 420, 64: 740}
    cores = min(cpu_reserved, key=lambda c: (abs(c - vm.vcpus), c))
    memory_gib, left, reserved_gib = vm.memory_gib, vm.memory_gib, 0.0
    for size, rate in ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (math.inf, 0.02)):
        part = min(left, size)
        reserved_gib += part * rate
        left -= part
    return vm.vcpus * 1000 - cpu_reserved[cores], int((memory_gib - reserved_gib) * 1024) - 750


def preset_resources(vm_size: str) -> dict[str, dict[str, str]]:
    """The container ``resources`` (requests and limits) of a step sized as one ``vm_size`` node.

    Requests are what such a node leaves to pods, less room for system DaemonSets: the step gets
    a node of that size to itself (as an AmlCompute node runs one step) and still schedules.
    The CPU limit is the node's cores (a step may use idle ones); the memory limit equals the
    request, so a step that outgrows its size is OOM-killed with that reason instead of pushing
    the node into memory pressure and getting other pods evicted.
    """
    vm = VM_SIZES[vm_size]
    cpu_milli, memory_mi = _aks_allocatable(vm)
    cpu = f"{(cpu_milli - _DAEMONSET_CPU_MILLI) // 100 * 100}m"
    memory = f"{(memory_mi - _DAEMONSET_MEMORY_MI) // 128 * 128}Mi"
    limits = {"cpu": str(vm.vcpus), "memory": memory}
    if vm.gpus:
        # Kubernetes takes GPUs (extended resources) from limits; requests default to them.
        limits[GPU_RESOURCE] = str(vm.gpus)
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


# --- quantities ---------------------------------------------------------------------------------
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$"
)
_SPARK_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kmgt])b?$", re.IGNORECASE)


def memory_quantity_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes memory quantity for a step, or None if it is one."""
    text = value.strip() if isinstance(value, str) else ""
    match = _QUANTITY.match(text)
    if match is not None and match["suffix"] != "m":
        if Decimal(match["number"]) == 0:
            return f"'{value}' is no memory at all; give the step at least '64Mi'"
        return None
    # "2g" and "512m" are Spark's way of writing sizes; in Kubernetes "512m" even parses, as
    # 0.512 bytes, so both get the size they surely meant as a hint.
    spark_style = _SPARK_SIZE.match(text)
    hint = f" (did you mean '{spark_style[1]}{spark_style[2].upper()}i'?)" if spark_style else ""
    return (
        f"'{value}' is not a Kubernetes memory quantity{hint}; use a number with a unit such as "
        "'512Mi', '4Gi' or '4G' (Spark-style '4g' and '512m' mean other things, or nothing, in "
        "Kubernetes)"
    )


def cpu_quantity_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes CPU quantity, or None if it is one."""
    match = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if match is None or match["suffix"] not in (None, "m"):
        return (
            f"'{value}' is not a Kubernetes CPU quantity; use cores such as '2' or '0.5', or "
            "millicores such as '500m'"
        )
    if Decimal(match["number"]) == 0:
        return f"'{value}' is no CPU at all; give the step at least '100m'"
    return None


# --- names --------------------------------------------------------------------------------------
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class Toleration(Config):
    """A taint the step's pod tolerates (Kubernetes ``Toleration``)."""

    key: str | None = PydanticField(
        default=None, description="Taint key; unset with operator 'Exists' tolerates every taint."
    )
    operator: str = PydanticField(default="Equal", description="'Equal' or 'Exists'.")
    value: str | None = PydanticField(default=None, description="Taint value (operator 'Equal').")
    effect: str | None = PydanticField(
        default=None, description="'NoSchedule', 'PreferNoSchedule' or 'NoExecute'; unset: all."
    )
    toleration_seconds: int | None = PydanticField(
        default=None,
        ge=0,
        description="With effect 'NoExecute': how long the pod stays once tainted.",
    )

    @model_validator(mode="after")
    def _valid(self) -> Toleration:
        where = f"toleration {self.to_dict()}"
        if self.operator not in ("Equal", "Exists"):
            raise ValueError(f"{where}: operator '{self.operator}' is not 'Equal' or 'Exists'")
        if self.operator == "Exists" and self.value:
            raise ValueError(f"{where}: operator 'Exists' takes no value; drop it or use 'Equal'")
        if self.key is None and self.operator != "Exists":
            raise ValueError(f"{where} has no key; only operator 'Exists' may leave it out")
        if self.effect is not None and self.effect not in _TOLERATION_EFFECTS:
            raise ValueError(
                f"{where}: effect '{self.effect}' is not one of {', '.join(_TOLERATION_EFFECTS)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The toleration as Kubernetes takes it (snake_case, as dagster-k8s's config does)."""
        return {k: v for k, v in dict(self).items() if v is not None}


class KubernetesCluster(CpuCluster):
    """A CPU cluster on Kubernetes: every step on it runs as its own Kubernetes Job (dagster-k8s).

    Size the step's pod with ``vm_size`` (an Azure VM size as in ``AmlCompute``) or explicit
    ``cpu``/``memory``; place it with ``node_selector`` and ``tolerations``. ``max_nodes`` is how
    many steps on this target run at once in one run. Works only on a Kubernetes deployment of
    Dagster (``K8sRunLauncher``); the README's "Kubernetes" section shows the Helm values.

    Example::

        "cpucluster": KubernetesCluster(
            image="myregistry.azurecr.io/aml-project:1.4",
            namespace="dagster",
            vm_size="STANDARD_D4_V2",
            node_selector={"agentpool": "cpupool"},
            max_nodes=4,
        )
    """

    image: str | None = PydanticField(
        default=None,
        description="Container image of the step's pod (it must hold the project and its "
        "dependencies). Unset: the image of the code location (the Helm chart's "
        "dagster-user-deployments image).",
    )
    namespace: str = PydanticField(
        default="default", description="Kubernetes namespace the step Jobs are created in."
    )
    vm_size: str | None = PydanticField(
        default=None,
        description="Azure VM size each step is sized as, e.g. 'STANDARD_D2_V2', "
        "'STANDARD_DS3_V2', 'STANDARD_NC6' (GPU): requests what one node of that size leaves to "
        "pods (see preset_resources). Case does not matter.",
    )
    cpu: str | None = PydanticField(
        default=None,
        description="CPU request and limit of the step's container ('2', '500m'); overrides "
        "vm_size's.",
    )
    memory: str | None = PydanticField(
        default=None,
        description="Memory request and limit of the step's container ('4Gi', '512Mi'); "
        "overrides vm_size's.",
    )
    gpu: int | None = PydanticField(
        default=None, ge=0, description=f"GPUs ({GPU_RESOURCE}) per step; overrides vm_size's."
    )
    node_selector: dict[str, str] = PydanticField(
        default_factory=dict,
        description="Node labels the step's pod must run on, e.g. {'agentpool': 'gpupool'} or "
        "{'node.kubernetes.io/instance-type': 'Standard_D4_v2'}.",
    )
    tolerations: list[Toleration] = PydanticField(
        default_factory=list,
        description="Taints the step's pod tolerates (Kubernetes toleration dicts), e.g. "
        "[{'key': 'sku', 'operator': 'Equal', 'value': 'gpu', 'effect': 'NoSchedule'}].",
    )
    service_account: str | None = PydanticField(
        default=None,
        description="Service account of the step's pod (e.g. one with workload identity for "
        "the datastore). Unset: the executor's (the namespace's 'default').",
    )
    env: dict[str, str] = PydanticField(
        default_factory=dict,
        description="Environment variables of the step's container. They are stored in the "
        "job's tags: put secrets in env_secrets instead.",
    )
    env_secrets: list[str] = PydanticField(
        default_factory=list,
        description="Kubernetes Secrets whose keys become environment variables of the step "
        "(envFrom), e.g. the datastore's credentials.",
    )
    image_pull_policy: str | None = PydanticField(
        default=None, description="Image pull policy of the step's container. Unset: 'Always'."
    )
    max_nodes: int = PydanticField(
        default=4,
        ge=1,
        description="How many steps on this target may run at once in one run (one pod each), "
        "like AmlCompute's max_nodes. max_concurrent_steps is always set from it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _concurrency_follows_max_nodes(cls, data: Any) -> Any:
        # One pod per step, each sized as one node: max_nodes is the concurrency, as on
        # AmlCompute. Always derived (Dagster may rebuild the resource with the inherited field's
        # default filled in, so a given value cannot be told from a default one).
        if isinstance(data, Mapping):
            return {**data, "max_concurrent_steps": data.get("max_nodes", 4)}
        return data

    @field_validator("vm_size")
    @classmethod
    def _known_vm_size(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().upper()
        if name not in VM_SIZES:
            close = difflib.get_close_matches(name, list(VM_SIZES), n=1)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            raise ValueError(
                f"vm_size '{value}' is not a known VM size. {hint}Known sizes: "
                f"{', '.join(VM_SIZES)}; or leave vm_size unset and give cpu= and memory= "
                "(e.g. cpu='4', memory='16Gi')"
            )
        return name

    @field_validator("memory")
    @classmethod
    def _valid_memory(cls, value: str | None) -> str | None:
        if value is not None and (problem := memory_quantity_problem(value)):
            raise ValueError(f"memory {problem}")
        return value.strip() if value is not None else None

    @field_validator("cpu")
    @classmethod
    def _valid_cpu(cls, value: str | None) -> str | None:
        if value is not None and (problem := cpu_quantity_problem(value)):
            raise ValueError(f"cpu {problem}")
        return value.strip() if value is not None else None

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        if len(value) > 63 or not _DNS_LABEL.match(value):
            raise ValueError(
                f"namespace '{value}' is not a Kubernetes namespace name; use at most 63 "
                "lowercase letters, digits and '-', starting and ending with a letter or digit"
            )
        return value

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in value if not _ENV_NAME.match(k))
        if bad:
            raise ValueError(
                f"env names {bad} are not valid environment variable names; use letters, "
                "digits, '_', '-' and '.', not starting with a digit"
            )
        return value

    @field_validator("image_pull_policy")
    @classmethod
    def _valid_pull_policy(cls, value: str | None) -> str | None:
        if value is not None and value not in _PULL_POLICIES:
            raise ValueError(
                f"image_pull_policy '{value}' is not one of {', '.join(_PULL_POLICIES)} (case matters)"
            )
        return value

    # --- the step's pod ------------------------------------------------------------------------
    def container_resources(self) -> dict[str, dict[str, str]]:
        """The step container's ``resources``: vm_size's preset, then explicit cpu/memory/gpu."""
        resources = (
            preset_resources(self.vm_size) if self.vm_size else {"requests": {}, "limits": {}}
        )
        for name, value in (("cpu", self.cpu), ("memory", self.memory)):
            if value is not None:
                resources["requests"][name] = resources["limits"][name] = value
        if self.gpu is not None:
            resources["limits"].pop(GPU_RESOURCE, None)
            if self.gpu:
                resources["limits"][GPU_RESOURCE] = str(self.gpu)
        return {k: v for k, v in resources.items() if v}

    def step_k8s_config(self) -> dict[str, Any]:
        """This target's pod and job settings, as dagster-k8s's ``dagster-k8s/config`` tag value."""
        container: dict[str, Any] = {}
        if resources := self.container_resources():
            container["resources"] = resources
        if self.image:
            container["image"] = self.image
        if self.image_pull_policy:
            container["image_pull_policy"] = self.image_pull_policy
        if self.env:
            container["env"] = [{"name": k, "value": v} for k, v in sorted(self.env.items())]
        if self.env_secrets:
            container["env_from"] = [{"secret_ref": {"name": s}} for s in self.env_secrets]
        pod: dict[str, Any] = {}
        if self.node_selector:
            pod["node_selector"] = dict(self.node_selector)
        if self.tolerations:
            pod["tolerations"] = [t.to_dict() for t in self.tolerations]
        if self.service_account:
            pod["service_account_name"] = self.service_account
        # Not the namespace: the executor creates every Job of a run in its job_namespace
        # (kubernetes_executor's default is this), and a Job naming another one is refused.
        return {"container_config": container, "pod_spec_config": pod}

    def start(
        self, command: Sequence[str], env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        """In a step's pod, run the script there; anywhere else, refuse with the fix."""
        if not _in_step_pod():
            raise ComputeTargetError(
                "Steps on a KubernetesCluster run as Kubernetes Jobs, created by dagster-k8s's "
                "k8s_job_executor on a Kubernetes deployment of Dagster (the dagster/dagster Helm "
                "chart, run launcher K8sRunLauncher); this process is not in such a Job's pod, so "
                "the step cannot start here. Deploy the project with the chart (docs/scaling-out.md, "
                "'Kubernetes'), or give this compute target a LocalProcessCluster (or a Celery "
                "cluster) to run it on this machine."
            )
        # The pod is the step's node: the script runs in it as on a local cluster.
        return start_local_process(command, env, cwd)


def _in_step_pod() -> bool:
    """Whether this process runs in a step pod launched by dagster-k8s's executor."""
    # The kubelet sets KUBERNETES_SERVICE_HOST in every pod; dagster-k8s's step handler sets
    # DAGSTER_RUN_STEP_KEY on the step's container only.
    return all(os.environ.get(name) for name in ("KUBERNETES_SERVICE_HOST", "DAGSTER_RUN_STEP_KEY"))


# --- Dagster: per-op tags and the executor ------------------------------------------------------
def kubernetes_op_tags(step_target: str, resource: Any) -> dict[str, str]:
    """The op tags of a step on ``step_target`` (``{}`` unless it is a ``KubernetesCluster``).

    The value is checked with dagster-k8s's own parser (``get_user_defined_k8s_config``), so a
    setting Kubernetes would refuse fails when the Definitions are built, not in a pod.
    """
    if not isinstance(resource, KubernetesCluster):
        return {}
    from dagster_k8s.job import get_user_defined_k8s_config

    tags = {K8S_CONFIG_TAG: json.dumps(resource.step_k8s_config(), sort_keys=True)}
    try:
        get_user_defined_k8s_config(tags)
    except Exception as exc:  # dagster-k8s raises plain Exception for unknown fields
        raise ComputeTargetError(
            f"Compute target '{step_target}': its Kubernetes settings are not valid for "
            f"dagster-k8s: {exc}"
        ) from exc
    return tags


def kubernetes_executor(resources: Mapping[str, Any]) -> ExecutorDefinition | None:
    """dagster-k8s's ``k8s_job_executor`` set up for the pipeline's Kubernetes targets, or None.

    Defaults (each can still be set in run config under ``execution.config``): the Jobs'
    namespace, ``max_concurrent`` = every target's concurrency added up, and a
    ``tag_concurrency_limits`` entry per compute target (``max_nodes`` for a Kubernetes one).
    The run fails before any step starts, naming the fix, when the instance's run launcher is
    not ``K8sRunLauncher`` (dagster-k8s needs it for the step Jobs' image and instance config).
    """
    clusters = {k: r for k, r in resources.items() if isinstance(r, KubernetesCluster)}
    if not clusters:
        return None
    namespaces = sorted({c.namespace for c in clusters.values()})
    if len(namespaces) > 1:
        raise ComputeTargetError(
            f"Kubernetes compute targets {', '.join(sorted(clusters))} use namespaces "
            f"{', '.join(namespaces)}; one run's step Jobs are created in one namespace (the "
            "k8s_job_executor's job_namespace): give them all the same namespace"
        )
    from dagster_k8s import k8s_job_executor

    limits = [
        {"key": COMPUTE_TAG, "value": key, "limit": r.max_concurrent_steps}
        for key, r in sorted(resources.items())
        if isinstance(r, CpuCluster)
    ] + [
        {"key": COMPUTE_TAG, "value": key, "limit": 1}
        for key, r in sorted(resources.items())
        if isinstance(r, SparkPool)
    ]
    defaults = {
        "job_namespace": namespaces[0],
        "max_concurrent": sum(limit["limit"] for limit in limits),
        "tag_concurrency_limits": limits,
    }
    fields = dict(k8s_job_executor.config_schema.config_type.fields)
    for name, value in defaults.items():
        field = fields[name]
        fields[name] = Field(
            field.config_type, default_value=value, is_required=False, description=field.description
        )

    def _create(init_context):
        from dagster_k8s import K8sRunLauncher

        launcher = init_context.instance.run_launcher
        if not isinstance(launcher, K8sRunLauncher):
            raise KubernetesDeploymentError(
                f"Compute target(s) {', '.join(sorted(clusters))} run steps as Kubernetes Jobs "
                "(dagster-k8s's k8s_job_executor), which needs a Dagster instance whose run "
                f"launcher is K8sRunLauncher; this instance's is {type(launcher).__name__}. "
                "Deploy with the dagster/dagster Helm chart (runLauncher.type: K8sRunLauncher; "
                "docs/scaling-out.md, 'Kubernetes'), or configure these targets as LocalProcessCluster (or a "
                "Celery cluster) to run here."
            )
        return k8s_job_executor.executor_creation_fn(init_context)

    return ExecutorDefinition(
        name="aml_k8s",
        config_schema=fields,
        requirements=k8s_job_executor.get_requirements,
        executor_creation_fn=_create,
        description="Each step as a Kubernetes Job (dagster-k8s), sized by its compute target.",
    )
