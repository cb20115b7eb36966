"""The MiniLM model on a REAL kube-apiserver, as the cluster tier's operator tests and the reliability
tier's GitOps test play it: the CRD installed, a namespace per test, the manifest applied
server-side as a GitOps controller would, the Job finished and the pods made ready by the test
(tests/support/kubelet_role.py), the real controllers doing the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from optiserve.api.crd import PLURAL
from optiserve.api.job import JobResult
from optiserve.api.rollout import RolloutSpec
from optiserve.api.spec import API_GROUP, API_VERSION
from optiserve.kube.client import JOBS, KubeClient, Resource
from tests.support.control_plane import Cluster, kubernetes_client
from tests.support.job_results import PASSED
from tests.support.kubelet_role import finish_job_pod, make_pods_ready, until
from tests.support.models import REPO_ROOT

CRD_FILE = REPO_ROOT / "crds/optimizedmodels.optiserve.io.yaml"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{API_GROUP}"
OPTIMIZED_MODELS = Resource(f"{API_GROUP}/{API_VERSION}", "OptimizedModel", PLURAL)
REPLICA_SETS = Resource("apps/v1", "ReplicaSet", "replicasets")
MODEL = "minilm"
GITOPS_MANAGER = "argocd-controller"
APPLY_PATCH = "application/apply-patch+yaml"
RUNNER_TIMEOUT_S = 60.0


def _no_terminating_crd(cluster: Cluster) -> bool:
    answer = cluster.request("GET", CRD_PATH)
    return answer.status == 404 or not answer.json()["metadata"].get("deletionTimestamp")


@pytest.fixture(scope="module")
def crd(control_plane: Cluster) -> Iterator[None]:
    """The generated CRD, Established and served. Created here, and then deleted (and gone) at the
    end of the module; or, when an earlier module left it installed (as `helm uninstall` does),
    replaced by the file's and left as found."""
    until("an earlier module's CRD deletion to finish", lambda: _no_terminating_crd(control_plane), timeout_s=120)
    ours = yaml.safe_load(CRD_FILE.read_text())
    existing = control_plane.request("GET", CRD_PATH)
    if existing.status == 404:
        answer = control_plane.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", ours)
        assert answer.status == 201, answer.body.decode()
    else:
        ours["metadata"]["resourceVersion"] = existing.json()["metadata"]["resourceVersion"]
        answer = control_plane.request("PUT", CRD_PATH, ours)
        assert answer.status == 200, answer.body.decode()
    until(f"{PLURAL} served", lambda: control_plane.request("GET", f"/apis/{API_GROUP}/{API_VERSION}/{PLURAL}").status == 200)
    yield
    if existing.status == 404:
        control_plane.request("DELETE", CRD_PATH)
        until("the CRD deleted", lambda: control_plane.request("GET", CRD_PATH).status == 404, timeout_s=120)


@pytest.fixture(scope="module")
def admin(control_plane: Cluster) -> Iterator[KubeClient]:
    """The test's own client (the project's KubeClient, as the admin): the user and the kubelet."""
    client = KubeClient(kubernetes_client(control_plane))
    yield client
    client.close()


def _namespace_for(node: str) -> str:
    return f"om-{hashlib.sha256(node.encode()).hexdigest()[:10]}"


def make_namespace(cluster: Cluster, admin: KubeClient, name: str) -> None:
    """A namespace with the service account the optimization Job runs as (ServiceAccount admission
    refuses pods whose account is missing) and the `default` one the controller manager creates."""
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    assert cluster.request("POST", "/api/v1/namespaces", body).status == 201
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "optiserve-optimizer"}}
    assert cluster.request("POST", f"/api/v1/namespaces/{name}/serviceaccounts", account).status == 201
    until(
        f"{name}/default service account",
        lambda: cluster.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default").status == 200,
    )


def drop_namespace(cluster: Cluster, admin: KubeClient, name: str) -> None:
    """Release what a test left behind (no operator runs by now), then delete the namespace."""
    for left in admin.select(OPTIMIZED_MODELS, name, ""):
        admin.patch(OPTIMIZED_MODELS, name, left["metadata"]["name"], {"metadata": {"finalizers": None}})
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def namespace(
    control_plane: Cluster, crd: None, controller_manager: Any, admin: KubeClient, request: pytest.FixtureRequest
) -> Iterator[str]:
    name = _namespace_for(request.node.nodeid)
    make_namespace(control_plane, admin, name)
    yield name
    drop_namespace(control_plane, admin, name)


def manifest(namespace: str, name: str = MODEL, **spec_changes: Any) -> dict[str, Any]:
    """The MiniLM example as a GitOps tool would keep it in Git."""
    document = yaml.safe_load((REPO_ROOT / "examples/minilm/optimizedmodel.yaml").read_text())
    document["metadata"] = {"name": name, "namespace": namespace}
    document["spec"]["rollout"] = RolloutSpec().model_dump(mode="json", by_alias=True, exclude_none=True)
    document["spec"].update(spec_changes)
    return dict(document)


def server_side_apply(cluster: Cluster, document: dict[str, Any], manager: str = GITOPS_MANAGER) -> dict[str, Any]:
    """Apply as a GitOps controller does: server-side, its own field manager, never forced."""
    meta = document["metadata"]
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{meta['namespace']}/{PLURAL}/{meta['name']}?fieldManager={manager}"
    answer = cluster.request("PATCH", path, document, headers={"Content-Type": APPLY_PATCH})
    assert answer.status in (200, 201), f"server-side apply as {manager} refused: HTTP {answer.status} {answer.body.decode()}"
    applied: dict[str, Any] = answer.json()
    return applied


def model(admin: KubeClient, namespace: str, name: str = MODEL) -> dict[str, Any]:
    return dict(admin.get(OPTIMIZED_MODELS, namespace, name) or {})


def wait_phase(admin: KubeClient, namespace: str, phase: str, name: str = MODEL) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = model(admin, namespace, name)
        return found if (found.get("status") or {}).get("phase") == phase else None

    return until(f"{namespace}/{name} in phase {phase}", reached)


def names(admin: KubeClient, resource: Resource, namespace: str, selector: str = f"optiserve.io/model={MODEL}") -> list[str]:
    return sorted(str(o["metadata"]["name"]) for o in admin.select(resource, namespace, selector))


def uids(admin: KubeClient, resource: Resource, namespace: str) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["uid"] for o in admin.select(resource, namespace, f"optiserve.io/model={MODEL}")}


def conditions(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in found["status"]["conditions"]}


def finish_job(admin: KubeClient, namespace: str, job: str, result: JobResult = PASSED) -> None:
    """Play the pod; wait for the real Job controller to mark the Job Complete."""
    finish_job_pod(admin, namespace, job, result)

    def complete() -> bool:
        found = admin.get(JOBS, namespace, job) or {}
        return any(c["type"] == "Complete" and c["status"] == "True" for c in (found.get("status") or {}).get("conditions") or [])

    until(f"the Job controller to complete {job}", complete)


def promote(admin: KubeClient, namespace: str) -> dict[str, Any]:
    """From applied to Promoted: finish the g1 Job, make the candidate's pods ready."""
    until("the g1 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g1"))
    finish_job(admin, namespace, "minilm-optimize-g1")
    make_pods_ready(admin, namespace, "minilm-candidate")
    return wait_phase(admin, namespace, "Promoted")


def managers_of(found: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(m["manager"], m.get("subresource")): m["fieldsV1"] for m in found["metadata"]["managedFields"]}
