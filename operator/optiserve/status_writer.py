"""The one module that reads status into its model and turns a `Decision` into the status the operator writes.

`read_status` parses what the API server holds once per reconcile (`OptimizedModelStatus`); every
reader after it works on that model, never on camelCase keys.

Conditions follow the Kubernetes conventions: every type is always present (Unknown until
known), `lastTransitionTime` changes only when the condition's status changes, and each carries
the generation it describes. Optimized and Validated come from the Job's result, not from the
phase, so a failure says which of the two failed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import ValidationError

from optiserve.api.job import JobResult
from optiserve.api.status import CanaryStatus, Condition, OptimizationSummary, OptimizedModelStatus, Phase, artifact_digest
from optiserve.domain.canary import CanaryProgress
from optiserve.domain.lifecycle import PROMOTED_STARTING, TERMINAL, Decision, JobObservation, JobState
from optiserve.domain.pipeline_generation import described_generation

logger = logging.getLogger(__name__)

ConditionStatus = Literal["True", "False", "Unknown"]
CONDITION_TYPES = ("Ready", "Optimized", "Validated", "Progressing", "Degraded")
WARNING_PHASES = frozenset({Phase.FAILED, Phase.ROLLED_BACK})


@dataclass(frozen=True)
class Wanted:
    status: ConditionStatus
    reason: str
    message: str = ""


def read_status(raw: Mapping[str, Any]) -> OptimizedModelStatus:
    """The status as its model. A field that does not parse (edited by hand, or written by a
    version that is gone) is dropped with a warning rather than failing the reconcile: the
    operator writes it again from what it observes."""
    document = dict(raw)
    while True:
        try:
            return OptimizedModelStatus.model_validate(document)
        except ValidationError as e:
            bad = {str(error["loc"][0]) for error in e.errors() if error["loc"]} & set(document)
            if not bad:
                return OptimizedModelStatus()
            logger.warning("status fields %s do not parse; they are rewritten", ", ".join(sorted(bad)))
            document = {key: value for key, value in document.items() if key not in bad}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _optimized_and_validated(job: JobObservation | None) -> tuple[Wanted, Wanted]:
    if job is None:
        return Wanted("Unknown", "JobNotStarted"), Wanted("Unknown", "NotValidated")
    if job.state is JobState.RUNNING:
        running = "the optimization job is running" + (f": pass {job.current_pass}" if job.current_pass else "")
        return Wanted("Unknown", "JobRunning", running), Wanted("Unknown", "NotValidated")
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


def _conditions(
    wanted: Mapping[str, Wanted], previous: Sequence[Condition], generation: int, now: datetime
) -> list[dict[str, Any]]:
    before = {c.type: c for c in previous}
    conditions = []
    for kind in CONDITION_TYPES:
        want = wanted[kind]
        old = before.get(kind)
        kept = old.last_transition_time if old is not None and old.status == want.status else None
        conditions.append(_condition(kind, want, kept or rfc3339(now), generation))
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


def _with_ready(previous: Sequence[Condition], ready: Wanted, generation: int, now: datetime) -> list[dict[str, Any]] | None:
    """The written conditions with Ready replaced, where its status changed; None where it did not."""
    if not previous:
        return None
    if any(c.type == "Ready" and c.status == ready.status for c in previous):
        return None
    others = [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in previous if c.type != "Ready"]
    return [_condition("Ready", ready, rfc3339(now), generation), *others]


def summary(result: JobResult) -> dict[str, Any]:
    return OptimizationSummary(
        speedup=result.speedup_p50,
        size_ratio=result.size_ratio,
        accuracy_delta=result.accuracy_delta,
        fidelity_mean=result.fidelity_mean,
        fidelity_min=result.fidelity_min,
    ).model_dump(mode="json", by_alias=True, exclude_none=True)


KEEP: Final = object()
"""A status field this reconcile leaves as it is."""


def _optimization(ours: JobObservation | None, previous: OptimizedModelStatus, same_generation: bool) -> object:
    """status.optimization (a merge patch: None removes a key): the summary of the generation's Job
    once it has a result; while it runs, the pass it is in where known (else the one written stays);
    removed for a new generation, whose Job has not said anything yet."""
    had_pass = previous.optimization is not None and previous.optimization.current_pass is not None
    if ours is not None and ours.result is not None:
        return {**summary(ours.result), **({"currentPass": None} if had_pass else {})}
    if not same_generation:
        return None  # the previous generation's summary no longer describes the spec
    if ours is None:
        return KEEP
    if ours.state is JobState.RUNNING:
        return {"currentPass": ours.current_pass} if ours.current_pass else KEEP
    return {"currentPass": None} if had_pass else KEEP


def phase_since(phase: Phase, previous: OptimizedModelStatus, generation: int, now: datetime) -> str:
    """When the resource entered `phase`: kept while phase and generation stay, `now` otherwise
    (a spec change restarts the pipeline, even when it lands in the phase it was in)."""
    kept = previous.phase_since
    unchanged = previous.phase is phase and described_generation(previous) == generation
    return kept if unchanged and kept else rfc3339(now)


@dataclass(frozen=True)
class Tracking:
    """What the status records besides the decision."""

    observed_generation: int | None = None
    """The resource's metadata.generation now (defaults to the pipeline's generation)."""
    spec_digest: str | None = None
    verified_weight: int | None = None
    """The candidate weight the router read back in this reconcile."""


def build_status(
    decision: Decision,
    *,
    generation: int,
    previous: OptimizedModelStatus | Mapping[str, Any],
    job: JobObservation | None,
    now: datetime,
    tracking: Tracking | None = None,
) -> dict[str, Any]:
    """The status patch (JSON merge patch: a None value removes the field) for this decision.

    ``generation`` is the pipeline's (see `optiserve.domain.pipeline_generation`).
    """
    if not isinstance(previous, OptimizedModelStatus):
        previous = read_status(previous)
    tracked = tracking or Tracking()
    spec_digest, verified_weight = tracked.spec_digest, tracked.verified_weight
    observed = tracked.observed_generation if tracked.observed_generation is not None else generation
    same_generation = described_generation(previous) == generation
    since = phase_since(decision.phase, previous, generation, now)
    generations: dict[str, Any] = {"observedGeneration": observed, "pipelineGeneration": generation}
    if spec_digest is not None:
        generations["specDigest"] = spec_digest
    reconfirmed = same_generation and previous.observed_generation == observed
    if reconfirmed and decision.phase in TERMINAL and previous.phase is decision.phase:
        # A terminal phase re-confirmed: the Job may be gone by now, so keep what was written,
        # except Ready, which follows the baseline's pods.
        kept: dict[str, Any] = {"phase": decision.phase.value, "phaseSince": since, **generations}
        conditions = _with_ready(previous.conditions, _ready(decision), observed, now)
        if conditions is not None:
            kept["conditions"] = conditions
        return kept
    status: dict[str, Any] = {
        "phase": decision.phase.value,
        "phaseSince": since,
        **generations,
        "message": decision.message,
        "conditions": _conditions(wanted_conditions(decision, job), previous.conditions, observed, now),
    }
    ours = job if job is not None and job.generation == generation else None
    optimization = _optimization(ours, previous, same_generation)
    if optimization is not KEEP:
        status["optimization"] = optimization
    promoted = decision.promote.artifact if decision.promote is not None else None
    if promoted is not None:
        status["artifact"] = promoted.model_dump(mode="json", by_alias=True)
    if decision.canary is not None:
        status["canary"] = canary_status(decision.canary, decision.candidate_sha256, verified_weight)
    elif not same_generation:
        status["canary"] = None  # a new spec: the last rollout's progress describes nothing now
    return status


def canary_status(
    progress: CanaryProgress, candidate_sha256: str | None = None, verified_weight: int | None = None
) -> dict[str, Any]:
    """What `kubectl get/describe om` shows of the rollout, and its state for the next reconcile.

    ``weight`` is what the router verified (a failing candidate's traffic is on the baseline while
    its step's weight stays in the progress); the step's own weight where the router was not read."""
    latest = progress.history[-1] if progress.history else None
    measurements = [m.model_dump(mode="json", exclude_none=True) for m in latest.measurements] if latest else []
    return CanaryStatus(
        weight=progress.weight if verified_weight is None else verified_weight,
        step=progress.step + 1,
        candidate_artifact=artifact_digest(candidate_sha256) if candidate_sha256 else None,
        state=progress.state.value,
        last_verdict=latest.decision.value if latest else None,
        reason=progress.reason or None,
        decision_time_seconds=progress.decision_time_s,
        measurements=measurements,
        progress=progress.model_dump(mode="json"),
    ).model_dump(mode="json", by_alias=True, exclude_none=True)
