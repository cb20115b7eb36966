"""The operator killed at each phase transition, and restarted: it resumes and creates nothing twice.

One model's whole life runs under each kill point: generation 1 applied and promoted (the first
candidate, no canary), then a new spec (generation 2) rolled out through a canary on fake metrics
and an in-memory router, to promotion and the candidate's retirement. The kill point is a call of
the operator to the API (a create, a delete, a status write); right after it is served (or
committed with its answer lost) the emulator refuses every later call of that incarnation, as if
the process had died there, and the test starts a new one. Most kill points fall between creating
a child and writing the status that records it.

After the restart the test checks what a user and the cluster see: the same final status and the
same children as an undisturbed run, one Job per generation, no child created more often than in
that run (a retirement cut short leaves the candidate's Service, which the next generation adopts
rather than creates), and the serving invariants the emulator checked at every write (the baseline never deleted, and
re-pointed only to an artifact a ready candidate serves; the candidate removed only after traffic
left it and a ready baseline serves).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from optiserve.kube.client import DEPLOYMENTS, JOBS, SERVICES, Resource, deployment_ready
from tests.reliability.harness import MODEL, NAMESPACE, Fakes, Life, emulated_life, two_generations
from tests.support.fake_router import FakeRouter
from tests.support.fault_emulator import Call, FaultEmulator, KillPoint

pytestmark = pytest.mark.slow

SHA2 = "cd" * 32


def creates(plural: str, name: str) -> Any:
    return lambda call: call.method == "POST" and call.plural == plural and call.created_name == name


def deletes(plural: str, name: str) -> Any:
    return lambda call: call.method == "DELETE" and call.plural == plural and call.name == name


def status_write(check: Any) -> Any:
    def matches(call: Call) -> bool:
        if call.method != "PATCH" or call.plural != "optimizedmodels" or call.subresource != "status":
            return False
        status = (call.data or {}).get("status") if isinstance(call.data, dict) else None
        return isinstance(status, dict) and bool(check(status))

    return matches


def phase(name: str, generation: int) -> Any:
    return status_write(lambda s: s.get("phase") == name and s.get("pipelineGeneration") == generation)


def repoints_baseline(sha: str) -> Any:
    def matches(call: Call) -> bool:
        annotations = ((call.data or {}).get("metadata") or {}).get("annotations") or {} if isinstance(call.data, dict) else {}
        return (
            call.method == "PATCH" and call.name == f"{MODEL}-baseline" and annotations.get("optiserve.io/artifact-sha256") == sha
        )

    return matches


KILL_POINTS = [
    KillPoint("g1 Job created, Optimizing not yet written", creates("jobs", f"{MODEL}-optimize-g1")),
    KillPoint("g1 Job create committed, its answer lost", creates("jobs", f"{MODEL}-optimize-g1"), lost_response=True),
    KillPoint("Optimizing written", phase("Optimizing", 1)),
    KillPoint("g1 candidate Deployment created, Deploying not yet written", creates("deployments", f"{MODEL}-candidate")),
    KillPoint("g1 candidate Service created", creates("services", f"{MODEL}-candidate")),
    KillPoint("Deploying written", phase("Deploying", 1)),
    KillPoint("baseline created by the promotion, Promoted not yet written", creates("deployments", f"{MODEL}-baseline")),
    KillPoint("baseline create committed, its answer lost", creates("deployments", f"{MODEL}-baseline"), lost_response=True),
    KillPoint("g1 Promoted written", phase("Promoted", 1)),
    KillPoint("g1 candidate retired", deletes("deployments", f"{MODEL}-candidate")),
    KillPoint("g2 Job created after the spec change", creates("jobs", f"{MODEL}-optimize-g2")),
    KillPoint("stale g1 Job removed", deletes("jobs", f"{MODEL}-optimize-g1")),
    KillPoint("g2 candidate Deployment created", creates("deployments", f"{MODEL}-candidate"), occurrence=2),
    KillPoint("Canary written (weight 0, first step next)", phase("Canary", 2)),
    KillPoint("mid-canary: step 2 at weight 50 written", status_write(lambda s: (s.get("canary") or {}).get("weight") == 50)),
    KillPoint("baseline re-pointed to the g2 artifact, Promoted not yet written", repoints_baseline(SHA2)),
    KillPoint("g2 Promoted written", phase("Promoted", 2)),
    KillPoint("g2 candidate retired", deletes("deployments", f"{MODEL}-candidate"), occurrence=2),
]


def successful_creates(emulator: FaultEmulator) -> dict[tuple[str, str], int]:
    """Children created, by (plural, name): creates answered 2xx, and one committed with its answer lost."""
    lost = emulator.killed_at if emulator.killed_at is not None and emulator.killed_at.status == 503 else None
    counted = Counter(
        (call.plural or "", call.created_name or "")
        for call in emulator.calls
        if call.method == "POST"
        and call.plural in ("jobs", "deployments", "services")
        and (200 <= (call.status or 0) < 300 or call is lost)
    )
    return dict(counted)


def children(life: Life) -> dict[str, list[str]]:
    return {r.plural: names(life, r) for r in (JOBS, DEPLOYMENTS, SERVICES)}


def names(life: Life, resource: Resource) -> list[str]:
    return sorted(o["metadata"]["name"] for o in life.kube.select(resource, NAMESPACE, f"optiserve.io/model={MODEL}"))


def collapse(history: list[int]) -> list[int]:
    """The router's weights with repeats of the same weight in a row dropped."""
    return [w for i, w in enumerate(history) if i == 0 or history[i - 1] != w]


G1_ROUTINGS: tuple[list[int], ...] = ([], [100, 0])
"""Generation 1 has no canary: its candidate is promoted once ready, and a reconcile that finds the
new baseline not ready yet keeps the traffic on the candidate (100), then moves it to the baseline
once that is ready (0). Whether a reconcile falls in between depends on when the played cluster
makes the baseline ready, so both are right; routing to a candidate that is not ready never is."""
G2_WEIGHTS = [10, 50, 100, 0]
"""The canary steps of generation 2, then all traffic back on the re-pointed baseline."""


def by_generation(weights: list[int]) -> tuple[list[int], list[int]]:
    """The collapsed weights before generation 2's first step, and from it on."""
    first_step = weights.index(G2_WEIGHTS[0]) if G2_WEIGHTS[0] in weights else len(weights)
    return weights[:first_step], weights[first_step:]


@dataclass
class ReadinessCheckedRouter(FakeRouter):
    """The in-memory router, noting for every weight it is given whether the candidate was ready then."""

    candidate_ready: Callable[[], bool] = lambda: False
    sets: list[tuple[int, bool]] = field(default_factory=list)

    def set_weight(self, candidate_weight: int) -> None:
        self.sets.append((candidate_weight, self.candidate_ready()))
        super().set_weight(candidate_weight)


def run_life(point: KillPoint | None) -> tuple[Life, FaultEmulator, Fakes, dict[str, Any]]:
    router = ReadinessCheckedRouter()
    fakes = Fakes(router=router)
    with emulated_life(fakes.hooks(), candidate_weight=lambda: fakes.router.weight) as (life, emulator):
        router.candidate_ready = lambda: _candidate_ready(life)
        if point is not None:
            emulator.arm_kill(point, life.operators.started[0].who)
        final = two_generations(life)
        return life, emulator, fakes, {**final, "children": children(life)}


def _candidate_ready(life: Life) -> bool:
    candidate = life.kube.get(DEPLOYMENTS, NAMESPACE, f"{MODEL}-candidate")
    return candidate is not None and deployment_ready(candidate)


def routed_to_an_unready_candidate(fakes: Fakes) -> list[int]:
    router = fakes.router
    assert isinstance(router, ReadinessCheckedRouter)
    return [weight for weight, ready in router.sets if weight > 0 and not ready]


@dataclass(frozen=True)
class Outcome:
    final: dict[str, Any]
    creates: dict[tuple[str, str], int]
    weights: list[int]


@pytest.fixture(scope="module")
def undisturbed() -> Outcome:
    """The same life with no kill: what every killed life must end up matching."""
    _, emulator, fakes, final = run_life(None)
    assert emulator.violations == []
    assert routed_to_an_unready_candidate(fakes) == []
    return Outcome(final, successful_creates(emulator), collapse(fakes.router.history))


def test_an_undisturbed_life_creates_one_job_per_generation(undisturbed: Outcome) -> None:
    jobs = {name: count for (plural, name), count in undisturbed.creates.items() if plural == "jobs"}
    assert jobs == {f"{MODEL}-optimize-g1": 1, f"{MODEL}-optimize-g2": 1}
    assert undisturbed.creates[("deployments", f"{MODEL}-candidate")] == 2, "one candidate per generation"
    assert undisturbed.creates[("deployments", f"{MODEL}-baseline")] == 1, "the baseline created once, then re-pointed"
    assert all(count <= 2 for count in undisturbed.creates.values()), undisturbed.creates
    g1, g2 = by_generation(undisturbed.weights)
    assert g1 in G1_ROUTINGS and g2 == G2_WEIGHTS, undisturbed.weights
    final = undisturbed.final
    assert final["phase"] == "Promoted" and final["pipelineGeneration"] == 2 and final["artifact"]["sha256"] == SHA2


@pytest.mark.parametrize("point", KILL_POINTS, ids=lambda p: p.label)
def test_a_killed_operator_resumes_and_creates_nothing_twice(point: KillPoint, undisturbed: Outcome) -> None:
    life, emulator, fakes, final = run_life(point)

    assert emulator.killed_at is not None, f"the kill point was never reached: {point.label}"
    assert life.restarts == 1
    after_death = emulator.calls[emulator.killed_at.seq + 1 :]
    assert not [c for c in after_death if c.who == "operator-1" and c.is_write() and (c.status or 500) < 300]
    assert emulator.violations == []
    created = successful_creates(emulator)
    jobs = {key: count for key, count in created.items() if key[0] == "jobs"}
    assert jobs == {key: count for key, count in undisturbed.creates.items() if key[0] == "jobs"}, "one Job per generation"
    assert set(created) == set(undisturbed.creates), created
    assert all(created[key] <= undisturbed.creates[key] for key in created), f"a child created twice: {created}"
    assert final["children"] == undisturbed.final["children"], "the same children in the end"
    assert routed_to_an_unready_candidate(fakes) == [], "traffic only ever goes to a ready candidate"
    g1, g2 = by_generation(collapse(fakes.router.history))
    assert g1 in G1_ROUTINGS and g2 == G2_WEIGHTS, fakes.router.history
    assert final["phase"] == "Promoted" and final["observedGeneration"] == 2 and final["pipelineGeneration"] == 2
    assert final["artifact"] == undisturbed.final["artifact"]
    assert final["canary"]["state"] == "Promoted" and final["canary"]["weight"] == 100
    conditions = {c["type"]: (c["status"], c["reason"]) for c in final["conditions"]}
    assert conditions == {c["type"]: (c["status"], c["reason"]) for c in undisturbed.final["conditions"]}
