"""`router_for`: the TrafficRouter that `spec.rollout.traffic.provider` names.

A registry, one builder per provider: a provider without one, or one whose fields or environment
are missing, is a `PermanentTrafficError` naming the field, never a silent fallback to another
way of splitting. The operator's routers only: local mode splits with its own nginx
(`optiserve.local.nginx_router`), so ``provider: nginx`` in a cluster is refused here, naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from optiserve.api.rollout import TrafficProvider
from optiserve.api.spec import OptimizedModelSpec
from optiserve.kube.traffic import TrafficApi
from optiserve.providers.traffic import PermanentTrafficError, TrafficRouter
from optiserve.providers.traffic_gateway import GatewayRouter, OwnedRoute
from optiserve.providers.traffic_replicas import ReplicaRouter
from optiserve.resources.httproute import RouteBackends
from optiserve.resources.pod import Owner

PROVIDER_FIELD = "spec.rollout.traffic.provider"


@dataclass(frozen=True)
class RouterContext:
    """Where the router works: the model (owner of what it creates) and the API it talks to."""

    owner: Owner
    namespace: str
    api: TrafficApi | None = None


def _kube(context: RouterContext, provider: TrafficProvider) -> TrafficApi:
    if context.api is None:
        raise PermanentTrafficError(f"{PROVIDER_FIELD}: {provider.value} needs the Kubernetes API (the operator in a cluster)")
    return context.api


def _replicas(spec: OptimizedModelSpec, context: RouterContext) -> TrafficRouter:
    api = _kube(context, TrafficProvider.REPLICAS)
    return ReplicaRouter(api, context.owner, context.namespace, spec.serving.replicas)


def _gateway(spec: OptimizedModelSpec, context: RouterContext) -> TrafficRouter:
    traffic = spec.rollout.traffic
    if not traffic.http_route:
        raise PermanentTrafficError("spec.rollout.traffic.httpRoute: required with provider gateway-api")
    api = _kube(context, TrafficProvider.GATEWAY_API)
    backends = RouteBackends.for_model(context.owner.name, traffic.backend_port)
    owned = OwnedRoute(context.owner, traffic.gateway) if traffic.gateway is not None else None
    return GatewayRouter(api, context.namespace, traffic.http_route, backends, owned)


def _nginx(spec: OptimizedModelSpec, context: RouterContext) -> TrafficRouter:
    raise PermanentTrafficError(
        f"{PROVIDER_FIELD}: nginx splits traffic in local mode only (optiserve run); in a cluster use replicas or gateway-api"
    )


REGISTRY: dict[str, Callable[[OptimizedModelSpec, RouterContext], TrafficRouter]] = {
    TrafficProvider.REPLICAS.value: _replicas,
    TrafficProvider.GATEWAY_API.value: _gateway,
    TrafficProvider.NGINX.value: _nginx,
}


def router_for(spec: OptimizedModelSpec, context: RouterContext) -> TrafficRouter:
    provider = str(getattr(spec.rollout.traffic.provider, "value", spec.rollout.traffic.provider))
    build = REGISTRY.get(provider)
    if build is None:
        raise PermanentTrafficError(f"{PROVIDER_FIELD}: unknown provider {provider!r}; use one of {', '.join(REGISTRY)}")
    return build(spec, context)
