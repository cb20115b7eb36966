"""The Helm chart on the real kube-apiserver: install, Pod Security admission, and the operator under its RBAC.

- `helm install` of charts/optiserve into the server, watching one namespace;
- every pod template the chart renders, and every pod the operator builds with the chart's
  settings, is admitted as a Pod (server-side dry run) in namespaces that enforce the `restricted`
  Pod Security level, and the Job controller really creates the optimization Job's pod there;
- the operator, run with a token of the chart's ServiceAccount (RBAC authorization on), reconciles
  an OptimizedModel to its Job; with one verb dropped from its Role, the 403 shows in its log,
  naming the verb and the resource, and the model goes on once the verb is back;
- `helm upgrade` and `helm uninstall` of a second release.

No kubelet runs here: pods are admitted and stored, never started.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.support.chart_workloads import EXAMPLE, chart_settings, operator_container, operator_env, operator_workloads
from tests.support.control_plane import Cluster, HttpAnswer, Process, free_ports, write_kubeconfig
from tests.support.helm import CHART, Object, find, pod_templates, render, run_helm, tool, values_args
from tests.support.kubelet_role import until

RELEASE = "optiserve"
RELEASE_NAMESPACE = "optiserve-system"
WATCHED = "chart-ml"
CRD_NAME = "optimizedmodels.optiserve.io"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
OPERATOR_ACCOUNT = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
VALUES = {"watchNamespaces": [WATCHED]}
LAST_HANDLED = "optiserve.io/last-handled-configuration"

T = TypeVar("T")


def ok(answer: HttpAnswer, *statuses: int) -> Any:
    assert answer.status in (statuses or (200, 201)), f"HTTP {answer.status}: {answer.body.decode(errors='replace')}"
    return answer.json()


def create_namespace(cluster: Cluster, name: str, labels: dict[str, str]) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    ok(cluster.request("POST", "/api/v1/namespaces", body), 201)


def helm(cluster: Cluster, *args: str, check: bool = True) -> Any:
    return run_helm(*args, "--kubeconfig", str(cluster.kubeconfig), check=check)


def service_account_kubeconfig(cluster: Cluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig with a short-lived token of `namespace/name` (TokenRequest), as a pod would get."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    answer = ok(cluster.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", request), 201)
    write_kubeconfig(path, cluster.server, cluster.ca_file, answer["status"]["token"])
    return path


@pytest.fixture(scope="module")
def installed(control_plane: Cluster, controller_manager: Process) -> Iterator[list[Object]]:
    """The chart installed by `helm install` (watching one namespace); the objects it rendered."""
    crd_existed = control_plane.request("GET", CRD_PATH).status == 200
    for namespace in (RELEASE_NAMESPACE, WATCHED):
        create_namespace(control_plane, namespace, RESTRICTED)
    values = values_args(set_json=VALUES)
    helm(control_plane, "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *values)
    try:
        yield render(set_json=VALUES, namespace=RELEASE_NAMESPACE)
    finally:
        helm(control_plane, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, check=False)
        _release_finalizers(control_plane)
        for namespace in (WATCHED, RELEASE_NAMESPACE):
            control_plane.request("DELETE", f"/api/v1/namespaces/{namespace}")
        if not crd_existed:  # Helm never deletes a CRD; leave the server as this module found it
            control_plane.request("DELETE", CRD_PATH)
            until(
                "the CRD to be deleted",
                lambda: control_plane.request("GET", CRD_PATH).status == 404,
            )


def _release_finalizers(cluster: Cluster, namespace: str = WATCHED) -> None:
    """No operator runs after a test: drop its finalizer so the models (and then the CRD) can go."""
    for item in cluster.request("GET", _models_path(namespace=namespace)).json().get("items") or []:
        patch = {"metadata": {"finalizers": None}}
        path = _models_path(item["metadata"]["name"], namespace)
        cluster.request("PATCH", path, patch, headers={"Content-Type": "application/merge-patch+json"})


def _path(obj: Object) -> str:
    """The API path of an object the chart renders (core, apps, rbac, networking, apiextensions)."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    plural = {"NetworkPolicy": "networkpolicies"}.get(kind, kind.lower() + "s")
    root = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    namespace = obj["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{root}{scope}/{plural}/{obj['metadata']['name']}"


def test_helm_install_creates_every_rendered_object(control_plane: Cluster, installed: list[Object]) -> None:
    status = json.loads(helm(control_plane, "status", RELEASE, "--namespace", RELEASE_NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    missing = [_path(obj) for obj in installed if control_plane.request("GET", _path(obj)).status != 200]
    assert missing == []
    crd = control_plane.request("GET", CRD_PATH).json()
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"


def _dry_run_pod(cluster: Cluster, namespace: str, name: str, pod_spec: Object) -> HttpAnswer:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name.lower().replace("/", "-"), "namespace": namespace},
        "spec": copy.deepcopy(pod_spec),
    }
    return cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All&fieldValidation=Strict", pod)


def _wait_for_default_service_account(cluster: Cluster, namespace: str) -> None:
    """The controller manager's service-account controller creates `default` in each new namespace."""
    until(
        f"ServiceAccount {namespace}/default",
        lambda: cluster.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default").status == 200,
    )


def test_every_pod_is_admitted_under_restricted_pod_security(control_plane: Cluster, installed: list[Object]) -> None:
    workloads = operator_workloads(chart_settings(installed), WATCHED, operator_container(installed)["image"])
    pods = [(RELEASE_NAMESPACE, name, spec) for name, spec in pod_templates(installed)]
    pods += [(WATCHED, name, spec) for name, spec in pod_templates(workloads)]
    assert len(pods) == 5, [name for _, name, _ in pods]  # operator, optimization Job, Triton baseline and candidate, comparator
    _wait_for_default_service_account(control_plane, WATCHED)  # the Triton pods run as `default`
    for namespace, name, spec in pods:
        answer = _dry_run_pod(control_plane, namespace, name, spec)
        assert answer.status == 201, f"{name}: HTTP {answer.status} {answer.body.decode()}"
        assert answer.header("Warning") == [], f"{name}: {answer.header('Warning')}"


def test_a_pod_with_a_capability_is_refused_there(control_plane: Cluster, installed: list[Object]) -> None:
    """The namespaces really enforce `restricted`: the same operator pod, given one capability, is refused."""
    _, spec = next(pod_templates(find(installed, "Deployment")))
    spec = copy.deepcopy(spec)
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    answer = _dry_run_pod(control_plane, RELEASE_NAMESPACE, "net-admin", spec)
    assert answer.status == 403, answer.body
    message = answer.json()["message"]
    assert 'violates PodSecurity "restricted:latest": unrestricted capabilities' in message
    assert "NET_ADMIN" in message


# --- the operator as the chart's ServiceAccount ----------------------------------------------------------------------


@contextlib.contextmanager
def running_operator(
    cluster: Cluster, installed: list[Object], workdir: Path, account: tuple[str, str] = (RELEASE_NAMESPACE, RELEASE)
) -> Iterator[Process]:
    """`optiserve operator` with the chart's environment, logged in with the chart's ServiceAccount token."""
    kubeconfig = service_account_kubeconfig(cluster, *account, workdir / "operator.kubeconfig")
    health_port, metrics_port = free_ports(2)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPTISERVE_")},
        **operator_env(installed),
        "HOME": str(workdir),
        "KUBECONFIG": str(kubeconfig),
        "OPTISERVE_BIND_ADDRESS": "127.0.0.1",
        "OPTISERVE_HEALTH_PORT": str(health_port),
        "OPTISERVE_METRICS_PORT": str(metrics_port),
        "OPTISERVE_RESYNC_SECONDS": "1",
    }
    # `env -i` gives the operator exactly this environment (Process inherits the test's otherwise).
    command = [str(Path(sys.executable).parent / "optiserve"), "operator", "--verbose"]
    argv = ["env", "-i", *(f"{key}={value}" for key, value in sorted(env.items())), *command]
    operator = Process("optiserve operator", argv, workdir / "operator.log", workdir)
    try:
        yield operator
    finally:
        operator.stop()


REFUSED = re.compile(r'HTTP/1\.1" 403 |APIForbiddenError|Not enough permissions')
"""A 403 answered to the operator's client (urllib3's log line), to kopf's, or kopf's fallback warning."""


def refusals(operator: Process) -> list[str]:
    return [line[:300] for line in operator.log_path.read_text().splitlines() if REFUSED.search(line)]


def _model(name: str, namespace: str = WATCHED) -> Object:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"] = {"name": name, "namespace": namespace}
    return dict(document)


def _models_path(name: str = "", namespace: str = WATCHED) -> str:
    return f"/apis/optiserve.io/v1alpha1/namespaces/{namespace}/optimizedmodels" + (f"/{name}" if name else "")


def _model_in_phase(cluster: Cluster, name: str, phase: str, namespace: str = WATCHED) -> Object | None:
    model: Object = cluster.request("GET", _models_path(name, namespace)).json()
    return model if (model.get("status") or {}).get("phase") == phase else None


def _job(cluster: Cluster, name: str, namespace: str = WATCHED) -> Object | None:
    answer = cluster.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    return answer.json() if answer.status == 200 else None


def test_operator_reconciles_under_the_charts_rbac(control_plane: Cluster, installed: list[Object], tmp_path: Path) -> None:
    ok(control_plane.request("POST", _models_path(), _model("minilm")), 201)
    with running_operator(control_plane, installed, tmp_path) as operator:
        job = until(
            "the operator to create the optimization Job", lambda: _job(control_plane, "minilm-optimize-g1"), detail=operator.tail
        )
        # The handler writes status itself; kopf's own patch (its last-handled annotation) lands after.
        model = until(
            "status phase Optimizing and kopf's last-handled annotation",
            lambda: (
                (m := control_plane.request("GET", _models_path("minilm")).json()).get("status", {}).get("phase") == "Optimizing"
                and LAST_HANDLED in (m["metadata"].get("annotations") or {})
                and m
            ),
            detail=operator.tail,
        )
    # Nothing was refused: not a child, not a status write, not an event, and kopf asked for no
    # cluster-wide read (no Namespaces list, no CRD watch) when it watches named namespaces.
    assert refusals(operator) == []
    # What the operator wrote, and as whom: status through the subresource, its finalizer, a Job it owns.
    assert model["status"]["observedGeneration"] == 1
    assert "optiserve.io/finalizer" in model["metadata"]["finalizers"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == model["metadata"]["uid"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "optiserve-optimizer"
    # GitOps tools can ignore exactly what the operator owns by its field manager, `kopf` (docs/gitops.md).
    by_kopf = [entry for entry in model["metadata"]["managedFields"] if entry["manager"] == "kopf"]
    assert {entry.get("subresource", "") for entry in by_kopf} == {"", "status"}, model["metadata"]["managedFields"]
    main = json.dumps([entry["fieldsV1"] for entry in by_kopf if not entry.get("subresource")])
    assert '"f:finalizers"' in main and '"f:annotations"' in main and '"f:spec"' not in main, main
    # The Job controller created its pod in the restricted namespace: Pod Security admitted it for real.
    pods = until(
        "the Job controller to create the Job's pod",
        lambda: (
            control_plane.request("GET", f"/api/v1/namespaces/{WATCHED}/pods?labelSelector=job-name%3Dminilm-optimize-g1")
            .json()
            .get("items")
        ),
    )
    assert pods[0]["spec"]["securityContext"]["runAsNonRoot"] is True


def _events(cluster: Cluster, name: str) -> list[str]:
    selector = f"involvedObject.name%3D{name}"
    items = cluster.request("GET", f"/api/v1/namespaces/{WATCHED}/events?fieldSelector={selector}").json().get("items") or []
    return [f"{e.get('reason')}: {e.get('message')}" for e in items]


def test_a_verb_missing_from_the_role_surfaces_as_403(control_plane: Cluster, installed: list[Object], tmp_path: Path) -> None:
    role_path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{WATCHED}/roles/{RELEASE}"
    role = ok(control_plane.request("GET", role_path))
    full_rules = copy.deepcopy(role["rules"])
    jobs_rule = next(r for r in role["rules"] if r["resources"] == ["jobs"])
    jobs_rule["verbs"] = [v for v in jobs_rule["verbs"] if v != "create"]
    ok(control_plane.request("PUT", role_path, role))
    try:
        ok(control_plane.request("POST", _models_path(), _model("forbidden")), 201)
        with running_operator(control_plane, installed, tmp_path) as operator:
            expected = (
                f'User "{OPERATOR_ACCOUNT}" cannot create resource "jobs" in API group "batch" in the namespace "{WATCHED}"'
            )
            until("the 403 in the operator's log", lambda: expected in operator.log_path.read_text(), detail=operator.tail)
            line = next(line for line in operator.log_path.read_text().splitlines() if expected in line)
            assert "HTTP 403" in line and f"POST /apis/batch/v1/namespaces/{WATCHED}/jobs" in line, line
            assert _job(control_plane, "forbidden-optimize-g1") is None
            phase = control_plane.request("GET", _models_path("forbidden")).json().get("status", {}).get("phase")
            assert phase in (None, "Pending"), phase  # nothing was created, so nothing is claimed

            # The verb back: the operator's retry creates the Job, without a restart.
            role = ok(control_plane.request("GET", role_path))
            role["rules"] = full_rules
            ok(control_plane.request("PUT", role_path, role))
            until(
                "the Job once the Role allows it",
                lambda: _job(control_plane, "forbidden-optimize-g1"),
                timeout_s=90,
                detail=operator.tail,
            )
    finally:
        role = ok(control_plane.request("GET", role_path))
        role["rules"] = full_rules
        ok(control_plane.request("PUT", role_path, role))


def test_all_namespaces_mode_reconciles_with_its_cluster_role(
    control_plane: Cluster, installed: list[Object], tmp_path: Path
) -> None:
    """The default values (every namespace, one ClusterRole): a model anywhere gets its Job, nothing refused."""
    release, namespace, models = "everywhere", "optiserve-everywhere", "chart-anywhere"
    for name in (namespace, models):
        create_namespace(control_plane, name, RESTRICTED)
    try:
        helm(control_plane, "install", release, str(CHART), "-n", namespace)
        objects = render(namespace=namespace, release=release)  # the same names as installed (the Lease's among them)
        bindings = [b["metadata"]["name"] for b in find(objects, "RoleBinding")]
        assert find(objects, "ClusterRoleBinding") and bindings == ["everywhere-optiserve-leader-election"], bindings
        ok(control_plane.request("POST", _models_path(namespace=models), _model("anywhere", models)), 201)
        with running_operator(control_plane, objects, tmp_path, account=(namespace, "everywhere-optiserve")) as operator:
            until("the Job", lambda: _job(control_plane, "anywhere-optimize-g1", models), detail=operator.tail)
            until("phase Optimizing", lambda: _model_in_phase(control_plane, "anywhere", "Optimizing", models))
        assert refusals(operator) == []
    finally:
        helm(control_plane, "uninstall", release, "-n", namespace, check=False)
        _release_finalizers(control_plane, models)
        for name in (namespace, models):
            control_plane.request("DELETE", f"/api/v1/namespaces/{name}")


def test_the_operator_cannot_reach_outside_its_namespaces(
    control_plane: Cluster, installed: list[Object], tmp_path: Path
) -> None:
    """`kubectl auth can-i` as the chart's ServiceAccount: its verbs in the watched namespace, nothing elsewhere."""
    kubeconfig = service_account_kubeconfig(control_plane, RELEASE_NAMESPACE, RELEASE, tmp_path / "sa.kubeconfig")

    def can_i(*args: str) -> str:
        result = subprocess.run(
            [str(tool("kubectl")), "--kubeconfig", str(kubeconfig), "auth", "can-i", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip()

    assert can_i("create", "jobs.batch", "-n", WATCHED) == "yes"
    assert can_i("get", "pods", "--subresource=log", "-n", WATCHED) == "yes"  # a running Job's pass
    assert can_i("get", "pods", "-n", WATCHED) == "no"  # pods are listed, their logs read, nothing else
    assert can_i("patch", "optimizedmodels.optiserve.io", "--subresource=status", "-n", WATCHED) == "yes"
    assert can_i("update", "optimizedmodels.optiserve.io", "-n", WATCHED) == "no"  # never writes spec
    assert can_i("create", "jobs.batch", "-n", "default") == "no"
    assert can_i("list", "namespaces") == "no"
    assert can_i("get", "secrets", "-n", WATCHED) == "no"
    assert can_i("create", "jobs.batch", "-n", RELEASE_NAMESPACE) == "no"


# --- a second release: upgrade and uninstall -------------------------------------------------------------------------


def test_helm_upgrade_and_uninstall(control_plane: Cluster, installed: list[Object]) -> None:
    release, namespace, first, second = "second", "optiserve-second", "second-a", "second-b"
    for name in (namespace, first, second):
        create_namespace(control_plane, name, RESTRICTED)
    roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/{}/roles/second-optiserve"
    try:
        helm(control_plane, "install", release, str(CHART), "-n", namespace, *values_args(set_json={"watchNamespaces": [first]}))
        assert control_plane.request("GET", roles.format(first)).status == 200
        assert control_plane.request("GET", roles.format(second)).status == 404

        helm(control_plane, "upgrade", release, str(CHART), "-n", namespace, *values_args(set_json={"watchNamespaces": [second]}))
        assert control_plane.request("GET", roles.format(first)).status == 404  # the old namespace's Role is gone
        assert control_plane.request("GET", roles.format(second)).status == 200
        deployment = control_plane.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/second-optiserve").json()
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["OPTISERVE_NAMESPACES"] == second

        helm(control_plane, "uninstall", release, "-n", namespace)
        assert control_plane.request("GET", roles.format(second)).status == 404
        assert control_plane.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/second-optiserve").status == 404
        # The CRD, and so every OptimizedModel, survives an uninstall.
        assert control_plane.request("GET", CRD_PATH).status == 200
    finally:
        helm(control_plane, "uninstall", release, "-n", namespace, check=False)
        for name in (namespace, first, second):
            control_plane.request("DELETE", f"/api/v1/namespaces/{name}")
