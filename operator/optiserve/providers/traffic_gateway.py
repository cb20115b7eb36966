"""`TrafficRouter` on a Gateway API HTTPRoute: backendRef weights, read back from the API server.

With `owned` (spec `rollout.traffic.gateway`), the operator creates the route and keeps all of its
spec as built; without, the route is the user's and only the weights of the backendRefs to the
model's two Services change (see `resources.httproute`). Either way `current_weight` reads the
route the API server stores.

Reading the spec back proves the API server has the weights; that the Gateway's data plane
applies them is the Gateway controller's part, reported in the route's `status.parents`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from optiserve.api.rollout import GatewayRef
from optiserve.kube.client import ApiError, contains
from optiserve.kube.traffic import TrafficApi
from optiserve.providers.traffic import PermanentTrafficError, TransientTrafficError, check_weight
from optiserve.providers.traffic_errors import api_errors
from optiserve.resources.httproute import RouteBackends, RouteError, build_httproute, candidate_weight_of, reweighted_rules
from optiserve.resources.pod import Owner

ROUTE_FIELD = "spec.rollout.traffic.httpRoute"


@dataclass(frozen=True)
class OwnedRoute:
    """The operator creates the route, attached to `gateway`, owned by `owner` (garbage-collected with it)."""

    owner: Owner
    gateway: GatewayRef


def _api_errors(what: str) -> AbstractContextManager[None]:
    return api_errors(what, not_found_hint=" (are the Gateway API CRDs installed?)")


def _rules(route: dict[str, Any]) -> list[dict[str, Any]]:
    rules = (route.get("spec") or {}).get("rules") or []
    return [rule for rule in rules if isinstance(rule, dict)]


def _controller_uid(route: dict[str, Any]) -> str | None:
    refs = (route.get("metadata") or {}).get("ownerReferences") or []
    return next((str(ref.get("uid")) for ref in refs if isinstance(ref, dict) and ref.get("controller")), None)


class GatewayRouter:
    """Splits with an HTTPRoute's backendRef weights; every weight 0..100 is exact."""

    def __init__(
        self, api: TrafficApi, namespace: str, route: str, backends: RouteBackends, owned: OwnedRoute | None = None
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.route = route
        self.backends = backends
        self.owned = owned

    @property
    def _what(self) -> str:
        return f"HTTPRoute {self.namespace}/{self.route}"

    def set_weight(self, candidate_weight: int) -> None:
        check_weight(candidate_weight)
        with _api_errors(f"set candidate weight {candidate_weight} on {self._what}"):
            live = self.api.get_route(self.namespace, self.route)
            if self.owned is not None:
                self._write_owned(live, candidate_weight, self.owned)
            else:
                self._write_weights(live, candidate_weight)

    def _write_owned(self, live: dict[str, Any] | None, candidate_weight: int, owned: OwnedRoute) -> None:
        desired = build_httproute(owned.owner, self.namespace, self.route, owned.gateway, self.backends, candidate_weight)
        if live is None:
            try:
                self.api.create_route(desired)
            except ApiError as e:
                if e.status == 409:
                    raise TransientTrafficError(f"{self._what} was created meanwhile; retrying") from e
                raise
            return
        if _controller_uid(live) != owned.owner.uid:
            raise PermanentTrafficError(
                f"{ROUTE_FIELD}: {self._what} exists and is not owned by this OptimizedModel; choose another name, "
                "or remove spec.rollout.traffic.gateway to have only its weights managed"
            )
        if contains(live.get("spec"), desired["spec"]):  # the server adds defaults; what we set is what we own
            return
        meta = desired["metadata"]
        patch = {"metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]}, "spec": desired["spec"]}
        self.api.patch_route(self.namespace, self.route, str(live["metadata"].get("resourceVersion", "")), patch)

    def _write_weights(self, live: dict[str, Any] | None, candidate_weight: int) -> None:
        if live is None:
            raise PermanentTrafficError(
                f"{ROUTE_FIELD}: {self._what} not found; create it with backendRefs to Services "
                f"{self.backends.baseline} and {self.backends.candidate}, or set spec.rollout.traffic.gateway "
                "for the operator to create it"
            )
        rules = _rules(live)
        try:
            wanted = reweighted_rules(rules, self.backends, self.namespace, candidate_weight)
        except RouteError as e:
            raise PermanentTrafficError(f"{ROUTE_FIELD}: {self._what} has {e}") from e
        if wanted != rules:
            version = str(live["metadata"].get("resourceVersion", ""))
            self.api.patch_route(self.namespace, self.route, version, {"spec": {"rules": wanted}})

    def current_weight(self) -> int | None:
        with _api_errors(f"read {self._what}"):
            live = self.api.get_route(self.namespace, self.route)
        return None if live is None else candidate_weight_of(_rules(live), self.backends, self.namespace)

    def achievable_weight(self, candidate_weight: int) -> int:
        return check_weight(candidate_weight)
