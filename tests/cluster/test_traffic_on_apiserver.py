"""The traffic routers on a REAL kube-apiserver with the Gateway API CRDs installed.

What only the real server shows: the operator's HTTPRoute passes the Gateway API schema and its
CEL rules, the server's defaults (backendRef weight, group, kind) do not confuse reading back or
cause needless writes, a write with a stale resourceVersion is refused (409) and comes back as
transient, and the model Service and replica patches pass Kubernetes' own validation.

The owner of what the routers create is a ConfigMap standing in for the OptimizedModel: an owner
reference to an object that does not exist would be garbage-collected whenever a test in the same
session starts the controller manager.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from optiserve.api.rollout import GatewayRef
from optiserve.api.spec import TritonSpec
from optiserve.kube.client import TransientError
from optiserve.kube.traffic import TrafficApi
from optiserve.providers.traffic import verify
from optiserve.providers.traffic_gateway import GatewayRouter, OwnedRoute
from optiserve.providers.traffic_replicas import ReplicaRouter
from optiserve.resources.httproute import RouteBackends
from optiserve.resources.pod import Owner
from optiserve.resources.triton_deployment import ServingSettings, Variant, build_triton_deployment
from tests.cluster.gateway_api import HTTPROUTE_CRD, crd
from tests.support.control_plane import Cluster
from tests.support.kubelet_role import until

pytestmark = pytest.mark.cluster

NAMESPACE = "optiserve-traffic-tests"
MODEL = "minilm"
ROUTES = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NAMESPACE}/httproutes"
BACKENDS = RouteBackends.for_model(MODEL, 8000)


def _created(cluster: Cluster, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = cluster.request("POST", path, body)
    assert answer.status == 201, answer.body.decode()
    created: dict[str, Any] = answer.json()
    return created


@pytest.fixture(scope="module")
def owner(control_plane: Cluster) -> Iterator[Owner]:
    """The HTTPRoute CRD Established and served, the test namespace, and the owner object in it."""
    definition = crd(HTTPROUTE_CRD)
    name = definition["metadata"]["name"]
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    answer = control_plane.request("POST", crds, definition)
    assert answer.status in (201, 409), answer.body.decode()  # 409: another module of this session installed it

    def established() -> bool:
        got = control_plane.request("GET", f"{crds}/{name}").json()
        conditions = {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []}
        return conditions.get("Established") == "True"

    until(f"CRD {name} Established", established, timeout_s=30.0)
    _created(control_plane, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    until("httproutes served", lambda: control_plane.request("GET", ROUTES).status == 200, timeout_s=30.0)
    holder = _created(
        control_plane,
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": MODEL, "namespace": NAMESPACE}},
    )
    yield Owner("v1", "ConfigMap", MODEL, holder["metadata"]["uid"])
    control_plane.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}")
    control_plane.request("DELETE", f"{crds}/{name}")


@pytest.fixture(scope="module")
def api(owner: Owner, k8s_client: Any) -> TrafficApi:
    return TrafficApi(k8s_client)


def _route(cluster: Cluster, name: str) -> dict[str, Any]:
    answer = cluster.request("GET", f"{ROUTES}/{name}")
    assert answer.status == 200, answer.body.decode()
    route: dict[str, Any] = answer.json()
    return route


def test_the_operators_route_passes_the_gateway_api_schema(control_plane: Cluster, api: TrafficApi, owner: Owner) -> None:
    router = GatewayRouter(api, NAMESPACE, "minilm-owned", BACKENDS, OwnedRoute(owner, GatewayRef(name="public")))
    for weight in (10, 50, 0, 100):
        assert verify(router, weight) == weight
    stored = _route(control_plane, "minilm-owned")
    refs = stored["spec"]["rules"][0]["backendRefs"]
    assert [(ref["name"], ref["weight"]) for ref in refs] == [("minilm-baseline", 0), ("minilm-candidate", 100)]
    assert stored["metadata"]["ownerReferences"][0]["uid"] == owner.uid

    version = stored["metadata"]["resourceVersion"]
    assert verify(router, 100) == 100
    assert _route(control_plane, "minilm-owned")["metadata"]["resourceVersion"] == version, (
        "the server's defaults must not make an unchanged route look different (no write)"
    )


def test_only_the_weights_of_a_users_route_change(control_plane: Cluster, api: TrafficApi) -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "minilm-user", "namespace": NAMESPACE},
        "spec": {
            "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
            "hostnames": ["minilm.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                    "backendRefs": [{"name": "minilm-baseline", "port": 8000}],
                },
                {"matches": [{"path": {"type": "Exact", "value": "/docs"}}], "backendRefs": [{"name": "docs", "port": 80}]},
            ],
        },
    }
    before = _created(control_plane, ROUTES, route)
    assert before["spec"]["rules"][0]["backendRefs"][0]["weight"] == 1, "the server defaults the weight"
    router = GatewayRouter(api, NAMESPACE, "minilm-user", BACKENDS)
    assert router.current_weight() == 0
    for weight in (10, 50, 0):
        assert verify(router, weight) == weight
    after = _route(control_plane, "minilm-user")
    for field in ("parentRefs", "hostnames"):
        assert after["spec"][field] == before["spec"][field]
    assert after["spec"]["rules"][1] == before["spec"]["rules"][1]
    rule = copy.deepcopy(after["spec"]["rules"][0])
    assert [(ref["name"], ref["weight"]) for ref in rule.pop("backendRefs")] == [
        ("minilm-baseline", 100),
        ("minilm-candidate", 0),
    ]
    expected = copy.deepcopy(before["spec"]["rules"][0])
    expected.pop("backendRefs")
    assert rule == expected


def test_a_write_from_a_stale_read_is_refused_as_transient(control_plane: Cluster, api: TrafficApi) -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "minilm-race", "namespace": NAMESPACE},
        "spec": {"rules": [{"backendRefs": [{"name": "minilm-baseline", "port": 8000}]}]},
    }
    read = _created(control_plane, ROUTES, route)
    stale = read["metadata"]["resourceVersion"]
    api.patch_route(NAMESPACE, "minilm-race", stale, {"metadata": {"labels": {"edited": "by-someone-else"}}})
    with pytest.raises(TransientError, match=r"HTTP 409"):
        api.patch_route(NAMESPACE, "minilm-race", stale, {"spec": {"rules": []}})
    assert _route(control_plane, "minilm-race")["spec"]["rules"][0]["backendRefs"][0]["name"] == "minilm-baseline"


def test_the_replica_ratio_on_the_real_server(control_plane: Cluster, api: TrafficApi, owner: Owner) -> None:
    for variant, replicas in (("baseline", 3), ("candidate", 0)):
        deployment = build_triton_deployment(owner, NAMESPACE, Variant(variant, 1, replicas), TritonSpec(), ServingSettings())
        _created(control_plane, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", deployment)
    router = ReplicaRouter(api, owner, NAMESPACE, total_replicas=3)
    for weight, achieved, split in ((10, 33, (2, 1)), (60, 67, (1, 2)), (100, 100, (0, 3)), (0, 0, (3, 0))):
        assert verify(router, weight) == achieved
        scaled = tuple(
            control_plane.request("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/minilm-{variant}").json()["spec"][
                "replicas"
            ]
            for variant in ("baseline", "candidate")
        )
        assert scaled == split
    service = control_plane.request("GET", f"/api/v1/namespaces/{NAMESPACE}/services/{MODEL}").json()
    assert service["spec"]["selector"] == {"optiserve.io/model": MODEL}
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http", "grpc"]
    assert router.ready_weight() is None, "no kubelet here: no pod is ready"
