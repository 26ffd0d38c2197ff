"""KubernetesCluster: a compute target's size and placement -> the Kubernetes Job of each step.

No Kubernetes cluster runs here. The job spec is checked against dagster-k8s's own types: the
step's ``dagster-k8s/config`` tag is read from a real pipeline's built Definitions, parsed by
``get_user_defined_k8s_config`` and turned into the actual ``V1Job`` by
``construct_dagster_k8s_job`` (and, in one test, by dagster-k8s's ``K8sStepHandler.launch_step``
behind our executor, with the Kubernetes batch API replaced by a recorder: the only mock, as the
style guide allows for Kubernetes). The manifest is then serialized with the kubernetes client's
``ApiClient().sanitize_for_serialization``, as it is sent to the API server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test
from dagster._core.execution.api import create_execution_plan
from pydantic import ValidationError

from aml_assets import ComputeTargetError, KubernetesCluster, LocalDatastore, LocalProcessCluster
from aml_assets.compute.cluster import COMPUTE_TAG
from aml_assets.compute.kubernetes import (
    GPU_RESOURCE,
    VM_SIZES,
    kubernetes_executor,
    preset_resources,
)
from tests.support.runs import materializations, step_failure_messages
from tests.support.small import small_pipeline

#: The target of the tests' pipeline: a GPU size, placed on a tainted GPU node pool.
TARGET = dict(
    image="myregistry.azurecr.io/aml-project:1.4",
    namespace="aml-jobs",
    vm_size="STANDARD_NC6",
    node_selector={"agentpool": "gpupool"},
    tolerations=[{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    service_account="aml-steps",
    env={"AML_LOG_LEVEL": "debug"},
    env_secrets=["datastore-credentials"],
    image_pull_policy="IfNotPresent",
    max_nodes=3,
)


def _defs(root: Path, **target):
    return small_pipeline(root).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": KubernetesCluster(**{**TARGET, **target})}
    )


def _step_tags(defs, step: str = "copy") -> dict[str, str]:
    """The tags dagster-k8s's step handler reads for ``step`` (from the job's execution plan)."""
    plan = create_execution_plan(defs.resolve_job_def("small"))
    return dict(plan.get_step_by_key(step).tags)


def _executor_config(defs, run_config: dict | None = None) -> dict:
    """The job's executor config with ``run_config``, as dagster-k8s's executor receives it."""
    from dagster._config import process_config

    result = process_config(
        defs.resolve_job_def("small").executor_def.config_schema.config_type, run_config or {}
    )
    assert result.success, result.errors
    return result.value


def _step_job(tags: dict[str, str]):
    """The V1Job dagster-k8s builds for a step with ``tags``, on a Helm-chart-like deployment."""
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    job_config = DagsterK8sJobConfig(
        job_image="myregistry.azurecr.io/aml-project:default",  # the user deployment's image
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
    )
    return construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-0123456789abcdef",
        user_defined_k8s_config=get_user_defined_k8s_config(tags),
        component="step_worker",
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": "copy"}],
    )


def test_step_job_spec_built_by_dagster_k8s_from_the_pipelines_tags(tmp_path: Path):
    from kubernetes.client import ApiClient, V1Job
    from kubernetes.utils import parse_quantity

    defs = _defs(tmp_path)
    tags = _step_tags(defs)
    assert tags[COMPUTE_TAG] == "cpucluster"
    job = _step_job(tags)
    assert isinstance(job, V1Job)
    pod = job.spec.template.spec
    (container,) = pod.containers
    preset = preset_resources("STANDARD_NC6")
    assert container.resources.requests == preset["requests"]
    assert container.resources.limits == {**preset["limits"], GPU_RESOURCE: "1"}
    assert container.image == TARGET["image"]  # the target's image, not the deployment's
    assert container.image_pull_policy == "IfNotPresent"
    env = {e.name: e.value for e in container.env}
    assert env["AML_LOG_LEVEL"] == "debug" and env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    assert [s.secret_ref.name for s in container.env_from] == ["datastore-credentials"]
    assert pod.node_selector == {"agentpool": "gpupool"}
    assert [(t.key, t.operator, t.value, t.effect) for t in pod.tolerations] == [
        ("sku", "Equal", "gpu", "NoSchedule")
    ]
    assert pod.service_account_name == "aml-steps"
    assert pod.restart_policy == "Never"
    # The namespace is the create call's (the executor's job_namespace), not the manifest's: a
    # Job naming another namespace than the call's would be refused.
    assert _executor_config(defs)["job_namespace"] == "aml-jobs"
    assert job.metadata.namespace is None

    # What goes to the API server: camelCase, every value a JSON scalar, quantities valid.
    manifest = ApiClient().sanitize_for_serialization(job)
    json.dumps(manifest)
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert "namespace" not in manifest["metadata"]
    spec = manifest["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"agentpool": "gpupool"}
    assert spec["tolerations"] == [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]
    assert spec["serviceAccountName"] == "aml-steps"
    c = spec["containers"][0]
    assert c["image"] == TARGET["image"] and c["imagePullPolicy"] == "IfNotPresent"
    assert c["envFrom"] == [{"secretRef": {"name": "datastore-credentials"}}]
    assert c["resources"]["limits"][GPU_RESOURCE] == "1"
    for kind in ("requests", "limits"):
        for quantity in c["resources"][kind].values():
            parse_quantity(quantity)
    # A step sized as an NC6 (6 vCPUs, 56 GiB) asks for less than the node has, so it schedules.
    assert parse_quantity(c["resources"]["requests"]["cpu"]) < 6
    assert parse_quantity(c["resources"]["requests"]["memory"]) < 56 * 2**30


def test_explicit_cpu_and_memory_override_the_vm_size(tmp_path: Path):
    tags = _step_tags(_defs(tmp_path, vm_size="STANDARD_D2_V2", cpu="500m", memory="1536Mi", gpu=0))
    resources = _step_job(tags).spec.template.spec.containers[0].resources
    assert resources.requests == {"cpu": "500m", "memory": "1536Mi"}
    assert resources.limits == {"cpu": "500m", "memory": "1536Mi"}  # no GPU limit


def test_a_target_with_nothing_set_leaves_the_deployment_defaults(tmp_path: Path):
    defs = small_pipeline(tmp_path).to_definitions(
        {"workspace": LocalDatastore(), "cpucluster": KubernetesCluster()}
    )
    job = _step_job(_step_tags(defs))
    container = job.spec.template.spec.containers[0]
    assert container.image == "myregistry.azurecr.io/aml-project:default"
    assert container.resources.requests is None and container.resources.limits is None
    assert _executor_config(defs)["job_namespace"] == "default"


def test_the_executor_is_dagster_k8s_with_namespace_and_max_nodes(tmp_path: Path):
    defs = _defs(tmp_path)
    assert defs.resolve_job_def("small").executor_def.name == "aml_k8s"
    # Empty run config: our defaults, checked by dagster-k8s's own executor config schema.
    config = _executor_config(defs)
    assert config["job_namespace"] == "aml-jobs"
    assert config["max_concurrent"] == 3
    assert config["tag_concurrency_limits"] == [
        {"key": COMPUTE_TAG, "value": "cpucluster", "limit": 3}
    ]
    # Run config still overrides them (e.g. another namespace for a test deployment).
    assert _executor_config(defs, {"job_namespace": "staging"})["job_namespace"] == "staging"


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: nobody, user: {token: not-a-token}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody}}]
current-context: nowhere
"""

DEFS_FILE = """from pathlib import Path
from aml_assets import KubernetesCluster, LocalDatastore
from tests.support.small import small_pipeline
defs = small_pipeline(Path(__file__).parent).to_definitions(
    {{"workspace": LocalDatastore(), "cpucluster": KubernetesCluster(**{target})}}
)
"""


class _RecordingBatchApi:
    """Stands in for the Kubernetes batch API: records the Jobs dagster-k8s would create."""

    def __init__(self):
        self.created: list[tuple[str, object]] = []

    def create_namespaced_job(self, body, namespace, **_):
        self.created.append((namespace, body))


def test_dagster_k8s_step_handler_creates_the_step_job_in_the_targets_namespace(tmp_path: Path):
    """The whole dagster-k8s path: our executor -> K8sStepHandler.launch_step -> create Job."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
    from dagster._core.execution.context_creation_job import create_context_free_log_manager
    from dagster._core.execution.retries import RetryMode
    from dagster._core.executor.init import InitExecutorContext
    from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
    from dagster._core.test_utils import create_run_for_test
    from dagster._grpc.types import ExecuteStepArgs

    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    (tmp_path / "k8s_defs.py").write_text(DEFS_FILE.format(target=repr(TARGET)))
    job = ReconstructableRepository.for_file(
        str(tmp_path / "k8s_defs.py"), "defs", working_directory=str(tmp_path)
    ).get_reconstructable_job("small")
    launcher = {
        "module": "dagster_k8s",
        "class": "K8sRunLauncher",
        "config": {  # what the Helm chart's runLauncher.config renders
            "service_account_name": "dagster",
            "instance_config_map": "dagster-instance",
            "postgres_password_secret": "dagster-postgresql-secret",
            "dagster_home": "/opt/dagster/dagster_home",
            "job_image": "myregistry.azurecr.io/aml-project:default",
            "load_incluster_config": False,
            "kubeconfig_file": str(tmp_path / "kubeconfig"),
        },
    }
    with instance_for_test(overrides={"run_launcher": launcher}) as instance:
        job_def = job.get_definition()
        executor_def = job_def.executor_def
        from dagster._config import process_config

        config = process_config(
            executor_def.config_schema.config_type,
            {"load_incluster_config": False, "kubeconfig_file": str(tmp_path / "kubeconfig")},
        )
        assert config.success, config.errors
        executor = executor_def.executor_creation_fn(
            InitExecutorContext(
                job=job, executor_def=executor_def, executor_config=config.value, instance=instance
            )
        )
        batch = _RecordingBatchApi()
        handler = executor._step_handler  # noqa: SLF001 - the step handler is what we check
        handler._api_client.batch_api = batch  # noqa: SLF001 - the Kubernetes mock
        run = create_run_for_test(
            instance, job_name="small", job_code_origin=job.get_python_origin()
        )
        plan = create_execution_plan(job)
        plan_context = PlanOrchestrationContext(
            plan_data=PlanData(
                job=job,
                dagster_run=run,
                instance=instance,
                execution_plan=plan,
                raise_on_error=True,
                retry_mode=RetryMode.DISABLED,
            ),
            log_manager=create_context_free_log_manager(instance, run),
            executor=executor,
            output_capture=None,
        )
        context = StepHandlerContext(
            instance=instance,
            plan_context=plan_context,
            steps=plan.steps,
            execute_step_args=ExecuteStepArgs(job.get_python_origin(), run.run_id, ["copy"]),
        )
        events = list(handler.launch_step(context))
    assert executor._max_concurrent == 3  # noqa: SLF001
    assert "Kubernetes job" in events[0].message
    ((namespace, body),) = batch.created
    assert namespace == "aml-jobs" and body.metadata.namespace is None  # created in aml-jobs
    pod = body.spec.template.spec
    container = pod.containers[0]
    assert container.image == TARGET["image"]
    assert container.resources.limits[GPU_RESOURCE] == "1"
    assert container.resources.requests == preset_resources("STANDARD_NC6")["requests"]
    assert pod.node_selector == {"agentpool": "gpupool"}
    assert pod.tolerations[0].key == "sku" and pod.service_account_name == "aml-steps"
    env = {e.name: e.value for e in container.env}
    assert env["DAGSTER_RUN_STEP_KEY"] == "copy" and env["AML_LOG_LEVEL"] == "debug"
    assert container.args[:3] == ["dagster", "api", "execute_step"]


# --- here, without Kubernetes ----------------------------------------------------------------------
def test_a_step_run_here_fails_naming_the_deployment_it_needs(
    tmp_path: Path, instance: DagsterInstance
):
    """execute_in_process ignores the job's executor: the step reaches start(), which refuses."""
    result = (
        _defs(tmp_path)
        .resolve_job_def("small")
        .execute_in_process(instance=instance, raise_on_error=False)
    )
    assert not result.success
    (message,) = step_failure_messages(result)
    assert "run as Kubernetes Jobs" in message and "k8s_job_executor" in message
    assert "LocalProcessCluster" in message  # the way to run it here
    assert "copied" not in materializations(result)


def test_a_run_on_an_instance_without_k8s_run_launcher_fails_before_any_step(tmp_path: Path):
    from dagster import execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    (tmp_path / "k8s_defs.py").write_text(DEFS_FILE.format(target=repr(TARGET)))
    job = ReconstructableRepository.for_file(
        str(tmp_path / "k8s_defs.py"), "defs", working_directory=str(tmp_path)
    ).get_reconstructable_job("small")
    with instance_for_test() as instance:
        result = execute_job(job, instance=instance, raise_on_error=False)
        logs = instance.all_logs(result.run_id)
    assert not result.success
    (failure,) = [
        r.dagster_event for r in logs if r.dagster_event and r.dagster_event.is_run_failure
    ]
    message = failure.event_specific_data.error.message
    assert (
        "K8sRunLauncher" in message and "DefaultRunLauncher" in message and "Helm chart" in message
    )
    assert not [r for r in logs if r.dagster_event and r.dagster_event.is_step_start]


def test_in_a_step_pod_the_script_runs_in_the_pod(
    tmp_path: Path, instance: DagsterInstance, monkeypatch
):
    """In the Job's pod (what dagster-k8s's step pod environment says), the step runs locally."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # set by the kubelet in every pod
    monkeypatch.setenv("DAGSTER_RUN_STEP_KEY", "copy")  # set by dagster-k8s on step pods
    result = (
        _defs(tmp_path)
        .resolve_job_def("small")
        .execute_in_process(instance=instance, raise_on_error=False)
    )
    assert result.success, step_failure_messages(result)
    assert materializations(result)["copied"]["dagster/row_count"] == 20


# --- validation, before anything runs ---------------------------------------------------------------
def test_unknown_vm_size_names_the_known_ones_and_the_closest():
    with pytest.raises(
        ValidationError,
        match=r"vm_size 'Standard_D2V2' is not a known VM size\. Did you mean 'STANDARD_D2_V2'\?",
    ) as err:
        KubernetesCluster(vm_size="Standard_D2V2")
    assert all(name in str(err.value) for name in VM_SIZES)
    assert KubernetesCluster(vm_size="standard_ds3_v2").vm_size == "STANDARD_DS3_V2"


@pytest.mark.parametrize(
    ("memory", "hint"),
    [
        ("2g", "did you mean '2Gi'"),
        ("512m", "did you mean '512Mi'"),
        ("lots", "use a number with a unit"),
        ("0", "no memory"),
    ],
)
def test_bad_memory_strings_are_refused_with_the_fix(memory: str, hint: str):
    with pytest.raises(ValidationError, match=hint):
        KubernetesCluster(memory=memory)


def test_bad_cpu_tolerations_namespace_and_pull_policy_are_refused():
    with pytest.raises(ValidationError, match="cpu '2Gi' is not a Kubernetes CPU quantity"):
        KubernetesCluster(cpu="2Gi")
    with pytest.raises(ValidationError, match="operator 'Exists' takes no value"):
        KubernetesCluster(tolerations=[{"key": "sku", "operator": "Exists", "value": "gpu"}])
    with pytest.raises(ValidationError, match="effect 'NoRun' is not one of"):
        KubernetesCluster(tolerations=[{"key": "sku", "value": "gpu", "effect": "NoRun"}])
    with pytest.raises(
        ValidationError, match="namespace 'AML_Jobs' is not a Kubernetes namespace name"
    ):
        KubernetesCluster(namespace="AML_Jobs")
    with pytest.raises(ValidationError, match="image_pull_policy 'ifnotpresent' is not one of"):
        KubernetesCluster(image_pull_policy="ifnotpresent")


def test_targets_in_two_namespaces_are_refused_when_the_definitions_are_built(tmp_path: Path):
    resources = {
        "workspace": LocalDatastore(),
        "cpucluster": KubernetesCluster(namespace="team-a"),
        "gpucluster": KubernetesCluster(namespace="team-b", vm_size="STANDARD_NC6"),
    }
    with pytest.raises(
        ComputeTargetError, match="namespaces team-a, team-b.*give them all the same namespace"
    ):
        small_pipeline(tmp_path).to_definitions(resources)


@pytest.mark.parametrize("order", ["celery first", "kubernetes first"])
def test_celery_and_kubernetes_targets_in_one_pipeline_are_refused_when_built(tmp_path: Path, order: str):
    """One run has one executor: mixing the two kinds would send Kubernetes steps to Celery
    workers (or the reverse), where they fail only when they start."""
    from aml_assets import CeleryCpuCluster

    targets = [
        ("cpucluster", CeleryCpuCluster(broker="redis://127.0.0.1:1/0")),
        ("gpucluster", KubernetesCluster(vm_size="STANDARD_NC6")),
    ]
    if order == "kubernetes first":
        targets = [(name, r) for (name, _), (_, r) in zip(targets, reversed(targets), strict=True)]
    with pytest.raises(ComputeTargetError, match="mix Celery clusters and Kubernetes clusters"):
        small_pipeline(tmp_path).to_definitions({"workspace": LocalDatastore(), **dict(targets)})


def test_max_nodes_is_the_targets_concurrency():
    assert KubernetesCluster(max_nodes=5).max_concurrent_steps == 5
    assert KubernetesCluster(max_nodes=2, max_concurrent_steps=3).max_concurrent_steps == 2
    executor = kubernetes_executor(
        {
            "cpucluster": KubernetesCluster(max_nodes=5),
            "local": LocalProcessCluster(max_concurrent_steps=2),
        }
    )
    from dagster._config import process_config

    value = process_config(executor.config_schema.config_type, {}).value
    assert value["max_concurrent"] == 7
    assert kubernetes_executor({"cpucluster": LocalProcessCluster()}) is None


def test_every_preset_fits_on_a_node_of_its_size():
    from kubernetes.utils import parse_quantity

    for name, vm in VM_SIZES.items():
        r = preset_resources(name)
        cpu, memory = parse_quantity(r["requests"]["cpu"]), parse_quantity(r["requests"]["memory"])
        assert 0.75 * vm.vcpus < cpu < vm.vcpus, name
        assert 0.5 * vm.memory_gib * 2**30 < memory < vm.memory_gib * 2**30, name
        assert r["limits"]["memory"] == r["requests"]["memory"]
        assert r["limits"].get(GPU_RESOURCE) == (str(vm.gpus) if vm.gpus else None)
