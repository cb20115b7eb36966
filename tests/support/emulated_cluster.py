"""The MiniLM example's life on the emulated API, as the operator's component and reliability tests
play it: the resources to declare, the Job results the optimizer reports, and the cluster's part
(finishing Jobs, making Deployments ready) that no controller plays on the emulator.

Waits go through `wait_for`: `eventually` with this tier's bound and a 0.05 s poll.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from optiserve.api.crd import PLURAL
from optiserve.api.job import JobResult
from optiserve.api.rollout import RolloutSpec
from optiserve.api.spec import API_GROUP, API_VERSION
from optiserve.kube.client import DEPLOYMENTS, JOBS, PODS, KubeClient, Resource
from tests.support.eventually import eventually
from tests.support.job_results import PASSED
from tests.support.kube_emulator import resource_info
from tests.support.models import REPO_ROOT

NAMESPACE = "ml"
MODEL = "minilm"
OPTIMIZED_MODELS = Resource(f"{API_GROUP}/{API_VERSION}", "OptimizedModel", PLURAL)
EVENTS = Resource("v1", "Event", "events")
WAIT_S = 30.0
# kopf finds nothing to watch unless discovery also lists namespaces, CRDs and events.
DISCOVERY = {
    f"{API_GROUP}/{API_VERSION}/{PLURAL}": resource_info("OptimizedModel", status=True),
    "batch/v1/jobs": resource_info("Job", status=True),
    "apps/v1/deployments": resource_info("Deployment", status=True),
    "v1/services": resource_info("Service"),
    "v1/pods": resource_info("Pod", status=True),
    "v1/events": resource_info("Event"),
    "v1/namespaces": resource_info("Namespace", namespaced=False),
    "apiextensions.k8s.io/v1/customresourcedefinitions": resource_info("CustomResourceDefinition", namespaced=False),
}

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    """`eventually` with this tier's bound: poll every 0.05 s until `probe` returns something truthy."""
    return eventually(probe, timeout_s=timeout_s, interval_s=0.05, description=what)


def minilm_manifest() -> dict[str, Any]:
    document = yaml.safe_load((REPO_ROOT / "examples/minilm/optimizedmodel.yaml").read_text())
    document["metadata"]["namespace"] = NAMESPACE
    document["spec"]["rollout"] = RolloutSpec().model_dump(mode="json", by_alias=True, exclude_none=True)
    return dict(document)


def status_of(kube: KubeClient, name: str = MODEL) -> dict[str, Any]:
    found = kube.get(OPTIMIZED_MODELS, NAMESPACE, name)
    return dict((found or {}).get("status") or {})


def wait_phase(kube: KubeClient, phase: str, name: str = MODEL) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = status_of(kube, name)
        return status if status.get("phase") == phase else None

    return wait_for(reached, f"phase {phase}")


def conditions_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


def wait_condition(kube: KubeClient, kind: str, value: str, name: str = MODEL) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = status_of(kube, name)
        return status if conditions_of(status).get(kind, {}).get("status") == value else None

    return wait_for(reached, f"condition {kind}={value}")


def job_pod(job: str) -> str:
    """The name the Job controller gives the Job's (one) pod here."""
    return f"{job}-x7k2p"


def _ensure_job_pod(kube: KubeClient, job: str) -> str:
    pod = job_pod(job)
    if kube.get(PODS, NAMESPACE, pod) is None:
        labels = {"job-name": job, "batch.kubernetes.io/job-name": job}
        kube.create(
            PODS,
            NAMESPACE,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": NAMESPACE, "labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "optimize", "image": "optimizer"}]},
            },
        )
    return pod


def start_job_pod(kube: KubeClient, job: str, *, started: bool = True) -> str:
    """What the Job controller and kubelet report first: the Job's pod, its container running (or,
    not `started`, still being created: no log yet). Returns the pod's name."""
    pod = _ensure_job_pod(kube, job)
    state = {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if started else {"waiting": {"reason": "ContainerCreating"}}
    pod_status = {"phase": "Running" if started else "Pending", "containerStatuses": [{"name": "optimize", "state": state}]}
    kube.patch(PODS, NAMESPACE, pod, {"status": pod_status}, subresource="status")
    return pod


def finish_job(kube: KubeClient, job: str, result: JobResult) -> None:
    """What the Job controller and kubelet would report: the pod's termination message, then the condition."""
    exit_code = 0 if result.passed else 1
    pod = _ensure_job_pod(kube, job)
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": result.to_termination_message(),
    }
    pod_status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [{"name": "optimize", "state": {"terminated": terminated}}],
    }
    kube.patch(PODS, NAMESPACE, pod, {"status": pod_status}, subresource="status")
    condition = (
        {"type": "Complete", "status": "True"}
        if result.passed
        else {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    )
    kube.patch(JOBS, NAMESPACE, job, {"status": {"conditions": [condition]}}, subresource="status")


def make_ready(kube: KubeClient, deployment: dict[str, Any]) -> None:
    generation = deployment["metadata"]["generation"]
    status = {"observedGeneration": generation, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    kube.patch(DEPLOYMENTS, NAMESPACE, deployment["metadata"]["name"], {"status": status}, subresource="status")


def model_objects(kube: KubeClient, resource: Resource) -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube.select(resource, NAMESPACE, f"optiserve.io/model={MODEL}"))


def promote_first_candidate(kube: KubeClient) -> dict[str, Any]:
    """Apply the example, finish its Job with a passing result, make the candidate ready."""
    kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
    wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
    finish_job(kube, "minilm-optimize-g1", PASSED)
    candidate = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate"), "the candidate Deployment")
    make_ready(kube, candidate)
    return wait_phase(kube, "Promoted")


def job_key(generation: int) -> tuple[Resource, str, str]:
    """The (resource, namespace, name) of the optimization Job of `generation`, for `kube.get`."""
    return JOBS, NAMESPACE, f"minilm-optimize-g{generation}"
