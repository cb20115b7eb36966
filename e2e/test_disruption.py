"""End to end on real pods: a canary keeps its course when the operator's pod or the candidate's pod is killed.

3. The operator's pod is deleted mid-canary: its Deployment starts a new one, which reads the rollout
   back from status and goes on with the same rollout (same clock, the step never goes back), and
   nothing is created twice (one Job per generation, the candidate's Deployment keeps its uid).
4. The candidate's Triton pod is killed mid-canary: the weight does not rise while the candidate has
   no ready pod (no promotion on missing data), and the rollout converges once the pod is back.
6. The candidate's artifact is corrupted on the volume mid-canary and its pod restarted: the pod's
   artifact check refuses it, the model is Degraded with the file named, the baseline untouched.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e.canary_watch import CanaryWatch
from e2e.cluster import RELEASE_NAMESPACE, Cluster
from e2e.digits import CANARY_S, OPTIMIZE_AND_SERVE_S, given_digits_promoted, without_quantization
from e2e.gateway_traffic import GATEWAY_REACTION_S
from e2e.steps import Scenario

# A scenario optimizes, serves and rolls out twice on a 2-core node: far past the unit tiers' timeout.
pytestmark = pytest.mark.timeout(3600)
CANDIDATE_PODS = "optiserve.io/model=digits,optiserve.io/variant=candidate"
OPERATOR_PODS = "app.kubernetes.io/name=optiserve"


def _watch(scenario: Scenario) -> CanaryWatch:
    def candidate_ready() -> bool | None:
        found = scenario.cluster.kubectl_json("-n", scenario.namespace, "get", "deployments", "-l", CANDIDATE_PODS)
        items = found.get("items") or []
        return bool(items) and int((items[0].get("status") or {}).get("readyReplicas") or 0) > 0

    return CanaryWatch(lambda: scenario.model("digits"), candidate_ready)


def _uids(scenario: Scenario, kind: str, selector: str) -> dict[str, str]:
    found = scenario.cluster.kubectl_json("-n", scenario.namespace, "get", kind, "-l", selector)
    return {item["metadata"]["name"]: item["metadata"]["uid"] for item in found.get("items") or []}


def test_operator_pod_deleted_mid_canary_the_same_rollout_continues(scenario: Scenario, cluster: Cluster, tmp_path: Path) -> None:
    manifest = given_digits_promoted(scenario, cluster.images.triton, tmp_path)
    with scenario.when_clients_send_through_the_gateway("digits"), _watch(scenario) as watch:
        scenario.when_spec_changed("digits", without_quantization(manifest))
        scenario.then_canary_at_step("digits", 1, within_s=OPTIMIZE_AND_SERVE_S)
        candidate = _uids(scenario, "deployments", CANDIDATE_PODS)
        jobs = _uids(scenario, "jobs", "optiserve.io/model=digits")

        scenario.when_pods_deleted(OPERATOR_PODS, RELEASE_NAMESPACE)
        scenario.then_canary_at_step("digits", 2, within_s=CANARY_S)
        assert _uids(scenario, "deployments", CANDIDATE_PODS) == candidate, "the candidate's Deployment was created again"
        scenario.then_phase("digits", "Promoted", within_s=CANARY_S)

    assert _uids(scenario, "jobs", "optiserve.io/model=digits") == jobs, "an optimization Job was created again"
    # The first generation's Job is removed as stale when the second starts: this generation's alone remains.
    assert sorted(jobs) == ["digits-optimize-g2"], f"one Job, this generation's, found {sorted(jobs)}"
    assert not watch.steps_went_back(), f"the canary's step went back: {watch.steps_went_back()}"
    assert len(watch.clocks()) == 1, f"the canary was restarted: its clock read {sorted(watch.clocks())}"


def test_candidate_pod_killed_mid_canary_no_promotion_on_missing_data(
    scenario: Scenario, cluster: Cluster, tmp_path: Path
) -> None:
    manifest = given_digits_promoted(scenario, cluster.images.triton, tmp_path)
    with scenario.when_clients_send_through_the_gateway("digits"), _watch(scenario) as watch:
        scenario.when_spec_changed("digits", without_quantization(manifest))
        scenario.then_canary_at_step("digits", 1, within_s=OPTIMIZE_AND_SERVE_S)
        scenario.when_pods_deleted(CANDIDATE_PODS)
        final = scenario.then_terminal("digits", within_s=CANARY_S)

    assert watch.seen and any(s.candidate_ready is False for s in watch.in_canary()), "the watch never saw the candidate down"
    assert not watch.weight_rises_without_a_ready_candidate(), (
        f"the weight rose while the candidate had no ready pod: {watch.weight_rises_without_a_ready_candidate()}"
    )
    assert len(watch.clocks()) == 1, f"the canary was restarted: its clock read {sorted(watch.clocks())}"
    scenario.then_serving("digits-baseline")
    assert final["status"]["phase"] in ("Promoted", "RolledBack"), final["status"]


def _artifact_directory(scenario: Scenario, deployment: str) -> str:
    """The artifact's folder on the models volume, from the Deployment's artifact check (`verify-artifact DIR`)."""
    found = scenario.cluster.kubectl_json("-n", scenario.namespace, "get", "deployment", deployment)
    init = next(c for c in found["spec"]["template"]["spec"]["initContainers"] if c["name"] == "verify-artifact")
    mount = next(m for m in init["volumeMounts"] if m["name"] == "models")
    inside = init["command"][2]
    relative = inside[len(mount["mountPath"]) :].strip("/")
    return "/".join(part for part in (mount.get("subPath", ""), relative) if part)


def test_corrupted_candidate_artifact_is_degraded_naming_the_file(scenario: Scenario, cluster: Cluster, tmp_path: Path) -> None:
    manifest = given_digits_promoted(scenario, cluster.images.triton, tmp_path)
    baseline = _uids(scenario, "deployments", "optiserve.io/model=digits,optiserve.io/variant=baseline")
    baseline_pods = _uids(scenario, "pods", "optiserve.io/model=digits,optiserve.io/variant=baseline")
    with scenario.when_clients_send_through_the_gateway("digits") as (load, _meter):
        scenario.when_spec_changed("digits", without_quantization(manifest))
        scenario.then_canary_at_step("digits", 1, within_s=OPTIMIZE_AND_SERVE_S)
        corrupted = scenario.when_a_file_is_corrupted(_artifact_directory(scenario, "digits-candidate"))
        scenario.when_pods_deleted(CANDIDATE_PODS)
        degraded = scenario.then_condition_says("digits", "Degraded", Path(corrupted).name, within_s=CANARY_S)
        settled = time.time() + GATEWAY_REACTION_S
        scenario.when_time_passes(2 * GATEWAY_REACTION_S)  # clients keep sending

    print(f"\ne2e: Degraded says: {degraded}")  # noqa: T201
    assert _uids(scenario, "deployments", "optiserve.io/model=digits,optiserve.io/variant=baseline") == baseline
    assert _uids(scenario, "pods", "optiserve.io/model=digits,optiserve.io/variant=baseline") == baseline_pods
    scenario.then_serving("digits-baseline")
    # Between the pod's deletion and the operator's next look (one resync) the candidate's share meets
    # a Service with no ready pod (503); once the model is Degraded its traffic is on the baseline.
    scenario.then_no_request_failed_after(load.result, settled, "the model was Degraded")
