"""A GitOps tool re-applying the Git copy of the manifest every 0.5 s while a canary runs.

Argo CD and Flux re-apply what is in Git on every sync; with self-heal, as often as anything
drifts. Here the test re-applies the user's manifest (a merge patch of the same spec, labels and
annotations, as the emulator's stand-in for an apply) every 0.5 s from before the canary starts
until it is promoted. tests/cluster/test_operator_on_apiserver.py shows the same with server-side
apply on the real API server (no conflict, the operator owning no field of the spec).

The canary must not notice: the router's weights only go up (10, 50, 100, then 0 once the
baseline serves the candidate's artifact), no Job of a new generation, the same rollout (its
`started_at` and the pipeline generation unchanged), and the operator writes only the status
subresource and its own metadata (finalizer, annotations), never the spec, checked on every call
it made.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from optiserve.kube.client import JOBS
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
from tests.support.fault_emulator import Call, FaultEmulator

pytestmark = pytest.mark.slow

REAPPLY_EVERY_S = 0.5
OWN_METADATA = ("/metadata/finalizers", "/metadata/annotations", "/metadata/resourceVersion")
GIT_LABELS = {"app.kubernetes.io/part-of": "ml-platform", "argocd.argoproj.io/instance": "models"}


class GitOpsTool:
    """Re-applies the Git copy every `every_s` while `on`."""

    def __init__(self, life: Life, document: dict[str, Any], every_s: float = REAPPLY_EVERY_S) -> None:
        self.life, self.document, self.every_s = life, document, every_s
        self.on = False
        self.applied: list[float] = []

    def tick(self) -> None:
        if self.on and (not self.applied or time.monotonic() - self.applied[-1] >= self.every_s):
            meta = self.document["metadata"]
            patch = {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]}, "spec": self.document["spec"]}
            self.life.kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, copy.deepcopy(patch))
            self.applied.append(time.monotonic())


def git_copy() -> dict[str, Any]:
    document = first_manifest()
    document["spec"]["rollout"] = canary_rollout()
    document["metadata"]["labels"] = dict(GIT_LABELS)
    document["metadata"]["annotations"] = {"argocd.argoproj.io/sync-wave": "1"}
    return document


def operator_writes_to_the_model(emulator: FaultEmulator) -> list[Call]:
    return [c for c in emulator.calls if c.who.startswith("operator-") and c.plural == "optimizedmodels" and c.is_write()]


def touches_only_own_metadata(call: Call) -> bool:
    """A write of the resource itself (not its status) that changes only finalizers and annotations."""
    if isinstance(call.data, list):  # kopf's JSON patches (finalizer, with a resourceVersion test)
        return all(str(op.get("path", "")).startswith(OWN_METADATA) for op in call.data)
    if isinstance(call.data, dict):
        return set(call.data) <= {"metadata"} and set(call.data.get("metadata") or {}) <= {"annotations", "finalizers"}
    return False


def test_reapplying_the_git_copy_during_a_canary_changes_nothing() -> None:
    fakes = Fakes()
    with emulated_life(fakes.hooks(), candidate_weight=lambda: fakes.router.weight) as (life, emulator):
        git = GitOpsTool(life, git_copy())
        life.ticks.append(git.tick)
        life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
        life.until(lambda: life.settled(1), "generation 1 promoted")
        git.on = True  # the commit that changes the rollout: from now on Git holds generation 2
        canary = life.until(lambda: (life.status().get("canary") or {}).get("progress"), "the canary started")
        started = canary["started_at"]
        final = life.until(lambda: life.settled(2), "generation 2 promoted and the candidate retired")
        git.on = False
        applies_during_canary = len(git.applied)
        jobs = sorted(j["metadata"]["name"] for j in life.kube.select(JOBS, NAMESPACE, f"optiserve.io/model={MODEL}"))
        model = life.model()

    weights = [w for i, w in enumerate(fakes.router.history) if i == 0 or fakes.router.history[i - 1] != w]
    assert applies_during_canary >= 5, f"only {applies_during_canary} re-applies: the canary ended too soon to show anything"
    assert weights == [10, 50, 100, 0], f"weights flapped: {fakes.router.history}"
    assert final["canary"]["progress"]["started_at"] == started, "the canary restarted"
    assert final["pipelineGeneration"] == 2 and final["observedGeneration"] == 2 == model["metadata"]["generation"]
    assert jobs == [f"{MODEL}-optimize-g2"], "no Job for a re-apply"
    assert model["metadata"]["labels"] == GIT_LABELS, "the operator leaves the user's labels alone"

    writes = operator_writes_to_the_model(emulator)
    status_writes = [c for c in writes if c.subresource == "status"]
    own = [c for c in writes if c.subresource is None]
    assert all(c.method == "PATCH" and set(c.data) == {"status"} for c in status_writes), status_writes
    assert all(c.method == "PATCH" and touches_only_own_metadata(c) for c in own), [c.data for c in own]
    assert not [c for c in writes if c.subresource not in (None, "status")]
    report_figure(
        "10-gitops",
        reapplies=len(git.applied),
        every_s=REAPPLY_EVERY_S,
        weights=weights,
        new_jobs=0,
        started_at_unchanged=True,
        operator_status_patches=len(status_writes),
        operator_metadata_patches=len(own),
        operator_spec_writes=0,
    )
