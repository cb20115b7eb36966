"""`TrafficRouter` by replica ratio: one Service in front of both variants, the split is their pod count.

The model Service (`resources.model_service`) selects every Triton pod of the model, baseline and
candidate alike, so each variant's share of the traffic is its share of the ready pods. The router
scales the two Deployments so that candidate / total is the achievable ratio nearest the weight.

Rounding (`replica_split`), with n the total replicas (`spec.serving.replicas`):

- weight 0 -> n baseline, 0 candidate; weight 100 -> 0 baseline, n candidate;
- otherwise candidate = n * weight / 100 rounded to the nearest integer, a tie going to the
  baseline (the smaller canary), then clamped to 1 .. n - 1: a weight above 0 always gets one
  candidate pod, a weight below 100 always keeps one baseline pod. With n < 2 that needs two
  pods, so n becomes 2 for such weights (one each, 50 %).

So the weights are coarse: with n = 4 only 0, 25, 50, 75 and 100 exist, and 10 becomes 25.
`achievable_weight` tells which, and `verify` compares against it. The split is by pods, not by
requests: kube-proxy balances connections, so long-lived connections (gRPC, HTTP keep-alive)
stick to the pod they opened on.

Order of scaling: the growing side first, then the shrinking side, so the total never drops below
the target while pods start. `current_weight` reads the Deployments' desired replicas back (what
the split will be); `ready_weight` reads their ready replicas (what it is now).
"""

from __future__ import annotations

from optiserve.kube.traffic import Replicas, TrafficApi
from optiserve.providers.traffic import PermanentTrafficError, TransientTrafficError, check_weight
from optiserve.providers.traffic_errors import api_errors
from optiserve.resources.httproute import percent
from optiserve.resources.model_service import build_model_service, model_selector, model_service_name
from optiserve.resources.names import deployment_name
from optiserve.resources.pod import Owner

REPLICAS_FIELD = "spec.serving.replicas"
NO_REPLICAS = Replicas(desired=0, ready=0)


def replica_split(candidate_weight: int, total: int) -> tuple[int, int]:
    """(baseline, candidate) replicas for the weight; see the module docstring for the rounding."""
    check_weight(candidate_weight)
    if total < 1:
        raise PermanentTrafficError(f"{REPLICAS_FIELD}: the replica ratio needs at least 1 replica, got {total}")
    if candidate_weight == 0:
        return total, 0
    if candidate_weight == 100:
        return 0, total
    n = max(total, 2)
    nearest = (n * candidate_weight + 49) // 100  # n * w / 100 rounded, .5 down
    candidate = min(max(nearest, 1), n - 1)
    return n - candidate, candidate


def weight_of(baseline: int, candidate: int) -> int | None:
    """The candidate's percent of the replicas; None when there are none."""
    total = baseline + candidate
    return None if total <= 0 else percent(candidate, total)


_api_errors = api_errors  # the replica counts are plain API objects: no hint to add


class ReplicaRouter:
    def __init__(self, api: TrafficApi, owner: Owner, namespace: str, total_replicas: int) -> None:
        self.api = api
        self.owner = owner
        self.namespace = namespace
        self.total_replicas = total_replicas
        self.baseline = deployment_name(owner.name, "baseline")
        self.candidate = deployment_name(owner.name, "candidate")

    def achievable_weight(self, candidate_weight: int) -> int:
        baseline, candidate = replica_split(candidate_weight, self.total_replicas)
        weight = weight_of(baseline, candidate)
        assert weight is not None  # replica_split never returns 0 + 0
        return weight

    def set_weight(self, candidate_weight: int) -> None:
        baseline, candidate = replica_split(candidate_weight, self.total_replicas)
        with _api_errors(f"set candidate weight {candidate_weight} by replicas in namespace {self.namespace}"):
            self._ensure_model_service()
            now = self._read()
            if now is None or (candidate > 0 and not self._candidate_exists()):
                raise TransientTrafficError(
                    f"Deployments {self.baseline} and {self.candidate} must both exist before the split is set; retrying"
                )
            grow_candidate_first = candidate > now[1].desired
            steps = [(self.candidate, candidate, now[1]), (self.baseline, baseline, now[0])]
            for name, replicas, current in steps if grow_candidate_first else reversed(steps):
                if current.desired != replicas:
                    self.api.scale(self.namespace, name, replicas)

    def _ensure_model_service(self) -> None:
        name = model_service_name(self.owner.name)
        live = self.api.get_service(self.namespace, name)
        if live is None:
            if self.api.create_service(build_model_service(self.owner, self.namespace)):
                return
            live = self.api.get_service(self.namespace, name)  # created meanwhile: judge that one
        selector = ((live or {}).get("spec") or {}).get("selector")
        if live is not None and selector != model_selector(self.owner.name):
            raise PermanentTrafficError(
                f"spec.rollout.traffic.provider: replicas needs Service {self.namespace}/{name} to select "
                f"{model_selector(self.owner.name)} only, but it exists with selector {selector}; remove or rename it"
            )

    def _read(self) -> tuple[Replicas, Replicas] | None:
        """Both variants' counts; a candidate that does not exist has none (the baseline serves alone)."""
        baseline = self.api.get_replicas(self.namespace, self.baseline)
        candidate = self.api.get_replicas(self.namespace, self.candidate)
        return None if baseline is None else (baseline, candidate or NO_REPLICAS)

    def _candidate_exists(self) -> bool:
        return self.api.get_replicas(self.namespace, self.candidate) is not None

    def current_weight(self) -> int | None:
        """The split the Deployments are scaled to (their spec)."""
        with _api_errors(f"read the replicas in namespace {self.namespace}"):
            now = self._read()
        return None if now is None else weight_of(now[0].desired, now[1].desired)

    def ready_weight(self) -> int | None:
        """The split the ready pods give now; lags `current_weight` while pods start or stop."""
        with _api_errors(f"read the ready replicas in namespace {self.namespace}"):
            now = self._read()
        return None if now is None else weight_of(now[0].ready, now[1].ready)
