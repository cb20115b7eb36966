"""The one module that turns a `Decision` into the status the operator writes.

Conditions follow the Kubernetes conventions: every type is always present (Unknown until
known), `lastTransitionTime` changes only when the condition's status changes, and each carries
the generation it describes. Optimized and Validated come from the Job's result, not from the
phase, so a failure says which of the two failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from optiserve.api.job import ArtifactRef, JobResult
from optiserve.api.status import CanaryStatus, Condition, OptimizationSummary, Phase
from optiserve.domain.canary import CanaryProgress
from optiserve.domain.lifecycle import PROMOTED_STARTING, TERMINAL, Decision, JobObservation, JobState
from optiserve.domain.pipeline_generation import described_generation

ConditionStatus = Literal["True", "False", "Unknown"]
CONDITION_TYPES = ("Ready", "Optimized", "Validated", "Progressing", "Degraded")
WARNING_PHASES = frozenset({Phase.FAILED, Phase.ROLLED_BACK})


@dataclass(frozen=True)
class Wanted:
    status: ConditionStatus
    reason: str
    message: str = ""


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _optimized_and_validated(job: JobObservation | None) -> tuple[Wanted, Wanted]:
    if job is None:
        return Wanted("Unknown", "JobNotStarted"), Wanted("Unknown", "NotValidated")
    if job.state is JobState.RUNNING:
        return Wanted("Unknown", "JobRunning", "the optimization job is running"), Wanted("Unknown", "NotValidated")
    result = job.result
    if result is None or (not result.passed and not result.failed_gates):
        reason = (result.reason if result is not None else "") or job.failure or "the optimization job failed"
        return Wanted("False", "OptimizationFailed", reason), Wanted("Unknown", "NotValidated")
    speedup = f"speedup {result.speedup_p50:.2f}x" if result.speedup_p50 else "optimized"
    if result.passed:
        return Wanted("True", "Optimized", speedup), Wanted("True", "GatesPassed", "every validation gate passed")
    failed = f"failed gates: {', '.join(result.failed_gates)}" + (f" ({result.reason})" if result.reason else "")
    return Wanted("True", "Optimized", speedup), Wanted("False", "GatesFailed", failed)


def wanted_conditions(decision: Decision, job: JobObservation | None) -> dict[str, Wanted]:
    optimized, validated = _optimized_and_validated(job)
    phase = decision.phase
    terminal = phase in TERMINAL
    degraded_now = phase in WARNING_PHASES or decision.reason == "Degraded"
    degraded = Wanted("True", decision.reason, decision.message) if degraded_now else Wanted("False", "AsExpected")
    return {
        "Ready": _ready(decision),
        "Optimized": optimized,
        "Validated": validated,
        "Progressing": Wanted("False" if terminal else "True", decision.reason, decision.message),
        "Degraded": degraded,
    }


def _ready(decision: Decision) -> Wanted:
    """True once promoted *and* the baseline serves the promoted artifact: a promotion writes the
    baseline, and its pods start after; until they are ready the model is not (the candidate may
    still serve, and a spec changed then removes it)."""
    if decision.phase is Phase.PROMOTED and decision.serving:
        return Wanted("True", decision.reason, decision.message)
    if decision.phase is Phase.PROMOTED:
        return Wanted("False", "BaselineStarting", PROMOTED_STARTING)
    return Wanted("False", decision.reason, decision.message)


def _conditions(wanted: Mapping[str, Wanted], previous: object, generation: int, now: datetime) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous if isinstance(c, dict)} if isinstance(previous, list) else {}
    conditions = []
    for kind in CONDITION_TYPES:
        want = wanted[kind]
        old = before.get(kind, {})
        since = (
            old.get("lastTransitionTime") if old.get("status") == want.status and old.get("lastTransitionTime") else rfc3339(now)
        )
        conditions.append(_condition(kind, want, str(since), generation))
    return conditions


def _condition(kind: str, want: Wanted, since: str, generation: int) -> dict[str, Any]:
    condition = Condition(
        type=kind,
        status=want.status,
        reason=want.reason,
        message=want.message,
        last_transition_time=since,
        observed_generation=generation,
    )
    return condition.model_dump(mode="json", by_alias=True, exclude_none=True)


def _with_ready(previous: object, ready: Wanted, generation: int, now: datetime) -> list[dict[str, Any]] | None:
    """The written conditions with Ready replaced, where its status changed; None where it did not."""
    if not isinstance(previous, list):
        return None
    is_ready = [isinstance(c, dict) and c.get("type") == "Ready" for c in previous]
    if any(is_ready) and previous[is_ready.index(True)].get("status") == ready.status:
        return None
    others = [c for c, ready_type in zip(previous, is_ready, strict=True) if not ready_type]
    return [_condition("Ready", ready, rfc3339(now), generation), *others]


def summary(result: JobResult) -> dict[str, Any]:
    return OptimizationSummary(
        speedup=result.speedup_p50,
        size_ratio=result.size_ratio,
        accuracy_delta=result.accuracy_delta,
        fidelity_mean=result.fidelity_mean,
        fidelity_min=result.fidelity_min,
    ).model_dump(mode="json", by_alias=True, exclude_none=True)


def phase_since(phase: Phase, previous: Mapping[str, Any], generation: int, now: datetime) -> str:
    """When the resource entered `phase`: kept while phase and generation stay, `now` otherwise
    (a spec change restarts the pipeline, even when it lands in the phase it was in)."""
    kept = previous.get("phaseSince")
    unchanged = previous.get("phase") == phase.value and described_generation(previous) == generation
    return kept if unchanged and isinstance(kept, str) and kept else rfc3339(now)


def build_status(
    decision: Decision,
    *,
    generation: int,
    previous: Mapping[str, Any],
    job: JobObservation | None,
    now: datetime,
    observed_generation: int | None = None,
    spec_digest: str | None = None,
) -> dict[str, Any]:
    """The status patch (JSON merge patch: a None value removes the field) for this decision.

    ``generation`` is the pipeline's (see `optiserve.domain.pipeline_generation`);
    ``observed_generation``, the resource's metadata.generation now (defaults to it).
    """
    observed = observed_generation if observed_generation is not None else generation
    same_generation = described_generation(previous) == generation
    since = phase_since(decision.phase, previous, generation, now)
    tracking: dict[str, Any] = {"observedGeneration": observed, "pipelineGeneration": generation}
    if spec_digest is not None:
        tracking["specDigest"] = spec_digest
    reconfirmed = same_generation and previous.get("observedGeneration") == observed
    if reconfirmed and decision.phase in TERMINAL and previous.get("phase") == decision.phase.value:
        # A terminal phase re-confirmed: the Job may be gone by now, so keep what was written,
        # except Ready, which follows the baseline's pods.
        kept: dict[str, Any] = {"phase": decision.phase.value, "phaseSince": since, **tracking}
        conditions = _with_ready(previous.get("conditions"), _ready(decision), observed, now)
        if conditions is not None:
            kept["conditions"] = conditions
        return kept
    status: dict[str, Any] = {
        "phase": decision.phase.value,
        "phaseSince": since,
        **tracking,
        "message": decision.message,
        "conditions": _conditions(wanted_conditions(decision, job), previous.get("conditions"), observed, now),
    }
    ours = job if job is not None and job.generation == generation else None
    if ours is not None and ours.result is not None:
        status["optimization"] = summary(ours.result)
    elif not same_generation:
        status["optimization"] = None  # the previous generation's summary no longer describes the spec
    promoted = decision.promote.artifact if decision.promote is not None else None
    if promoted is not None:
        artifact = ArtifactRef(uri=promoted.uri, sha256=promoted.sha256, size_bytes=promoted.size_bytes)
        status["artifact"] = artifact.model_dump(mode="json", by_alias=True)
    if decision.canary is not None:
        status["canary"] = canary_status(decision.canary, decision.candidate_sha256)
    elif not same_generation:
        status["canary"] = None  # a new spec: the last rollout's progress describes nothing now
    return status


def canary_status(progress: CanaryProgress, candidate_sha256: str | None = None) -> dict[str, Any]:
    """What `kubectl get/describe om` shows of the rollout, and its state for the next reconcile."""
    latest = progress.history[-1] if progress.history else None
    measurements = [m.model_dump(mode="json", exclude_none=True) for m in latest.measurements] if latest else []
    return CanaryStatus(
        weight=progress.weight,
        step=progress.step + 1,
        candidate_artifact=f"sha256:{candidate_sha256}" if candidate_sha256 else None,
        state=progress.state.value,
        last_verdict=latest.decision.value if latest else None,
        reason=progress.reason or None,
        decision_time_seconds=progress.decision_time_s,
        measurements=measurements,
        progress=progress.model_dump(mode="json"),
    ).model_dump(mode="json", by_alias=True, exclude_none=True)
