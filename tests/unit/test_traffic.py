"""Traffic routing, the pure parts: verify, the replica rounding table, HTTPRoute building and
reweighting, the nginx config, the spec's traffic fields and the provider registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import crossplane
import kubernetes_validate
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client as k8s
from pydantic import ValidationError

from optiserve.api.rollout import GatewayRef, TrafficProvider, TrafficSpec
from optiserve.api.spec import OptimizedModelSpec
from optiserve.errors import TransientError
from optiserve.kube.traffic import TrafficApi
from optiserve.local.nginx import Backend, NginxConfigError, Split, render_config
from optiserve.providers.traffic import (
    PermanentTrafficError,
    TransientTrafficError,
    WeightMismatchError,
    check_weight,
    verify,
)
from optiserve.providers.traffic_factory import RouterContext, router_for
from optiserve.providers.traffic_gateway import GatewayRouter
from optiserve.providers.traffic_replicas import ReplicaRouter, replica_split, weight_of
from optiserve.resources.httproute import (
    RouteBackends,
    RouteError,
    build_httproute,
    candidate_weight_of,
    reweighted_rules,
)
from optiserve.resources.model_service import build_model_service
from optiserve.resources.pod import Owner
from tests.support.fake_router import FakeRouter

GOLDEN = Path(__file__).parent / "golden"
OWNER = Owner("optiserve.io/v1alpha1", "OptimizedModel", "minilm", "0b7c7d1e-1111-2222-3333-444455556666")
BACKENDS = RouteBackends.for_model("minilm", 8000)
BASE_SPEC: dict[str, Any] = {"model": {"uri": "m.onnx", "format": "onnx"}, "validation": {"datasetUri": "v.npz"}}


def _golden(name: str, rendered: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert rendered == path.read_text()


# --- verify and the fake -------------------------------------------------------------------------


def test_verify_returns_the_weight_read_back() -> None:
    router = FakeRouter()
    assert verify(router, 30) == 30
    assert router.history == [30]


def test_verify_names_expected_and_actual_when_the_change_did_not_take() -> None:
    with pytest.raises(WeightMismatchError, match=r"expected 30, read back 0$") as caught:
        verify(FakeRouter(stuck=True), 30)
    assert (caught.value.expected, caught.value.actual) == (30, 0)
    assert isinstance(caught.value, TransientError), "a mismatch is retried"


def test_verify_reports_an_unreadable_split() -> None:
    with pytest.raises(WeightMismatchError, match=r"expected 30, read back nothing \(the split could not be read\)"):
        verify(FakeRouter(readable=False), 30)


def test_verify_compares_against_the_achievable_weight() -> None:
    assert verify(FakeRouter(rounding={10: 33}), 10) == 33


def test_router_errors_pass_through_verify_and_say_whether_to_retry() -> None:
    router = FakeRouter(errors=[TransientTrafficError("API throttled", delay_s=2.0), PermanentTrafficError("bad field")])
    with pytest.raises(TransientTrafficError) as transient:
        verify(router, 10)
    assert isinstance(transient.value, TransientError) and transient.value.delay_s == 2.0
    with pytest.raises(PermanentTrafficError) as permanent:
        verify(router, 10)
    assert not isinstance(permanent.value, TransientError)
    assert verify(router, 10) == 10


@pytest.mark.parametrize("bad", [-1, 101, 1.5, True, "10", None])
def test_weights_outside_0_to_100_are_refused(bad: object) -> None:
    with pytest.raises(PermanentTrafficError, match=r"candidate weight: must be an integer from 0 to 100"):
        check_weight(bad)


# --- replica ratio -------------------------------------------------------------------------------

ROUNDING_TABLE = [
    # weight, total replicas, (baseline, candidate)
    (0, 1, (1, 0)),
    (100, 1, (0, 1)),
    (10, 1, (1, 1)),  # intermediate weights need one of each: 2 pods
    (90, 1, (1, 1)),
    (50, 2, (1, 1)),
    (10, 2, (1, 1)),
    (10, 3, (2, 1)),
    (50, 3, (2, 1)),  # 1.5 pods: the tie goes to the baseline
    (67, 3, (1, 2)),
    (99, 3, (1, 2)),  # at least one baseline pod below 100
    (10, 4, (3, 1)),
    (50, 4, (2, 2)),
    (62, 4, (2, 2)),  # 2.48
    (63, 4, (1, 3)),  # 2.52
    (10, 10, (9, 1)),
    (25, 10, (8, 2)),  # 2.5 -> 2
    (26, 10, (7, 3)),
    (1, 10, (9, 1)),  # at least one candidate pod above 0
    (50, 5, (3, 2)),
    (0, 5, (5, 0)),
    (100, 5, (0, 5)),
]


@pytest.mark.parametrize(("weight", "total", "expected"), ROUNDING_TABLE)
def test_replica_rounding_table(weight: int, total: int, expected: tuple[int, int]) -> None:
    assert replica_split(weight, total) == expected


@given(st.integers(0, 100), st.integers(1, 50))
def test_replica_split_is_the_nearest_allowed_ratio(weight: int, total: int) -> None:
    baseline, candidate = replica_split(weight, total)
    pods = baseline + candidate
    assert pods == (total if weight in (0, 100) else max(total, 2))
    assert (candidate >= 1) == (weight > 0) and (baseline >= 1) == (weight < 100)
    allowed = [c for c in range(pods + 1) if (c >= 1) == (weight > 0) and (pods - c >= 1) == (weight < 100)]
    best = min(abs(c * 100 - weight * pods) for c in allowed)
    assert abs(candidate * 100 - weight * pods) == best


def test_replica_ratio_needs_a_replica() -> None:
    with pytest.raises(PermanentTrafficError, match=r"^spec.serving.replicas: the replica ratio needs at least 1 replica"):
        replica_split(10, 0)


def test_weight_of_replicas() -> None:
    assert [weight_of(2, 1), weight_of(1, 2), weight_of(1, 1), weight_of(0, 3), weight_of(0, 0)] == [33, 67, 50, 100, None]


def test_replica_router_achievable_weights() -> None:
    router = ReplicaRouter(TrafficApi(k8s.ApiClient()), OWNER, "ml", total_replicas=3)
    assert [router.achievable_weight(w) for w in (0, 10, 50, 60, 100)] == [0, 33, 33, 67, 100]


# --- HTTPRoute -----------------------------------------------------------------------------------


def test_httproute_golden() -> None:
    route = build_httproute(OWNER, "ml", "minilm", GatewayRef(name="public", namespace="gateways"), BACKENDS, 10)
    _golden("minilm_httproute.yaml", yaml.safe_dump(route, sort_keys=True))


def test_httproute_parent_ref_defaults_to_the_models_namespace_and_every_listener() -> None:
    route = build_httproute(OWNER, "ml", "minilm", GatewayRef(name="public"), BACKENDS, 0)
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]
    # At weight 0 the candidate Service is not referenced: it is deleted next.
    assert [ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]] == [100]


def test_model_service_golden_and_valid_for_kubernetes() -> None:
    service = build_model_service(OWNER, "ml")
    kubernetes_validate.validate(service, "1.33", strict=True)
    assert service["spec"]["selector"] == {"optiserve.io/model": "minilm"}
    _golden("minilm_model_service.yaml", yaml.safe_dump(service, sort_keys=True))


def _user_rules() -> list[dict[str, Any]]:
    return [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
            "backendRefs": [{"name": "minilm-baseline", "port": 8000, "filters": [{"type": "RequestHeaderModifier"}]}],
        },
        {"matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}], "backendRefs": [{"name": "docs", "port": 80}]},
    ]


def test_reweighting_adds_the_missing_variant_like_the_one_present() -> None:
    rules = reweighted_rules(_user_rules(), BACKENDS, "ml", 10)
    assert rules[0]["backendRefs"] == [
        {"name": "minilm-baseline", "port": 8000, "filters": [{"type": "RequestHeaderModifier"}], "weight": 90},
        {"name": "minilm-candidate", "port": 8000, "filters": [{"type": "RequestHeaderModifier"}], "weight": 10},
    ]
    assert rules[1] == _user_rules()[1], "rules without the model's Services are left alone"
    assert rules[0]["matches"] == _user_rules()[0]["matches"]
    assert candidate_weight_of(rules, BACKENDS, "ml") == 10


def test_reweighting_to_zero_adds_no_candidate() -> None:
    rules = reweighted_rules(_user_rules(), BACKENDS, "ml", 0)
    assert [ref["name"] for ref in rules[0]["backendRefs"]] == ["minilm-baseline"]
    assert candidate_weight_of(rules, BACKENDS, "ml") == 0


def test_reweighting_to_100_keeps_the_baseline_ref_at_zero() -> None:
    rules = reweighted_rules(reweighted_rules(_user_rules(), BACKENDS, "ml", 50), BACKENDS, "ml", 100)
    assert [(ref["name"], ref["weight"]) for ref in rules[0]["backendRefs"]] == [
        ("minilm-baseline", 0),
        ("minilm-candidate", 100),
    ]
    assert candidate_weight_of(rules, BACKENDS, "ml") == 100


def test_a_route_without_the_models_services_cannot_be_reweighted() -> None:
    foreign = [{"backendRefs": [{"name": "minilm-baseline", "namespace": "other", "port": 8000}, {"name": "docs"}]}]
    with pytest.raises(RouteError, match=r"no backendRef to Service minilm-baseline or minilm-candidate"):
        reweighted_rules(foreign, BACKENDS, "ml", 10)
    assert candidate_weight_of(foreign, BACKENDS, "ml") is None


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([(1, 1)], 50),  # unset weights are 1 each
        ([(None, None)], 50),
        ([(3, 1)], 25),
        ([(90, 10), (90, 10)], 10),
        ([(90, 10), (50, 50)], None),  # rules disagree
        ([(0, 0)], None),  # nothing to split
    ],
)
def test_candidate_weight_read_from_rules(weights: list[tuple[int | None, int | None]], expected: int | None) -> None:
    def ref(name: str, weight: int | None) -> dict[str, Any]:
        return {"name": name, "port": 8000} | ({} if weight is None else {"weight": weight})

    rules = [{"backendRefs": [ref("minilm-baseline", b), ref("minilm-candidate", c)]} for b, c in weights]
    assert candidate_weight_of(rules, BACKENDS, "ml") == expected


# --- nginx config --------------------------------------------------------------------------------


def test_nginx_config_golden() -> None:
    text = render_config(Path("/run/optiserve-nginx"), 8080, Backend("127.0.0.1", 9001), Backend("127.0.0.1", 9002), Split(10, 3))
    _golden("nginx_split.conf", text)


def _upstream_servers(text: str, tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    parsed = crossplane.parse(str(path), single=True, check_ctx=True, check_args=True)
    assert parsed["errors"] == []
    http = next(d for d in parsed["config"][0]["parsed"] if d["directive"] == "http")
    upstream = next(d for d in http["block"] if d["directive"] == "upstream")
    return [server["args"] for server in upstream["block"]]


@pytest.mark.parametrize(
    ("weight", "servers"),
    [
        (0, [["127.0.0.1:9001", "weight=100", "max_fails=0"], ["127.0.0.1:9002", "max_fails=0", "down"]]),
        (30, [["127.0.0.1:9001", "weight=70", "max_fails=0"], ["127.0.0.1:9002", "weight=30", "max_fails=0"]]),
        (100, [["127.0.0.1:9001", "max_fails=0", "down"], ["127.0.0.1:9002", "weight=100", "max_fails=0"]]),
    ],
)
def test_nginx_weight_zero_marks_the_server_down(weight: int, servers: list[list[str]], tmp_path: Path) -> None:
    text = render_config(tmp_path, 8080, Backend("127.0.0.1", 9001), Backend("127.0.0.1", 9002), Split(weight, 1))
    assert _upstream_servers(text, tmp_path) == servers


def test_nginx_ipv6_backend_address() -> None:
    assert Backend.parse("[::1]:8000", "baseline").address == "[::1]:8000"


@pytest.mark.parametrize("address", ["localhost:8000", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":8000"])
def test_nginx_backend_must_be_ip_and_port(address: str) -> None:
    with pytest.raises(NginxConfigError, match=r"^baseline: expected IP:port"):
        Backend.parse(address, "baseline")


# --- spec and registry ---------------------------------------------------------------------------


def test_gateway_api_needs_an_http_route() -> None:
    with pytest.raises(ValidationError, match=r"httpRoute: required with provider gateway-api"):
        TrafficSpec.model_validate({"provider": "gateway-api"})


def test_gateway_only_with_gateway_api() -> None:
    with pytest.raises(ValidationError, match=r"gateway: only with provider gateway-api, not replicas"):
        TrafficSpec.model_validate({"provider": "replicas", "gateway": {"name": "public"}})


def _spec(traffic: dict[str, Any], replicas: int = 2) -> OptimizedModelSpec:
    return OptimizedModelSpec.model_validate({**BASE_SPEC, "serving": {"replicas": replicas}, "rollout": {"traffic": traffic}})


def _context(api: bool = True) -> RouterContext:
    return RouterContext(owner=OWNER, namespace="ml", api=TrafficApi(k8s.ApiClient()) if api else None)


def test_registry_picks_the_provider() -> None:
    replicas = router_for(_spec({"provider": "replicas"}, replicas=4), _context())
    assert isinstance(replicas, ReplicaRouter) and replicas.total_replicas == 4
    gateway = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm", "backendPort": 8001}), _context())
    assert isinstance(gateway, GatewayRouter) and gateway.owned is None and gateway.backends.port == 8001
    owned = router_for(_spec({"provider": "gateway-api", "httpRoute": "minilm", "gateway": {"name": "public"}}), _context())
    assert isinstance(owned, GatewayRouter) and owned.owned is not None and owned.owned.gateway.name == "public"


@pytest.mark.parametrize(
    ("traffic", "context", "message"),
    [
        ({"provider": "nginx"}, {"api": True}, r"^spec.rollout.traffic.provider: nginx splits traffic in local mode only"),
        ({"provider": "replicas"}, {"api": False}, r"^spec.rollout.traffic.provider: replicas needs the Kubernetes API"),
        ({"provider": "gateway-api", "httpRoute": "r"}, {"api": False}, r"^spec.rollout.traffic.provider: gateway-api needs"),
    ],
)
def test_registry_refuses_a_provider_it_cannot_build_here(
    traffic: dict[str, Any], context: dict[str, bool], message: str
) -> None:
    with pytest.raises(PermanentTrafficError, match=message):
        router_for(_spec(traffic), _context(**context))


def _unvalidated(provider: str, http_route: str | None = None) -> OptimizedModelSpec:
    """A spec whose traffic part skipped validation, as code that builds models by hand could make."""
    fields: dict[str, Any] = {"provider": provider, "http_route": http_route, "gateway": None, "backend_port": 8000}
    traffic = TrafficSpec.model_construct(**fields)
    spec = _spec({})
    return spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"traffic": traffic})})


def test_registry_refuses_misconfigured_specs_built_without_validation() -> None:
    with pytest.raises(PermanentTrafficError, match=r"^spec.rollout.traffic.httpRoute: required with provider gateway-api"):
        router_for(_unvalidated(TrafficProvider.GATEWAY_API), _context())
    with pytest.raises(PermanentTrafficError, match=r"^spec.rollout.traffic.provider: unknown provider 'istio'; use one of"):
        router_for(_unvalidated("istio"), _context())
