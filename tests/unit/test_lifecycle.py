"""The phase state machine, table-driven: every transition, restarts, spec changes, deadlines."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from optiserve.api.job import ArtifactRef, JobResult
from optiserve.api.status import Phase
from optiserve.domain.lifecycle import (
    TRANSITIONS,
    CandidateObservation,
    Child,
    Decision,
    JobObservation,
    JobState,
    Observed,
    decide,
    guard_failing_candidate,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SHA = "a" * 64
PASSED = JobResult(passed=True, artifact=ArtifactRef(uri="pvc://m/3", sha256=SHA, size_bytes=10), speedup_p50=4.0)
GATE_FAILED = JobResult(passed=False, reason="gate failed: fidelity_mean = 0.97, needs >= 0.99", failed_gates=["fidelity_mean"])


def observed(phase: Phase, **changes: object) -> Observed:
    base = Observed(
        generation=3, phase=phase, observed_generation=3, phase_since=NOW - timedelta(seconds=5), promoted_sha256="b" * 64
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def job(state: JobState, result: JobResult | None = None, generation: int = 3) -> JobObservation:
    return JobObservation(generation=generation, state=state, result=result)


def candidate(ready: bool, generation: int = 3, failure: str = "") -> CandidateObservation:
    return CandidateObservation(generation=generation, artifact_sha256=SHA, ready=ready, failure=failure)


CASES: list[tuple[str, Observed, Phase, str]] = [
    ("new resource starts the job", observed(Phase.PENDING, observed_generation=None), Phase.OPTIMIZING, "JobRunning"),
    ("job running", observed(Phase.OPTIMIZING, job=job(JobState.RUNNING)), Phase.OPTIMIZING, "JobRunning"),
    ("job done", observed(Phase.OPTIMIZING, job=job(JobState.SUCCEEDED, PASSED)), Phase.VALIDATING, "JobFinished"),
    ("restart finds the job done", observed(Phase.PENDING, job=job(JobState.SUCCEEDED, PASSED)), Phase.VALIDATING, "JobFinished"),
    ("gate failed", observed(Phase.VALIDATING, job=job(JobState.SUCCEEDED, GATE_FAILED)), Phase.FAILED, "OptimizationFailed"),
    (
        "job crashed",
        observed(Phase.VALIDATING, job=JobObservation(3, JobState.FAILED, None, "OOMKilled")),
        Phase.FAILED,
        "OptimizationFailed",
    ),
    ("validated: deploy", observed(Phase.VALIDATING, job=job(JobState.SUCCEEDED, PASSED)), Phase.DEPLOYING, "Deploying"),
    (
        "candidate not ready yet",
        observed(Phase.DEPLOYING, job=job(JobState.SUCCEEDED, PASSED), candidate=candidate(False)),
        Phase.DEPLOYING,
        "Deploying",
    ),
    (
        "candidate cannot load",
        observed(
            Phase.DEPLOYING, job=job(JobState.SUCCEEDED, PASSED), candidate=candidate(False, failure="model.onnx: failed to load")
        ),
        Phase.DEPLOYING,
        "Degraded",
    ),
    (
        "deadline passed",
        observed(
            Phase.DEPLOYING,
            phase_since=NOW - timedelta(hours=1),
            job=job(JobState.SUCCEEDED, PASSED),
            candidate=candidate(False, failure="model.onnx: failed to load"),
        ),
        Phase.FAILED,
        "ProgressDeadlineExceeded",
    ),
    (
        "candidate ready: canary",
        observed(Phase.DEPLOYING, job=job(JobState.SUCCEEDED, PASSED), candidate=candidate(True)),
        Phase.CANARY,
        "CanaryStarted",
    ),
    (
        "first candidate: promoted",
        observed(Phase.DEPLOYING, promoted_sha256=None, job=job(JobState.SUCCEEDED, PASSED), candidate=candidate(True)),
        Phase.PROMOTED,
        "Initialized",
    ),
    (
        "canary holds",
        observed(Phase.CANARY, job=job(JobState.SUCCEEDED, PASSED), candidate=candidate(True)),
        Phase.CANARY,
        "CanaryInProgress",
    ),
    ("promoted, its baseline starting", observed(Phase.PROMOTED), Phase.PROMOTED, "BaselineStarting"),
    ("promoted stays", observed(Phase.PROMOTED, baseline_ready=True), Phase.PROMOTED, "Done"),
    ("failed stays", observed(Phase.FAILED), Phase.FAILED, "Done"),
    (
        "spec changed mid-canary restarts",
        observed(Phase.CANARY, generation=4, job=job(JobState.SUCCEEDED, PASSED), candidate=candidate(True)),
        Phase.OPTIMIZING,
        "JobRunning",
    ),
    ("spec changed after failure restarts", observed(Phase.FAILED, generation=4), Phase.OPTIMIZING, "JobRunning"),
    (
        "invalid spec",
        observed(Phase.PENDING, spec_errors=("spec.validation.datasetUri: Field required",)),
        Phase.FAILED,
        "InvalidSpec",
    ),
]


@pytest.mark.parametrize(("name", "state", "phase", "reason"), CASES, ids=[c[0] for c in CASES])
def test_transition(name: str, state: Observed, phase: Phase, reason: str) -> None:
    decision = decide(state, NOW)
    assert (decision.phase, decision.reason) == (phase, reason)
    start = Phase.PENDING if state.observed_generation not in (None, state.generation) else state.phase
    assert decision.phase in TRANSITIONS[start], f"{start} -> {decision.phase} is not in the transition table"


def test_every_phase_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(Phase)


def test_decisions_are_deterministic() -> None:
    for _, state, _, _ in CASES:
        assert decide(state, NOW) == decide(state, NOW)


def test_a_job_of_another_generation_is_not_ours() -> None:
    decision = decide(
        observed(Phase.OPTIMIZING, generation=4, observed_generation=4, job=job(JobState.SUCCEEDED, PASSED, 3)), NOW
    )
    assert decision.phase is Phase.OPTIMIZING and Child.JOB in decision.want and decision.remove_stale


def test_a_candidate_of_another_generation_is_not_ready_for_us() -> None:
    state = observed(Phase.DEPLOYING, job=job(JobState.SUCCEEDED, PASSED), candidate=candidate(True, generation=2))
    assert decide(state, NOW).phase is Phase.DEPLOYING


def test_failure_message_names_the_gate_and_keeps_the_baseline() -> None:
    decision = decide(observed(Phase.VALIDATING, job=job(JobState.SUCCEEDED, GATE_FAILED)), NOW)
    assert "fidelity_mean" in decision.message and Child.CANDIDATE not in decision.want
    assert decision.promote is None


def test_a_model_that_cannot_be_served_yet_stops_after_its_job_naming_the_artifact() -> None:
    why = "serving text-generation models is not supported yet"
    running = decide(observed(Phase.OPTIMIZING, job=job(JobState.RUNNING), serving_unsupported=why), NOW)
    assert running.phase is Phase.OPTIMIZING  # the job still runs: optimizing it is supported
    decision = decide(observed(Phase.VALIDATING, job=job(JobState.SUCCEEDED, PASSED), serving_unsupported=why), NOW)
    assert (decision.phase, decision.reason) == (Phase.FAILED, "ServingNotSupported")
    assert "published at pvc://m/3" in decision.message and why in decision.message
    assert Child.CANDIDATE not in decision.want and decision.promote is None and decision.weight is None
    failed = decide(observed(Phase.VALIDATING, job=job(JobState.SUCCEEDED, GATE_FAILED), serving_unsupported=why), NOW)
    assert failed.reason == "OptimizationFailed"  # a failed job says why it failed, not why serving would


def test_first_promotion_carries_the_artifact() -> None:
    state = observed(Phase.DEPLOYING, promoted_sha256=None, job=job(JobState.SUCCEEDED, PASSED), candidate=candidate(True))
    decision = decide(state, NOW)
    assert decision.promote is not None and decision.promote.artifact is not None
    assert decision.promote.artifact.sha256 == SHA


def test_deadline_failure_leaves_the_candidate_out() -> None:
    state = observed(
        Phase.DEPLOYING,
        phase_since=NOW - timedelta(hours=1),
        job=job(JobState.SUCCEEDED, PASSED),
        candidate=candidate(False, failure="corrupt model"),
    )
    decision = decide(state, NOW)
    assert "corrupt model" in decision.message and "baseline keeps serving" in decision.message
    assert Child.CANDIDATE not in decision.want and decision.remove_stale


def test_promoted_keeps_the_baseline_and_retires_the_candidate_only_once_it_serves() -> None:
    waiting = decide(observed(Phase.PROMOTED, baseline_ready=False), NOW)
    assert Child.BASELINE in waiting.want and not waiting.retire_candidate
    assert waiting.weight is None, "the split is left alone: a replica ratio at 100 % would scale the baseline to 0"
    assert not waiting.serving and waiting.requeue_after_s, "not Ready until the baseline serves; looked at again"
    serving = decide(observed(Phase.PROMOTED, baseline_ready=True), NOW)
    assert Child.BASELINE in serving.want and serving.retire_candidate and serving.weight == 0
    assert serving.serving and serving.requeue_after_s is None
    assert not decide(observed(Phase.FAILED), NOW).retire_candidate


CANARY_STEP = Decision(Phase.CANARY, "CanaryProgressing", "step 1/3 at weight 10%", weight=10)
CRASHING = "pod digits-candidate-x: container verify-artifact: CrashLoopBackOff: error model.onnx: sha256 differs"


def failing(seconds: float, ready: bool = False, failure: str = CRASHING) -> Observed:
    crashing = replace(candidate(ready, failure=failure), failing_since=NOW - timedelta(seconds=seconds))
    return observed(Phase.CANARY, job=job(JobState.SUCCEEDED, PASSED), candidate=crashing)


def test_a_candidate_failing_mid_canary_is_degraded_with_its_traffic_on_the_baseline() -> None:
    guarded = guard_failing_candidate(CANARY_STEP, failing(30), NOW, 600, traffic_off=0)
    assert (guarded.phase, guarded.reason, guarded.weight) == (Phase.CANARY, "Degraded", 0)
    assert "model.onnx: sha256 differs" in guarded.message
    replicas = guard_failing_candidate(CANARY_STEP, failing(30), NOW, 600, traffic_off=None)
    assert (replicas.reason, replicas.weight) == ("Degraded", 10), "the replica ratio's split is left as it is"


def test_a_candidate_failing_past_the_deadline_is_rolled_back() -> None:
    guarded = guard_failing_candidate(CANARY_STEP, failing(601), NOW, 600, traffic_off=0)
    assert (guarded.phase, guarded.reason, guarded.weight) == (Phase.ROLLED_BACK, "CandidateFailed", 0)
    assert guarded.retire_candidate and Child.CANDIDATE not in guarded.want
    assert "model.onnx: sha256 differs" in guarded.message and "baseline serves" in guarded.message


def test_a_candidate_unready_with_no_cause_known_is_left_to_the_judge_with_its_traffic_on_the_baseline() -> None:
    restarting = failing(900, failure="")
    assert guard_failing_candidate(CANARY_STEP, restarting, NOW, 600, traffic_off=0) == replace(CANARY_STEP, weight=0)
    assert guard_failing_candidate(CANARY_STEP, restarting, NOW, 600, traffic_off=None) == CANARY_STEP


@pytest.mark.parametrize(
    "state", [failing(900, ready=True), replace(failing(900), phase=Phase.DEPLOYING)], ids=["ready", "not in a canary"]
)
def test_a_serving_candidate_or_another_phase_is_left_alone(state: Observed) -> None:
    decision = CANARY_STEP if state.phase is Phase.CANARY else replace(CANARY_STEP, phase=state.phase)
    assert guard_failing_candidate(decision, state, NOW, 600, traffic_off=0) == decision
