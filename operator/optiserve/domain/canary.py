"""The canary rollout as a pure state machine: steps, pauses, judged intervals, approval, abort, deadline.

One step of a rollout, each time its host wakes (`optiserve.rollout_engine` drives it, for the
operator and for local mode alike):

1. `due_window(plan, progress, now)` says whether an analysis interval has ended and, if so, the
   window to measure (seconds since the first canary traffic);
2. the engine measures that window (Prometheus, the comparator) into `Measurement`s;
3. `step(plan, progress, now, signals, measured, verified_weight)` folds them into the
   judge (`advance`) and returns the next `CanaryProgress` (kept in status, or in memory in local
   mode), the weight the router must have and the interval's verdict.

Timeline. The first call sets the first step's weight and starts the clock (``started_at``: the first
canary traffic). Intervals end at ``warmup + k * interval`` after it; each judges everything since
warm-up (the analysis plan's window), so evidence grows with the canary. After an interval in which
every metric was Successful, and once the step's pause has elapsed, the rollout moves to the next
step. The last step (weight 100) completes only when the judge promotes (every metric Successful in
at least ``required_successes`` intervals, the latest included), so a canary is never promoted on
less evidence than a one-step analysis would need. With the default three steps, one interval per
step: promotion at ``warmup + 3 * interval``.

Rollback (a Failed limit, consecutive Errors, an abort, the progress deadline) sends every request
to the baseline at once. A hold (a metric with no series, or too many Inconclusive intervals) also
sends traffic back to the baseline, which is known to work, and waits for a person: the promote
annotation (or the GitOps digest) promotes, the abort annotation rolls back, a new spec restarts.
With ``promotion: manual``, the judged rollout waits at the last step for the approval; judging goes on
while it waits, so a regression that shows up late still rolls back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from optiserve.domain.analysis import (
    Analysis,
    AnalysisPolicy,
    Decision,
    DomainModel,
    IntervalRecord,
    Measurement,
    MetricCheck,
    MetricTally,
    Outcome,
    Verdict,
)
from optiserve.domain.evidence import Windows, interval_windows
from optiserve.domain.judge import step as judge_step


@dataclass(frozen=True)
class Step:
    weight: int
    pause_s: float = 0.0


@dataclass(frozen=True)
class CanaryPlan:
    """Everything the rollout needs from the spec, already parsed."""

    steps: tuple[Step, ...]
    checks: tuple[MetricCheck, ...]
    policy: AnalysisPolicy
    interval_s: float
    manual: bool = False
    progress_deadline_s: float = 1800.0
    window_s: float = math.inf
    scrape_s: float = 5.0
    """Prometheus' scrape interval: how sparse the latency values are (see `evidence_windows`)."""

    def __post_init__(self) -> None:
        if not self.steps or self.steps[-1].weight != 100:
            raise ValueError("steps: the last step must send 100% of the traffic to the candidate")
        if self.interval_s <= 0:
            raise ValueError(f"interval: must be positive, got {self.interval_s}")


class RolloutState(StrEnum):
    """Where the rollout stands after a call to `advance`."""

    PROGRESSING = "Progressing"
    AWAITING_PROMOTION = "AwaitingPromotion"
    HELD = "Held"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class CanaryProgress(DomainModel):
    """What the rollout remembers between wake-ups (written to status.canary)."""

    step: int = Field(default=0, ge=0, description="Index of the current step.")
    weight: int = Field(default=0, ge=0, le=100, description="Weight last set on the router.")
    started_at: datetime = Field(description="The first canary traffic: intervals count from here.")
    step_started_at: datetime
    progressed_at: datetime = Field(description="Last step change: the progress deadline counts from here.")
    last_interval_s: float = Field(default=0.0, ge=0, description="End of the last judged interval (s after started_at).")
    state: RolloutState = RolloutState.PROGRESSING
    reason: str = ""
    decision_time_s: float | None = Field(default=None, description="When the final decision was made (s after started_at).")
    aborted: bool = Field(default=False, description="Rolled back by a person (the abort annotation), not by the judge.")
    tallies: dict[str, MetricTally] = Field(default_factory=dict)
    history: tuple[IntervalRecord, ...] = ()

    @property
    def is_final(self) -> bool:
        return self.state in (RolloutState.PROMOTED, RolloutState.ROLLED_BACK)


@dataclass(frozen=True)
class Signals:
    """A person's (or a GitOps pipeline's) input, read from the resource."""

    approved: bool = False
    """The promote annotation, or rollout.promoteArtifact naming this candidate's digest."""
    aborted: bool = False


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    """Seconds after the first canary traffic; the window is (start_s, end_s]."""

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


def start(plan: CanaryPlan, now: datetime) -> CanaryProgress:
    """The rollout's first state: the first step's weight, the clock started."""
    return CanaryProgress(weight=plan.steps[0].weight, started_at=now, step_started_at=now, progressed_at=now)


def elapsed_s(progress: CanaryProgress, now: datetime) -> float:
    return max(0.0, (now - progress.started_at).total_seconds())


def due_window(plan: CanaryPlan, progress: CanaryProgress, now: datetime) -> Window | None:
    """The window to measure if an interval ended since the last judged one (the latest such
    interval only: a late wake-up judges once, on all the evidence, rather than replaying)."""
    if progress.is_final:
        return None
    warmup = plan.policy.warmup_s
    k = math.floor((elapsed_s(progress, now) - warmup) / plan.interval_s + 1e-9)
    end = warmup + k * plan.interval_s
    if k < 1 or end <= progress.last_interval_s + 1e-9:
        return None
    return Window(start_s=max(end - plan.window_s, warmup), end_s=end)


def evidence_windows(plan: CanaryPlan, progress: CanaryProgress, window: Window) -> Windows:
    """The windows the judge weighs for ``window``: all of it, suffixes from recent interval
    boundaries, and one from the current step's start (its weight change), so a regression that
    begins with a higher weight is judged on that weight's data (see optiserve.domain.evidence)."""
    step_start_s = max(0.0, (progress.step_started_at - progress.started_at).total_seconds())
    return interval_windows(
        window.end_s,
        warmup_s=window.start_s,
        interval_s=plan.interval_s,
        window_s=window.length_s,
        scrape_s=plan.scrape_s,
        changes_s=(step_start_s,) if progress.step > 0 else (),
    )


def _analysis(plan: CanaryPlan, progress: CanaryProgress) -> Analysis:
    return Analysis(checks=plan.checks, policy=plan.policy, tallies=progress.tallies, history=progress.history)


def _final(progress: CanaryProgress, state: RolloutState, reason: str, at_s: float, weight: int) -> CanaryProgress:
    return progress.model_copy(update={"state": state, "reason": reason, "decision_time_s": at_s, "weight": weight})


def _next_step(plan: CanaryPlan, progress: CanaryProgress, now: datetime, reason: str) -> CanaryProgress:
    index = progress.step + 1
    weight = plan.steps[index].weight
    return progress.model_copy(
        update={
            "step": index,
            "weight": weight,
            "step_started_at": now,
            "progressed_at": now,
            "state": RolloutState.PROGRESSING,
            "reason": f"step {index + 1}/{len(plan.steps)}: weight {weight}% ({reason})",
        }
    )


def _signals(plan: CanaryPlan, progress: CanaryProgress, now: datetime, signals: Signals) -> CanaryProgress | None:
    at_s = elapsed_s(progress, now)
    if signals.aborted:
        aborted = progress.model_copy(update={"aborted": True})
        return _final(aborted, RolloutState.ROLLED_BACK, "aborted by the optiserve.io/abort annotation", at_s, 0)
    # Approval counts only once the rollout waits for it: a digest committed early, or an
    # annotation left on the resource, never skips the analysis of a running step.
    waiting = progress.state in (RolloutState.AWAITING_PROMOTION, RolloutState.HELD)
    if signals.approved and waiting:
        return _final(progress, RolloutState.PROMOTED, "promoted by approval (annotation or promoteArtifact)", at_s, 100)
    return None


def _deadline(plan: CanaryPlan, progress: CanaryProgress, now: datetime) -> CanaryProgress | None:
    if progress.state is not RolloutState.PROGRESSING:
        return None  # waiting for a person is not a lack of progress
    # A step's own pause is not a lack of progress (as in Argo Rollouts): the deadline counts from
    # its end, or a pause as long as the deadline would roll back every canary that has one.
    pause_s = plan.steps[progress.step].pause_s
    stuck = (now - progress.progressed_at).total_seconds() - pause_s
    if stuck <= plan.progress_deadline_s:
        return None
    reason = f"no progress for {stuck:.0f}s (progressDeadlineSeconds {plan.progress_deadline_s:.0f}); rolled back"
    return _final(progress, RolloutState.ROLLED_BACK, reason, elapsed_s(progress, now), 0)


def _judged(
    plan: CanaryPlan, progress: CanaryProgress, now: datetime, window: Window, measurements: Sequence[Measurement]
) -> CanaryProgress:
    analysis, verdict = judge_step(_analysis(plan, progress), measurements, at_s=window.end_s)
    progress = progress.model_copy(
        update={"tallies": analysis.tallies, "history": analysis.history, "last_interval_s": window.end_s}
    )
    if verdict.decision is Decision.ROLLBACK:
        return _final(progress, RolloutState.ROLLED_BACK, verdict.reason, window.end_s, 0)
    if verdict.decision is Decision.HOLD:
        held = progress.model_copy(update={"state": RolloutState.HELD, "reason": verdict.reason, "weight": 0})
        return held
    if progress.state is RolloutState.HELD:
        return progress  # only a person releases a hold
    return _progressed(plan, progress, now, verdict)


def _progressed(plan: CanaryPlan, progress: CanaryProgress, now: datetime, verdict: Verdict) -> CanaryProgress:
    latest = progress.history[-1].measurements if progress.history else ()
    passed = bool(latest) and all(m.outcome is Outcome.SUCCESSFUL for m in latest)
    paused = (now - progress.step_started_at).total_seconds() < plan.steps[progress.step].pause_s
    last = progress.step == len(plan.steps) - 1
    if not passed or paused or (last and verdict.decision is not Decision.PROMOTE):
        reason = f"holding step {progress.step + 1} for its pause" if passed and paused else verdict.reason
        return progress.model_copy(update={"reason": reason})
    if not last:
        return _next_step(plan, progress, now, "the previous step passed")
    if plan.manual:
        reason = "every step passed; waiting for approval (optiserve.io/promote=true or rollout.promoteArtifact)"
        return progress.model_copy(update={"state": RolloutState.AWAITING_PROMOTION, "reason": reason})
    return _final(progress, RolloutState.PROMOTED, verdict.reason, progress.last_interval_s, 100)


def advance(
    plan: CanaryPlan,
    progress: CanaryProgress,
    now: datetime,
    signals: Signals = Signals(),
    window: Window | None = None,
    measurements: Sequence[Measurement] = (),
) -> CanaryProgress:
    """The rollout's next state. ``window`` and ``measurements`` are the interval `due_window`
    returned and what was measured over it (None: no interval ended since the last call)."""
    if progress.is_final:
        return progress
    for check in (_signals(plan, progress, now, signals), _deadline(plan, progress, now)):
        if check is not None:
            return check
    if window is None:
        return progress
    return _judged(plan, progress, now, window, measurements)


@dataclass(frozen=True)
class MeasuredInterval:
    """The interval `due_window` returned, and what was measured over it."""

    window: Window
    measurements: Sequence[Measurement]


@dataclass(frozen=True)
class StepOutcome:
    """What one step of the rollout says to do."""

    progress: CanaryProgress
    weight: int
    """The candidate weight the router must have now."""
    route: bool
    """The router's verified weight is not ``weight``: set it (and read it back)."""
    judged: IntervalRecord | None
    """The interval this step judged (its verdict and measurements); None when none ended."""
    step_changed: bool


def step(
    plan: CanaryPlan,
    progress: CanaryProgress,
    now: datetime,
    signals: Signals,
    measured: MeasuredInterval | None,
    verified_weight: int | None,
) -> StepOutcome:
    """`advance`, and what it means for the router: ``verified_weight`` is what the router read
    back last (None: unknown), so a weight already in place is not set again."""
    window = measured.window if measured is not None else None
    after = advance(plan, progress, now, signals, window, measured.measurements if measured is not None else ())
    judged = after.history[-1] if window is not None and after.history and after.history[-1].at_s == window.end_s else None
    return StepOutcome(
        progress=after,
        weight=after.weight,
        route=verified_weight != after.weight,
        judged=judged,
        step_changed=after.step != progress.step,
    )
