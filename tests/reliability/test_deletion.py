"""Deletion in the places the operator tests elsewhere do not reach: mid-canary, with the operator
killed half-way through its cleanup, and meeting a resync that is still under way.

Deletion while the Job runs, after promotion, while the operator is down, with a failed delete,
orphaning and by the garbage collector alone are in tests/component/test_operator_operations.py
and tests/cluster/test_operator_on_apiserver.py.
"""

from __future__ import annotations

import time

import pytest

from optiserve.kube.client import DEPLOYMENTS, JOBS, SERVICES
from tests.reliability.figures import report_figure
from tests.reliability.harness import (
    MODEL,
    NAMESPACE,
    OPTIMIZED_MODELS,
    Fakes,
    Life,
    canary_rollout,
    emulated_life,
    first_manifest,
)
from tests.support.fault_emulator import Fault, KillPoint

pytestmark = pytest.mark.slow


def children(life: Life) -> dict[str, list[str]]:
    selector = f"optiserve.io/model={MODEL}"
    return {
        r.kind: sorted(o["metadata"]["name"] for o in life.kube.select(r, NAMESPACE, selector))
        for r in (JOBS, DEPLOYMENTS, SERVICES)
    }


NOTHING: dict[str, list[str]] = {"Job": [], "Deployment": [], "Service": []}


def gone(life: Life) -> bool:
    return life.kube.get(OPTIMIZED_MODELS, NAMESPACE, MODEL) is None


def test_deleting_a_model_mid_canary_removes_every_child_and_releases_the_finalizer() -> None:
    fakes = Fakes()
    with emulated_life(fakes.hooks(), candidate_weight=lambda: fakes.router.weight) as (life, _):
        life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
        life.until(lambda: life.settled(1), "generation 1 promoted")
        life.kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"rollout": canary_rollout()}})
        life.until(lambda: (life.status().get("canary") or {}).get("weight"), "the canary sending traffic to the candidate")
        during = children(life)
        life.kube.delete(OPTIMIZED_MODELS, NAMESPACE, MODEL)
        life.until(lambda: gone(life), "the model gone (finalizer released)")
        left = children(life)
    assert {f"{MODEL}-baseline", f"{MODEL}-candidate"} <= set(during["Deployment"]), during
    assert left == NOTHING
    report_figure("8-deletion", case="mid-canary", children_before=sum(map(len, during.values())), left=0)


def test_an_operator_killed_mid_cleanup_finishes_it_after_restart() -> None:
    with emulated_life() as (life, emulator):
        life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
        life.until(lambda: life.settled(1), "generation 1 promoted")
        before = children(life)
        killed_after_first_delete = KillPoint("first child deleted by the cleanup", lambda call: call.method == "DELETE")
        emulator.arm_kill(killed_after_first_delete, life.operators.started[0].who)
        life.kube.delete(OPTIMIZED_MODELS, NAMESPACE, MODEL)
        life.until(lambda: gone(life), "the model gone after the restarted operator finished the cleanup")
        left = children(life)
    assert emulator.killed_at is not None and life.restarts == 1
    assert sum(map(len, before.values())) > 1, "something was left for the second incarnation to delete"
    assert left == NOTHING
    report_figure("8-deletion", case="killed mid-cleanup", children_before=sum(map(len, before.values())), left=0, restarts=1)


def test_a_deletion_meeting_a_resync_under_way_is_not_held_for_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """A resync under way (here: its read of the model answered 2 s late) when the model is deleted.
    The resync loop is the operator's own, not a kopf timer per object: kopf has no timer to stop
    before it releases the finalizer (it checked a slow one only every 60 s), and the cleanup waits
    for the reconcile under way on the object's lock, so nothing is created after the cleanup."""
    with emulated_life() as (life, emulator):
        life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
        life.until(lambda: life.settled(1), "generation 1 promoted")
        reads = [c for c in emulator.calls if c.who.startswith("operator-") and c.method == "GET" and c.name == MODEL]
        assert reads, "each reconcile reads its model fresh"
        slow = emulator.inject(
            Fault(lambda c: c.who.startswith("operator-") and c.method == "GET" and c.name == MODEL, None, delay_s=2.0)
        )
        life.until(lambda: slow.answered, "a resync reading the model (slowly)")
        deleted = time.monotonic()
        life.kube.delete(OPTIMIZED_MODELS, NAMESPACE, MODEL)
        life.until(lambda: gone(life), "the model gone", timeout_s=120)
        took = time.monotonic() - deleted
        left = children(life)
        slow_reads = len(slow.answered)
    stopping = [r.getMessage() for r in caplog.records if "is still exiting" in r.getMessage()]
    assert stopping == [], "kopf waited for a timer to stop"
    assert left == NOTHING
    report_figure("8-deletion", case="met a resync under way", gone_after_s=round(took, 1), slow_reads=slow_reads)
