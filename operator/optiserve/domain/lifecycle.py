"""The phase state machine: `decide(spec, observed, now)` -> the next phase, children and status.

Level-based: the decision depends only on the spec, on what is observed in the cluster now and on
the time, never on which event woke the reconciler; running it twice on the same inputs gives the
same answer, and the reconciler can crash anywhere between acting on it and writing status.

Phases: Pending -> Optimizing -> Validating -> Deploying -> Canary -> Promoted | RolledBack | Failed.
The first candidate of a resource has no baseline to compare with; as in Flagger's
initialisation, it is promoted once ready, without a canary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from optiserve.api.job import JobResult
from optiserve.api.status import Phase
from optiserve.domain.canary import CanaryProgress, RolloutState

TERMINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED})

# Which phase may follow which: the table the tests walk. Reconcile is level-based, so a phase may
# be skipped (a restart finds the job already done); a spec change restarts from Pending.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.OPTIMIZING, Phase.VALIDATING, Phase.FAILED}),
    Phase.OPTIMIZING: frozenset({Phase.OPTIMIZING, Phase.VALIDATING, Phase.FAILED}),
    Phase.VALIDATING: frozenset({Phase.DEPLOYING, Phase.CANARY, Phase.PROMOTED, Phase.FAILED}),
    Phase.DEPLOYING: frozenset({Phase.DEPLOYING, Phase.CANARY, Phase.PROMOTED, Phase.FAILED}),
    Phase.CANARY: frozenset({Phase.CANARY, Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED}),
    Phase.PROMOTED: frozenset({Phase.PROMOTED}),
    Phase.ROLLED_BACK: frozenset({Phase.ROLLED_BACK}),
    Phase.FAILED: frozenset({Phase.FAILED}),
}


class JobState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobObservation:
    generation: int
    state: JobState
    result: JobResult | None = None
    failure: str = ""
    current_pass: str | None = None
    """While it runs: the pass it is in, as `2/4 distill` (from its log); None where not known."""


@dataclass(frozen=True)
class CandidateObservation:
    generation: int
    artifact_sha256: str
    ready: bool
    """Triton reports the model ready and a real inference succeeded (warm)."""
    failure: str = ""
    """Why the candidate cannot become ready (e.g. the model failed to load), when known."""
    failing_since: datetime | None = None
    """When the newest pod saying so was created: how long it has been failing."""


@dataclass(frozen=True)
class Observed:
    generation: int
    phase: Phase
    observed_generation: int | None
    phase_since: datetime | None
    promoted_sha256: str | None
    """The artifact the baseline serves; None before the first promotion."""
    job: JobObservation | None = None
    candidate: CandidateObservation | None = None
    spec_errors: tuple[str, ...] = ()
    baseline_ready: bool = False
    """The baseline Deployment serves the promoted artifact and is ready."""
    baseline_exists: bool = False
    """A baseline Deployment exists (of any generation): something the router can send traffic to."""
    traffic_error: str = ""
    """The router could not be set up or read (the message names the field); empty when it was fine or not needed."""
    replica_split: bool = False
    """The traffic split is the replica ratio: an unready pod gets no traffic, so a failing candidate's
    weight is left alone (see `guard_failing_candidate`)."""
    serving_unsupported: str = ""
    """Why this resource's model can be optimized but not served yet (a text-generation model); empty otherwise."""

    @property
    def candidate_deployed(self) -> bool:
        """This generation's candidate Deployment exists."""
        return self.candidate is not None and self.candidate.generation == self.generation


class Child(StrEnum):
    JOB = "job"
    CANDIDATE = "candidate"
    BASELINE = "baseline"
    COMPARATOR = "comparator"
    """The online accuracy probe: it runs while the canary does."""


@dataclass(frozen=True)
class Decision:
    phase: Phase
    reason: str
    message: str
    want: frozenset[Child] = frozenset()
    """Children that must exist for this generation (created or adopted)."""
    remove_stale: bool = False
    """Remove children of other generations (never the baseline)."""
    promote: JobResult | None = None
    """Make this result's artifact the baseline's."""
    retire_candidate: bool = False
    """Remove the candidate Deployment and Service: the baseline now serves what it served."""
    requeue_after_s: float | None = None
    events: tuple[str, ...] = field(default=())
    weight: int | None = None
    """The candidate's traffic weight the router must have (None: leave the router alone)."""
    canary: CanaryProgress | None = None
    """The rollout's state after this reconcile (written to status.canary)."""
    candidate_sha256: str | None = None
    """The artifact on trial (status.canary.candidateArtifact: what a GitOps approval names)."""
    serving: bool = False
    """The baseline is ready with the promoted artifact: what the Ready condition reports, so that
    `kubectl wait --for=condition=Ready` returns only once the optimized model answers."""


DEPLOY_DEADLINE_S = 600.0
POLL_S = 10.0
PROMOTED_SERVING = "promoted; the baseline serves the optimized model"
PROMOTED_STARTING = "promoted; waiting for the baseline's pods to serve the optimized model"


CanaryStep = Callable[[JobResult], "Decision"]
"""The rollout engine's step for this reconcile, given the candidate's job result (the host measures
the due interval and advances the canary); `decide` calls it only while the resource is in Canary."""


def route_weight(decision: Decision, observed: Observed) -> int | None:
    """The candidate weight the router must have after ``decision``; None to leave it alone.

    While this generation's candidate is deployed, the decision's. Without it, once a baseline exists,
    0: nothing else can serve. That makes an owned route exist from the first promotion on (clients
    use the Gateway before any canary runs), and it takes the traffic off a candidate of an earlier
    generation (a spec changed mid-canary) before that candidate is removed as stale. Both were
    found on real pods: every request through the Gateway answered 404 until a canary began.
    """
    if observed.candidate_deployed:
        return decision.weight
    return 0 if observed.baseline_exists else None


def traffic_failed(error: str) -> Decision:
    """The router cannot be set up or does not take the weight: the rollout fails with the field
    named, and the baseline keeps serving."""
    message = f"{error}; the baseline keeps serving"
    return Decision(Phase.FAILED, "TrafficError", message, want=frozenset({Child.JOB}), remove_stale=True, retire_candidate=True)


def _restarted(observed: Observed) -> bool:
    return observed.observed_generation is not None and observed.generation != observed.observed_generation


def decide(
    observed: Observed, now: datetime, deploy_deadline_s: float = DEPLOY_DEADLINE_S, canary: CanaryStep | None = None
) -> Decision:
    """The next step for one resource, from what is observed now: computed once per reconcile.

    In Canary, ``canary`` (the rollout engine's step) says where the rollout goes, and a candidate
    that stopped serving is guarded (`guard_failing_candidate`); without it (the pure tests of the
    phase machine) the resource stays in Canary. A router that could not be read fails the rollout
    wherever the decision needs it."""
    decision = _decide(observed, now, deploy_deadline_s, canary)
    if observed.traffic_error and route_weight(decision, observed) is not None:
        return traffic_failed(observed.traffic_error)
    return decision


def _decide(observed: Observed, now: datetime, deploy_deadline_s: float, canary: CanaryStep | None) -> Decision:
    if observed.spec_errors:
        return Decision(Phase.FAILED, "InvalidSpec", "; ".join(observed.spec_errors), remove_stale=True)
    phase = Phase.PENDING if _restarted(observed) else observed.phase
    if phase is Phase.PROMOTED:
        # Level-based after promotion too: the baseline is kept (recreated if deleted), and the
        # candidate goes once the baseline serves, never before (nothing would serve in between).
        # Traffic moves back to the baseline Service first, then the candidate goes. Until the
        # baseline is ready the split is left as it is, not pinned to the candidate: with the
        # replica-ratio router, "all on the candidate" is a baseline scaled to 0 pods, which can
        # never become ready (the reconcile then scales it to its replicas, the candidate keeps its own).
        serving = observed.baseline_ready
        return Decision(
            phase,
            "Done" if serving else "BaselineStarting",
            PROMOTED_SERVING if serving else PROMOTED_STARTING,
            want=frozenset({Child.BASELINE}),
            remove_stale=True,
            retire_candidate=serving,
            weight=0 if serving else None,
            serving=serving,
            requeue_after_s=None if serving else POLL_S,
        )
    if phase is Phase.ROLLED_BACK:
        # All traffic on the baseline (it never stopped serving), the candidate scaled away.
        return Decision(phase, "Done", "rolled back; the baseline serves", remove_stale=True, retire_candidate=True, weight=0)
    if phase in TERMINAL:
        return Decision(phase, "Done", f"{phase.value}", remove_stale=phase is not Phase.FAILED)
    job = observed.job if observed.job and observed.job.generation == observed.generation else None
    if phase in (Phase.PENDING, Phase.OPTIMIZING) or job is None or job.state is JobState.RUNNING:
        return _optimizing(observed, job)
    result = job.result
    if job.state is JobState.FAILED or result is None or not result.passed:
        reason = (result.reason if result and result.reason else job.failure) or "the optimization job failed"
        gates = f" (failed gates: {', '.join(result.failed_gates)})" if result and result.failed_gates else ""
        return Decision(Phase.FAILED, "OptimizationFailed", reason + gates, remove_stale=True)
    if observed.serving_unsupported:
        where = f"; the optimized model is published at {result.artifact.uri}" if result.artifact else ""
        message = f"optimization passed{where}, but {observed.serving_unsupported}; nothing was deployed"
        return Decision(Phase.FAILED, "ServingNotSupported", message, remove_stale=True)
    decision = _deploying(observed, result, now, deploy_deadline_s)
    if decision.phase is not Phase.CANARY or canary is None:
        return decision
    traffic_off = None if observed.replica_split else 0
    return guard_failing_candidate(canary(result), observed, now, deploy_deadline_s, traffic_off)


def _optimizing(observed: Observed, job: JobObservation | None) -> Decision:
    if job is not None and job.state is not JobState.RUNNING:
        return Decision(
            Phase.VALIDATING,
            "JobFinished",
            "reading the optimization job's result",
            want=frozenset({Child.JOB}),
            remove_stale=True,
            requeue_after_s=0,
        )
    message = f"optimization job for generation {observed.generation} is running"
    if job is not None and job.current_pass:
        message += f": pass {job.current_pass}"
    return Decision(
        Phase.OPTIMIZING, "JobRunning", message, want=frozenset({Child.JOB}), remove_stale=True, requeue_after_s=POLL_S
    )


def _deploying(observed: Observed, result: JobResult, now: datetime, deadline_s: float) -> Decision:
    assert result.artifact is not None
    want = frozenset({Child.JOB, Child.CANDIDATE})
    candidate = observed.candidate
    ours = candidate is not None and candidate.generation == observed.generation
    if observed.phase is Phase.CANARY and ours:
        return Decision(Phase.CANARY, "CanaryInProgress", "candidate deployed next to the baseline at weight 0", want=want)
    if ours and candidate is not None and candidate.ready:
        if observed.promoted_sha256 is None:
            return Decision(
                Phase.PROMOTED,
                "Initialized",
                "first candidate promoted without a canary (no baseline yet)",
                want=want,
                remove_stale=True,
                promote=result,
            )
        return Decision(Phase.CANARY, "CanaryStarted", "candidate ready and warm; canary starts at weight 0", want=want)
    waited = (now - observed.phase_since).total_seconds() if observed.phase is Phase.DEPLOYING and observed.phase_since else 0.0
    failure = candidate.failure if ours and candidate is not None else ""
    if waited > deadline_s:
        detail = f": {failure}" if failure else ""
        return Decision(
            Phase.FAILED,
            "ProgressDeadlineExceeded",
            f"candidate not ready after {deadline_s:.0f}s{detail}; the baseline keeps serving",
            want=frozenset({Child.JOB}),
            remove_stale=True,
        )
    message = f"deploying the candidate (artifact {result.artifact.sha256[:12]})" + (f": {failure}" if failure else "")
    return Decision(Phase.DEPLOYING, "Degraded" if failure else "Deploying", message, want=want, requeue_after_s=POLL_S)


def guard_failing_candidate(
    decision: Decision, observed: Observed, now: datetime, deadline_s: float, traffic_off: int | None
) -> Decision:
    """A candidate that stops serving mid-canary with a known cause (its artifact check failing, its
    model not loading, a crash loop) is not left to the judge, which sees only missing data and would
    hold for a person: the resource is Degraded with the cause named, its traffic goes to the baseline
    (`traffic_off`: 0 for a Gateway; None for the replica ratio, where an unready pod gets none
    anyway), and once the latest attempt has failed for longer than the deploy deadline it is rolled
    back. A candidate that recovers before that carries on where its canary was. Unready with no
    cause known, only its traffic moves."""
    candidate = observed.candidate
    if decision.phase is not Phase.CANARY or candidate is None or candidate.generation != observed.generation or candidate.ready:
        return decision
    if not candidate.failure:
        # No pod says why (one restarting, being rescheduled): the judge decides, but the traffic waits
        # on the baseline, since a Gateway would answer 503 for the share of a Service with no ready pod.
        return replace(decision, weight=traffic_off) if traffic_off is not None else decision
    failing_s = (now - candidate.failing_since).total_seconds() if candidate.failing_since else 0.0
    if failing_s > deadline_s:
        reason = f"the candidate stopped serving for {failing_s:.0f}s (deadline {deadline_s:.0f}s): {candidate.failure}"
        progress = decision.canary
        final = (
            progress.model_copy(update={"state": RolloutState.ROLLED_BACK, "reason": reason, "weight": 0}) if progress else None
        )
        return Decision(
            Phase.ROLLED_BACK,
            "CandidateFailed",
            f"{reason}; rolled back, the baseline serves",
            want=frozenset({Child.JOB}),
            retire_candidate=True,
            weight=0,
            canary=final,
            candidate_sha256=decision.candidate_sha256,
        )
    message = f"the candidate stopped serving: {candidate.failure}; its traffic is on the baseline"
    weight = traffic_off if traffic_off is not None else decision.weight
    return replace(decision, reason="Degraded", message=message, weight=weight)


def canary_decision(progress: CanaryProgress, result: JobResult, steps: int, poll_s: float) -> Decision:
    """Where the canary's state machine (`optiserve.domain.canary`) leaves the resource."""
    decision = _canary_decision(progress, result, steps, poll_s)
    candidate_sha256 = result.artifact.sha256 if result.artifact is not None else None
    return replace(decision, candidate_sha256=candidate_sha256)


def _canary_decision(progress: CanaryProgress, result: JobResult, steps: int, poll_s: float) -> Decision:
    want = frozenset({Child.JOB, Child.CANDIDATE})
    state = progress.state
    if state is RolloutState.PROMOTED:
        return Decision(
            Phase.PROMOTED,
            "CanaryPassed",
            progress.reason,
            want=want,
            remove_stale=True,
            promote=result,
            weight=100,
            canary=progress,
        )
    if state is RolloutState.ROLLED_BACK:
        reason = "Aborted" if progress.aborted else "CanaryFailed"
        return Decision(
            Phase.ROLLED_BACK,
            reason,
            progress.reason,
            want=frozenset({Child.JOB}),
            retire_candidate=True,
            weight=0,
            canary=progress,
        )
    where = f"step {progress.step + 1}/{steps} at weight {progress.weight}%"
    reasons = {RolloutState.HELD: "CanaryHeld", RolloutState.AWAITING_PROMOTION: "AwaitingPromotion"}
    return Decision(
        Phase.CANARY,
        reasons.get(state, "CanaryProgressing"),
        f"{where}: {progress.reason}" if progress.reason else where,
        want=want | {Child.COMPARATOR},
        weight=progress.weight,
        canary=progress,
        requeue_after_s=poll_s,
    )
