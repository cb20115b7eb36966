"""The Gateway API and replica-ratio routers against the emulated Kubernetes API.

The routers talk HTTP to the emulator through the official client, exactly as to a cluster; the
test plays the user (who owns a route) and reads back what the routers wrote. Schema validation
of the HTTPRoute is the cluster tier's part (tests/cluster/test_traffic_on_apiserver.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from optiserve.api.spec import OptimizedModelSpec, TritonSpec
from optiserve.kube.client import DEPLOYMENTS, SERVICES, KubeClient, Resource
from optiserve.kube.traffic import TrafficApi
from optiserve.providers.traffic import PermanentTrafficError, TransientTrafficError, verify
from optiserve.providers.traffic_factory import RouterContext, router_for
from optiserve.providers.traffic_replicas import ReplicaRouter
from optiserve.resources.pod import Owner
from optiserve.resources.triton_deployment import ServingSettings, Variant, build_triton_deployment
from tests.support.kube_emulator import KubeEmulator, RunningEmulator, emulator_fixtures, resource_info

NAMESPACE = "ml"
OWNER = Owner("optiserve.io/v1alpha1", "OptimizedModel", "minilm", "0b7c7d1e-1111-2222-3333-444455556666")
HTTPROUTES = Resource("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
DISCOVERY = {
    "gateway.networking.k8s.io/v1/httproutes": resource_info("HTTPRoute", status=True),
    "apps/v1/deployments": resource_info("Deployment", status=True),
    "v1/services": resource_info("Service"),
}
BASE_SPEC: dict[str, Any] = {"model": {"uri": "m.onnx", "format": "onnx"}, "validation": {"datasetUri": "v.npz"}}
USER_ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "minilm", "namespace": NAMESPACE},
    "spec": {
        "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": ["minilm.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                "backendRefs": [{"name": "minilm-baseline", "port": 8000}],
            },
            {"matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}], "backendRefs": [{"name": "docs", "port": 80}]},
        ],
    },
}


emulator, kube = emulator_fixtures(DISCOVERY)


@pytest.fixture
def api(emulator: RunningEmulator[KubeEmulator]) -> Iterator[TrafficApi]:
    api_client = k8s.ApiClient(k8s.Configuration(host=emulator.url))
    yield TrafficApi(api_client)
    api_client.close()  # type: ignore[no-untyped-call]


def _spec(traffic: dict[str, Any], replicas: int = 3) -> OptimizedModelSpec:
    return OptimizedModelSpec.model_validate({**BASE_SPEC, "serving": {"replicas": replicas}, "rollout": {"traffic": traffic}})


def _context(api: TrafficApi) -> RouterContext:
    return RouterContext(owner=OWNER, namespace=NAMESPACE, api=api)


def _route(kube: KubeClient) -> dict[str, Any]:
    route = kube.get(HTTPROUTES, NAMESPACE, "minilm")
    assert route is not None
    return route


def _weights(route: dict[str, Any]) -> dict[str, int]:
    return {ref["name"]: ref["weight"] for rule in route["spec"]["rules"] for ref in rule["backendRefs"] if "weight" in ref}


# --- Gateway API, the user's route ----------------------------------------------------------------


def test_only_the_weights_of_the_users_route_change(kube: KubeClient, api: TrafficApi) -> None:
    kube.create(HTTPROUTES, NAMESPACE, copy.deepcopy(USER_ROUTE))
    router = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm"}), _context(api))
    for weight in (10, 50, 100, 0):
        assert verify(router, weight) == weight
        route = _route(kube)
        assert _weights(route) == {"minilm-baseline": 100 - weight, "minilm-candidate": weight}
        assert route["spec"]["parentRefs"] == USER_ROUTE["spec"]["parentRefs"]
        assert route["spec"]["hostnames"] == USER_ROUTE["spec"]["hostnames"]
        assert route["spec"]["rules"][1] == USER_ROUTE["spec"]["rules"][1], "the docs rule is not the operator's"
        candidate = route["spec"]["rules"][0]["backendRefs"][1]
        assert candidate == {"name": "minilm-candidate", "port": 8000, "weight": weight}


def test_setting_the_same_weight_again_writes_nothing(kube: KubeClient, api: TrafficApi) -> None:
    kube.create(HTTPROUTES, NAMESPACE, copy.deepcopy(USER_ROUTE))
    router = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm"}), _context(api))
    verify(router, 10)
    version = _route(kube)["metadata"]["resourceVersion"]
    verify(router, 10)
    assert _route(kube)["metadata"]["resourceVersion"] == version


def test_a_weight_changed_behind_the_routers_back_is_read_back(kube: KubeClient, api: TrafficApi) -> None:
    kube.create(HTTPROUTES, NAMESPACE, copy.deepcopy(USER_ROUTE))
    router = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm"}), _context(api))
    verify(router, 10)
    rules = _route(kube)["spec"]["rules"]
    rules[0]["backendRefs"][0]["weight"], rules[0]["backendRefs"][1]["weight"] = 1, 3
    kube.patch(HTTPROUTES, NAMESPACE, "minilm", {"spec": {"rules": rules}})
    assert router.current_weight() == 75


def test_a_missing_route_is_a_spec_error_naming_the_field(api: TrafficApi) -> None:
    router = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm"}), _context(api))
    with pytest.raises(PermanentTrafficError, match=r"spec.rollout.traffic.httpRoute: HTTPRoute ml/minilm not found"):
        router.set_weight(10)
    assert router.current_weight() is None


def test_a_route_without_the_models_services_is_a_spec_error(kube: KubeClient, api: TrafficApi) -> None:
    route = copy.deepcopy(USER_ROUTE)
    route["spec"]["rules"] = [route["spec"]["rules"][1]]
    kube.create(HTTPROUTES, NAMESPACE, route)
    router = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm"}), _context(api))
    with pytest.raises(
        PermanentTrafficError, match=r"httpRoute: HTTPRoute ml/minilm has no backendRef to Service minilm-baseline"
    ):
        router.set_weight(10)
    assert _route(kube)["spec"] == route["spec"]


def test_a_throttled_or_failing_api_is_transient(
    kube: KubeClient, api: TrafficApi, emulator: RunningEmulator[KubeEmulator]
) -> None:
    kube.create(HTTPROUTES, NAMESPACE, copy.deepcopy(USER_ROUTE))
    router = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm"}), _context(api))
    emulator.emulator[f"patch /apis/gateway.networking.k8s.io/v1/namespaces/{NAMESPACE}/httproutes/minilm"][:1] << 503
    with pytest.raises(TransientTrafficError, match=r"HTTP 503"):
        router.set_weight(10)
    assert verify(router, 10) == 10, "the retry succeeds"


# --- Gateway API, a route the operator owns -------------------------------------------------------


def test_the_operator_creates_and_keeps_its_own_route(kube: KubeClient, api: TrafficApi) -> None:
    spec = _spec({"provider": "gateway-api", "httpRoute": "minilm", "gateway": {"name": "public", "namespace": "gateways"}})
    router = router_for(spec, _context(api))
    assert verify(router, 10) == 10
    route = _route(kube)
    assert route["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateways"}
    ]
    assert _weights(route) == {"minilm-baseline": 90, "minilm-candidate": 10}

    drifted = copy.deepcopy(route["spec"])
    drifted["parentRefs"][0]["name"] = "elsewhere"
    kube.patch(HTTPROUTES, NAMESPACE, "minilm", {"spec": {"parentRefs": drifted["parentRefs"]}})
    assert verify(router, 50) == 50
    route = _route(kube)
    assert route["spec"]["parentRefs"][0]["name"] == "public", "the operator's route is kept as built"
    assert _weights(route) == {"minilm-baseline": 50, "minilm-candidate": 50}


def test_a_route_of_that_name_owned_by_someone_else_is_not_taken_over(kube: KubeClient, api: TrafficApi) -> None:
    kube.create(HTTPROUTES, NAMESPACE, copy.deepcopy(USER_ROUTE))
    router = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm", "gateway": {"name": "public"}}), _context(api))
    with pytest.raises(PermanentTrafficError, match=r"HTTPRoute ml/minilm exists and is not owned by this OptimizedModel"):
        router.set_weight(10)
    assert _route(kube)["spec"] == USER_ROUTE["spec"]


# --- replica ratio ---------------------------------------------------------------------------------


def _deploy(kube: KubeClient, variant: str, replicas: int) -> None:
    kube.create(
        DEPLOYMENTS,
        NAMESPACE,
        build_triton_deployment(OWNER, NAMESPACE, Variant(variant, 1, replicas), TritonSpec(), ServingSettings()),
    )


def _replicas(kube: KubeClient) -> tuple[int, int]:
    found = [kube.get(DEPLOYMENTS, NAMESPACE, f"minilm-{variant}") for variant in ("baseline", "candidate")]
    assert found[0] is not None and found[1] is not None
    return found[0]["spec"]["replicas"], found[1]["spec"]["replicas"]


def _version(kube: KubeClient, variant: str) -> int:
    found = kube.get(DEPLOYMENTS, NAMESPACE, f"minilm-{variant}")
    assert found is not None
    return int(found["metadata"]["resourceVersion"])


@pytest.mark.parametrize(
    ("weight", "achieved", "replicas"),
    [(10, 33, (2, 1)), (50, 33, (2, 1)), (60, 67, (1, 2)), (100, 100, (0, 3)), (0, 0, (3, 0))],
)
def test_replicas_follow_the_weight(
    kube: KubeClient, api: TrafficApi, weight: int, achieved: int, replicas: tuple[int, int]
) -> None:
    _deploy(kube, "baseline", 3)
    _deploy(kube, "candidate", 1)
    router = router_for(_spec({"provider": "replicas"}, replicas=3), _context(api))
    assert verify(router, weight) == achieved
    assert _replicas(kube) == replicas
    service = kube.get(SERVICES, NAMESPACE, "minilm")
    assert service is not None and service["spec"]["selector"] == {"optiserve.io/model": "minilm"}


def test_the_growing_side_is_scaled_first(kube: KubeClient, api: TrafficApi) -> None:
    _deploy(kube, "baseline", 4)
    _deploy(kube, "candidate", 0)
    router = router_for(_spec({"provider": "replicas"}, replicas=4), _context(api))
    verify(router, 50)
    assert _replicas(kube) == (2, 2)
    assert _version(kube, "candidate") < _version(kube, "baseline"), "candidate up before baseline down"
    verify(router, 25)
    assert _replicas(kube) == (3, 1)
    assert _version(kube, "baseline") < _version(kube, "candidate"), "baseline up before candidate down"


def test_ready_weight_follows_the_ready_pods(kube: KubeClient, api: TrafficApi) -> None:
    _deploy(kube, "baseline", 3)
    _deploy(kube, "candidate", 1)
    router = router_for(_spec({"provider": "replicas"}, replicas=3), _context(api))
    assert isinstance(router, ReplicaRouter)
    verify(router, 60)
    kube.patch(DEPLOYMENTS, NAMESPACE, "minilm-baseline", {"status": {"readyReplicas": 3}}, subresource="status")
    kube.patch(DEPLOYMENTS, NAMESPACE, "minilm-candidate", {"status": {"readyReplicas": 1}}, subresource="status")
    assert (router.current_weight(), router.ready_weight()) == (67, 25), "the spec says 1:2, the pods are still 3:1"


def test_a_missing_deployment_is_transient_and_a_foreign_service_permanent(kube: KubeClient, api: TrafficApi) -> None:
    router = router_for(_spec({"provider": "replicas"}, replicas=3), _context(api))
    with pytest.raises(TransientTrafficError, match=r"must both exist"):
        router.set_weight(0)
    assert router.current_weight() is None, "no baseline: no split to read"

    _deploy(kube, "baseline", 3)
    with pytest.raises(TransientTrafficError, match=r"must both exist"):
        router.set_weight(10)
    # Without a candidate the baseline serves alone: that is weight 0, and setting it needs no candidate.
    assert router.current_weight() == 0
    verify(router, 0)

    _deploy(kube, "candidate", 0)
    kube.delete(SERVICES, NAMESPACE, "minilm")
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "minilm", "namespace": NAMESPACE}}
    kube.create(SERVICES, NAMESPACE, {**foreign, "spec": {"selector": {"app": "minilm-ui"}, "ports": [{"port": 80}]}})
    with pytest.raises(PermanentTrafficError, match=r"replicas needs Service ml/minilm to select"):
        router.set_weight(10)
    assert _replicas(kube) == (3, 0), "nothing is scaled while the Service would not split"
