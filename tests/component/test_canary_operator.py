"""The Canary phase in the operator: steps, judged intervals, promotion, rollback, approval, abort.

The operator runs in-process against the emulated API (as in test_operator.py); what the
emulator cannot provide is substituted through the reconciler's hooks: a metrics backend that
answers like Prometheus would for a healthy or a regressed candidate, and an in-memory router
whose weights the test reads back. Time is real, with 1 s intervals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kopf.testing import KopfRunner

from optiserve.kube.client import DEPLOYMENTS, KubeClient
from optiserve.settings import Settings
from tests.support.canary_fakes import QUICK_ROLLOUT, Fakes, TimedRouter
from tests.support.emulated_cluster import (
    DISCOVERY,
    MODEL,
    NAMESPACE,
    OPTIMIZED_MODELS,
    WAIT_S,
    finish_job,
    job_key,
    make_ready,
    model_objects,
    promote_first_candidate,
    status_of,
    wait_for,
    wait_phase,
)
from tests.support.fake_router import FakeRouter
from tests.support.job_results import SECOND, SHA, SHA2
from tests.support.kube_emulator import KubeEmulator, RunningEmulator, emulator_fixtures
from tests.support.operator_runner import running_operator

emulator, kube = emulator_fixtures(DISCOVERY)


@dataclass
class RouteRouter(FakeRouter):
    """A route that does not exist (reads None) until a weight is first set; each set notes the model's
    Deployments at that moment, to show whether traffic left a variant before the variant went."""

    kube: KubeClient | None = None
    deployments_at_set: list[list[str]] = field(default_factory=list)

    def set_weight(self, candidate_weight: int) -> None:
        super().set_weight(candidate_weight)
        if self.kube is not None:
            self.deployments_at_set.append(model_objects(self.kube, DEPLOYMENTS))

    def current_weight(self) -> int | None:
        return super().current_weight() if self.history else None


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def operator(emulator: RunningEmulator[KubeEmulator], fakes: Fakes) -> Iterator[KopfRunner]:
    client = KubeClient.for_host(emulator.url)
    with running_operator(client, settings=Settings(resync_seconds=0.2), hooks=fakes.hooks(), timeout_s=WAIT_S) as runner:
        yield runner


def start_canary(kube: KubeClient, rollout: dict[str, Any] | None = None) -> None:
    """A promoted g1, then a new spec (g2) whose candidate becomes ready: the canary starts."""
    promote_first_candidate(kube)
    baseline = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline")
    make_ready(kube, baseline)
    wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"], "the g1 candidate retired")
    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"rollout": rollout or QUICK_ROLLOUT}})
    wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate") is None or None, "the old candidate gone")
    job = wait_for(lambda: kube.get(*job_key(2)), "the g2 Job")
    finish_job(kube, job["metadata"]["name"], SECOND)
    candidate = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate"), "the g2 candidate")
    make_ready(kube, candidate)
    wait_phase(kube, "Canary")
    comparator = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-comparator"), "the comparator next to the canary")
    args = comparator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--golden=/models/minilm/g2/golden.jsonl" in args or any("g2" in a and "golden" in a for a in args), args


def baseline_sha(kube: KubeClient) -> str:
    baseline = kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline") or {}
    return str(baseline.get("metadata", {}).get("annotations", {}).get("optiserve.io/artifact-sha256"))


@pytest.mark.usefixtures("operator")
def test_a_healthy_candidate_walks_the_steps_and_is_promoted(kube: KubeClient, fakes: Fakes) -> None:
    start_canary(kube)
    status = wait_phase(kube, "Promoted")
    assert status["canary"]["state"] == "Promoted"
    assert status["artifact"]["sha256"] == SHA2
    assert [w for w in fakes.router.history if w][:3] == [10, 50, 100], fakes.router.history
    wait_for(lambda: baseline_sha(kube) == SHA2 or None, "the baseline serving the g2 artifact")
    assert all(m["outcome"] == "Successful" for m in status["canary"]["measurements"])
    # Once the baseline serves the new artifact, traffic leaves the candidate, then the candidate goes.
    make_ready(kube, kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline") or {})
    wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"], "the candidate retired")
    assert fakes.router.weight == 0


@pytest.mark.usefixtures("operator")
def test_status_shows_the_weight_the_router_read_back(kube: KubeClient, fakes: Fakes) -> None:
    """A splitter that rounds (a replica ratio over three pods makes 10 % into 33 %): status.canary.weight
    is what the router reads back; the step's own weight stays in the rollout's progress."""
    fakes.router = FakeRouter(rounding={10: 33})
    start_canary(kube, {**QUICK_ROLLOUT, "steps": [{"weight": 10, "pause": "1h"}, {"weight": 100}]})

    def canary() -> dict[str, Any] | None:
        found = status_of(kube).get("canary") or {}
        return found if found.get("progress") else None

    shown = wait_for(canary, "the canary's status")
    assert (shown["weight"], shown["progress"]["weight"]) == (33, 10), shown
    assert fakes.router.weight == 33


@pytest.mark.usefixtures("operator")
def test_a_slower_candidate_is_rolled_back_and_the_baseline_keeps_serving(kube: KubeClient, fakes: Fakes) -> None:
    fakes.backend.candidate_scale = 2.0
    start_canary(kube)
    status = wait_phase(kube, "RolledBack")
    assert "latency" in status["message"]
    assert status["canary"]["weight"] == 0
    assert fakes.router.weight == 0
    assert 100 not in fakes.router.history, "never shifted traffic further onto the failing candidate"
    assert status["artifact"]["sha256"] == SHA, "the baseline keeps the g1 artifact"
    assert baseline_sha(kube) == SHA
    wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"], "the candidate scaled away")
    failed = [m for m in status["canary"]["measurements"] if m["outcome"] == "Failed"]
    assert [m["metric"] for m in failed] == ["latency"]
    assert failed[0]["p_value"] < 0.05 and failed[0]["effect_size"] > 0.1, failed[0]


@pytest.mark.usefixtures("operator")
def test_a_regression_that_begins_at_a_higher_weight_is_judged_on_that_weights_data(kube: KubeClient, fakes: Fakes) -> None:
    router = TimedRouter()
    fakes.router = fakes.backend.router = router
    fakes.backend.slow_from_weight = 50
    start_canary(kube)
    status = wait_phase(kube, "RolledBack")
    assert 50 in fakes.router.history and 100 not in fakes.router.history, fakes.router.history
    failed = [m for m in status["canary"]["measurements"] if m["outcome"] == "Failed"]
    assert [m["metric"] for m in failed] == ["latency"], status["canary"]["measurements"]
    # Judged on a window that starts after warm-up (1 s): the data since the weight change, not
    # the healthy seconds before it.
    assert failed[0]["window_start_s"] > 1.0, failed[0]
    assert failed[0]["effect_size"] > 0.5, failed[0]


@pytest.mark.usefixtures("operator")
def test_an_agreement_drop_is_rolled_back(kube: KubeClient, fakes: Fakes) -> None:
    fakes.backend.agreement = 0.9
    start_canary(kube)
    status = wait_phase(kube, "RolledBack")
    assert "agreement" in status["message"]


@pytest.mark.usefixtures("operator")
def test_manual_promotion_by_a_digest_committed_to_git(kube: KubeClient, fakes: Fakes) -> None:
    rollout = {**QUICK_ROLLOUT, "promotion": "manual"}
    start_canary(kube, rollout)
    waiting = lambda: status_of(kube).get("canary", {}).get("state") == "AwaitingPromotion" or None  # noqa: E731
    wait_for(waiting, "waiting for approval")
    # An approval for some other candidate: observed, but neither restarts the pipeline nor promotes.
    stale = {**rollout, "promoteArtifact": "sha256:" + "ef" * 32}
    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"rollout": stale}})
    wait_for(lambda: status_of(kube).get("observedGeneration") == 3 or None, "generation 3 observed")
    wait_for(waiting, "still waiting for approval")
    assert status_of(kube)["pipelineGeneration"] == 2
    # The digest of this candidate, read from its status as a GitOps pipeline would, promotes it.
    digest = status_of(kube)["canary"]["candidateArtifact"]
    assert digest == f"sha256:{SHA2}"
    approved = {**rollout, "promoteArtifact": digest}
    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"rollout": approved}})
    status = wait_phase(kube, "Promoted")
    assert status["artifact"]["sha256"] == SHA2
    assert status["observedGeneration"] == 4 and status["pipelineGeneration"] == 2
    assert kube.get(*job_key(3)) is None and kube.get(*job_key(4)) is None, "no new Job for an approval"


@pytest.mark.usefixtures("operator")
def test_the_promote_annotation_approves_and_is_removed_afterwards(kube: KubeClient, fakes: Fakes) -> None:
    start_canary(kube, {**QUICK_ROLLOUT, "promotion": "manual"})
    wait_for(lambda: status_of(kube).get("canary", {}).get("state") == "AwaitingPromotion" or None, "waiting for approval")
    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"metadata": {"annotations": {"optiserve.io/promote": "true"}}})
    wait_phase(kube, "Promoted")

    def annotation_removed() -> bool | None:
        found = kube.get(OPTIMIZED_MODELS, NAMESPACE, MODEL) or {}
        return "optiserve.io/promote" not in (found["metadata"].get("annotations") or {}) or None

    wait_for(annotation_removed, "the one-shot annotation removed")


@pytest.mark.usefixtures("operator")
def test_the_abort_annotation_rolls_back_at_once(kube: KubeClient, fakes: Fakes) -> None:
    slow = {**QUICK_ROLLOUT, "steps": [{"weight": 10, "pause": "1h"}, {"weight": 100}]}
    start_canary(kube, slow)
    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"metadata": {"annotations": {"optiserve.io/abort": "true"}}})
    status = wait_phase(kube, "RolledBack")
    assert "abort" in status["message"]
    assert fakes.router.weight == 0


@pytest.mark.usefixtures("operator")
def test_prometheus_down_is_never_a_promotion(kube: KubeClient, fakes: Fakes) -> None:
    fakes.backend.down = True
    rollout = {**QUICK_ROLLOUT, "analysis": {**QUICK_ROLLOUT["analysis"], "consecutiveErrorLimit": 2}}
    start_canary(kube, rollout)
    status = wait_phase(kube, "RolledBack")
    assert "could not be measured" in status["message"]
    assert status["artifact"]["sha256"] == SHA


@pytest.mark.usefixtures("operator")
def test_the_route_is_written_from_the_first_promotion_on(kube: KubeClient, fakes: Fakes) -> None:
    # Clients reach the baseline through the route as soon as it is promoted, canary or not: a spec
    # changed right after the first promotion must not leave the route unwritten until the next canary.
    fakes.router = router = RouteRouter()
    promote_first_candidate(kube)
    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"rollout": QUICK_ROLLOUT}})
    wait_for(lambda: kube.get(*job_key(2)), "the g2 Job")
    wait_for(lambda: router.history or None, "the route written")
    assert router.history[0] == 0 and router.current_weight() == 0, router.history
    assert kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate") is None or status_of(kube)["phase"] != "Canary"


@pytest.mark.usefixtures("operator")
def test_a_spec_changed_mid_canary_takes_the_traffic_off_the_candidate_before_it_goes(kube: KubeClient, fakes: Fakes) -> None:
    slow = {**QUICK_ROLLOUT, "steps": [{"weight": 10, "pause": "1h"}, {"weight": 100}]}
    fakes.router = router = RouteRouter(kube=kube)
    start_canary(kube, slow)
    wait_for(lambda: router.weight == 10 or None, "the candidate at weight 10")
    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"validation": {"maxDegradation": 0.01}}})  # a new pipeline
    wait_for(lambda: kube.get(*job_key(3)), "the g3 Job")
    wait_for(lambda: router.weight == 0 or None, "the traffic back on the baseline")
    back = len(router.history) - 1 - router.history[::-1].index(0)
    assert "minilm-candidate" in router.deployments_at_set[back], "traffic left the g2 candidate while it still existed"
    wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"], "the stale candidate removed")
