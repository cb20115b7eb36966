"""Gateway API HTTPRoute (`gateway.networking.k8s.io/v1`) weights between the two variants' Services.

Two cases, both pure here (the API calls are in `kube/traffic.py`):

- the operator creates and owns the route (`rollout.traffic.gateway` set): `build_httproute`
  gives the whole object, one rule with the baseline and candidate Services as backendRefs;
- the user owns the route: `reweighted_rules` changes only the `weight` of the backendRefs to the
  model's two Services, in every rule that has one, and leaves everything else as the user wrote
  it. A rule that refers to only one of the two gets a backendRef to the other, copied from the
  one it has (same port and filters), when that other variant needs traffic.

Gateway API weights are relative within a rule. The operator writes baseline = 100 - w and
candidate = w, so the candidate's share is exactly w percent of what the rule sends to the two;
other backendRefs in the same rule keep their weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from optiserve.api.rollout import GatewayRef
from optiserve.resources.names import deployment_name, labels
from optiserve.resources.pod import Owner

GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"
DEFAULT_WEIGHT = 1
"""What the Gateway API assumes for a backendRef without a weight."""

Rule = dict[str, Any]


class RouteError(ValueError):
    """The route cannot carry the split (it does not refer to the model's Services)."""


@dataclass(frozen=True)
class RouteBackends:
    """The two Services a route splits between (same names as the variants' Deployments)."""

    baseline: str
    candidate: str
    port: int

    @classmethod
    def for_model(cls, model: str, port: int) -> RouteBackends:
        return cls(deployment_name(model, "baseline"), deployment_name(model, "candidate"), port)

    def ref(self, service: str, weight: int) -> dict[str, Any]:
        return {"group": "", "kind": "Service", "name": service, "port": self.port, "weight": weight}


def _split_refs(backends: RouteBackends, candidate_weight: int) -> list[dict[str, Any]]:
    """Both Services, or the baseline alone at weight 0.

    A route must not name the candidate's Service once no traffic goes there: the operator deletes
    that Service when the rollout ends, and a Gateway may drop a whole route whose backendRef does
    not resolve (Traefik does: every request answered 404 until the route changes, found on real pods).
    """
    refs = [backends.ref(backends.baseline, 100 - candidate_weight)]
    return [*refs, backends.ref(backends.candidate, candidate_weight)] if candidate_weight > 0 else refs


def build_httproute(
    owner: Owner, namespace: str, name: str, gateway: GatewayRef, backends: RouteBackends, candidate_weight: int
) -> dict[str, Any]:
    """An HTTPRoute the operator owns: every request on the Gateway's listener(s), split in two."""
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    return {
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(owner.name),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": _split_refs(backends, candidate_weight),
                }
            ],
        },
    }


def _refers_to(ref: object, service: str, namespace: str) -> bool:
    if not isinstance(ref, dict):
        return False
    return (
        ref.get("name") == service
        and ref.get("kind", "Service") == "Service"
        and ref.get("group", "") in ("", "core")
        and ref.get("namespace", namespace) == namespace
    )


def _refs(rule: Rule, service: str, namespace: str) -> list[dict[str, Any]]:
    return [ref for ref in rule.get("backendRefs") or [] if _refers_to(ref, service, namespace)]


def _weight(refs: list[dict[str, Any]]) -> int:
    return sum(int(ref.get("weight", DEFAULT_WEIGHT)) for ref in refs)


def reweighted_rules(rules: list[Rule], backends: RouteBackends, namespace: str, candidate_weight: int) -> list[Rule]:
    """A copy of `rules` with the split set; RouteError when no rule refers to either Service."""
    result = copy.deepcopy(rules)
    touched = False
    for rule in result:
        wanted = {backends.baseline: 100 - candidate_weight, backends.candidate: candidate_weight}
        present = {service: _refs(rule, service, namespace) for service in wanted}
        if not any(present.values()):
            continue
        touched = True
        for service, weight in wanted.items():
            for ref in present[service]:
                ref["weight"] = weight
            if not present[service] and weight > 0:
                template = next(refs for refs in present.values() if refs)[0]
                rule.setdefault("backendRefs", []).append({**copy.deepcopy(template), "name": service, "weight": weight})
    if not touched:
        raise RouteError(f"no backendRef to Service {backends.baseline} or {backends.candidate}")
    return result


def percent(part: int, total: int) -> int:
    """round(100 * part / total), halves up, in integers."""
    return (200 * part + total) // (2 * total)


def candidate_weight_of(rules: list[Rule], backends: RouteBackends, namespace: str) -> int | None:
    """The candidate's percent of what the rules send to the two Services.

    None when no rule refers to them, when both weigh 0, or when rules disagree (then no single
    weight describes the route).
    """
    shares = set()
    for rule in rules:
        baseline = _refs(rule, backends.baseline, namespace)
        candidate = _refs(rule, backends.candidate, namespace)
        if not baseline and not candidate:
            continue
        total = _weight(baseline) + _weight(candidate)
        if total == 0:
            return None
        shares.add(percent(_weight(candidate), total))
    return shares.pop() if len(shares) == 1 else None
