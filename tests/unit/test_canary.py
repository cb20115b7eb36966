"""The canary rollout state machine: steps, pauses, intervals, approval, abort, deadline (fake clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from optiserve.api.rollout import RolloutSpec
from optiserve.domain.analysis import AnalysisPolicy, Measurement, MetricCheck, MetricKind, Outcome
from optiserve.domain.analysis_spec import canary_plan
from optiserve.domain.canary import CanaryPlan, CanaryProgress, RolloutState, Signals, Step, advance, due_window, start

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATENCY = MetricCheck(name="latency", kind=MetricKind.LATENCY, max_relative_increase=0.1)
STEPS = (Step(10), Step(50), Step(100))


def plan(steps: tuple[Step, ...] = STEPS, manual: bool = False, **policy: int | float) -> CanaryPlan:
    limits = {"warmup_s": 15.0, **policy}
    return CanaryPlan(
        steps=steps, checks=(LATENCY,), policy=AnalysisPolicy(**limits), interval_s=15.0, manual=manual, progress_deadline_s=600
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def measured(outcome: Outcome) -> list[Measurement]:
    return [Measurement(metric="latency", kind=MetricKind.LATENCY, outcome=outcome, reason=f"{outcome} on purpose")]


def run(
    p: CanaryPlan,
    outcomes: list[Outcome | None],
    signals: dict[int, Signals] | None = None,
    tick_s: float = 5.0,
) -> tuple[CanaryProgress, list[tuple[float, int, RolloutState]]]:
    """Wake up every tick_s; each due interval gets the next outcome (None = the metric has no series)."""
    progress = start(p, T0)
    trace: list[tuple[float, int, RolloutState]] = [(0.0, progress.weight, progress.state)]
    pending = list(outcomes)
    t = 0.0
    while not progress.is_final and pending and t < 3600:
        t += tick_s
        window = due_window(p, progress, at(t))
        measurements: list[Measurement] = []
        if window is not None:
            outcome = pending.pop(0)
            measurements = [] if outcome is None else measured(outcome)
        sig = (signals or {}).get(int(t), Signals())
        progress = advance(p, progress, at(t), sig, window, measurements)
        trace.append((t, progress.weight, progress.state))
    return progress, trace


def weights(trace: list[tuple[float, int, RolloutState]]) -> list[tuple[float, int]]:
    changes = [(t, w) for (t, w, _), (_, before, _) in zip(trace[1:], trace, strict=False) if w != before]
    return [(0.0, trace[0][1]), *changes]


def test_first_step_weight_is_set_at_start() -> None:
    assert start(plan(), T0).weight == 10


def test_healthy_candidate_walks_every_step_one_interval_each_and_is_promoted() -> None:
    progress, trace = run(plan(), [Outcome.SUCCESSFUL] * 5)
    assert progress.state is RolloutState.PROMOTED
    assert weights(trace) == [(0.0, 10), (30.0, 50), (45.0, 100)]
    assert progress.decision_time_s == 60.0  # warm-up 15 s + 3 intervals of 15 s
    assert progress.weight == 100


def test_no_interval_is_judged_during_warmup() -> None:
    p = plan()
    progress = start(p, T0)
    assert due_window(p, progress, at(14.9)) is None
    assert due_window(p, progress, at(29.9)) is None
    window = due_window(p, progress, at(30.0))
    assert window is not None and (window.start_s, window.end_s) == (15.0, 30.0)


def test_a_late_wakeup_judges_the_latest_interval_once_on_all_evidence() -> None:
    p = plan()
    window = due_window(p, start(p, T0), at(100.0))
    assert window is not None and (window.start_s, window.end_s) == (15.0, 90.0)


def test_failure_rolls_back_at_once_to_weight_zero() -> None:
    progress, _ = run(plan(failure_limit=0), [Outcome.SUCCESSFUL, Outcome.FAILED])
    assert progress.state is RolloutState.ROLLED_BACK
    assert progress.weight == 0
    assert progress.decision_time_s == 45.0
    assert "Failed" in progress.reason


def test_inconclusive_interval_does_not_advance_the_step() -> None:
    progress, trace = run(plan(), [Outcome.INCONCLUSIVE, Outcome.SUCCESSFUL, Outcome.SUCCESSFUL, Outcome.SUCCESSFUL])
    assert progress.state is RolloutState.PROMOTED
    assert weights(trace) == [(0.0, 10), (45.0, 50), (60.0, 100)]


def test_missing_series_holds_with_traffic_back_on_the_baseline_and_names_the_metric() -> None:
    progress, _ = run(plan(), [Outcome.SUCCESSFUL, None, Outcome.SUCCESSFUL])
    assert progress.state is RolloutState.HELD
    assert progress.weight == 0
    assert "'latency' has no series" in progress.reason
    assert not progress.is_final


def test_hold_is_released_only_by_a_person() -> None:
    p = plan()
    progress, _ = run(p, [None])
    assert progress.state is RolloutState.HELD
    window = due_window(p, progress, at(60.0))
    progress = advance(p, progress, at(60.0), Signals(), window, measured(Outcome.SUCCESSFUL))
    assert progress.state is RolloutState.HELD
    progress = advance(p, progress, at(61.0), Signals(approved=True))
    assert progress.state is RolloutState.PROMOTED and progress.weight == 100


def test_pause_holds_a_passing_step_until_it_has_elapsed() -> None:
    steps = (Step(10, pause_s=40.0), Step(50), Step(100))
    progress, trace = run(plan(steps=steps), [Outcome.SUCCESSFUL] * 6)
    assert progress.state is RolloutState.PROMOTED
    # Step 1 passes at 30 s but its 40 s pause ends only at 40 s: the next passing interval (45 s) moves on.
    assert weights(trace) == [(0.0, 10), (45.0, 50), (60.0, 100)]


def test_manual_promotion_waits_for_approval_and_keeps_judging() -> None:
    p = plan(manual=True)
    progress, _ = run(p, [Outcome.SUCCESSFUL] * 3)
    assert progress.state is RolloutState.AWAITING_PROMOTION
    assert progress.weight == 100
    window = due_window(p, progress, at(75.0))
    later = advance(p, progress, at(75.0), Signals(), window, measured(Outcome.FAILED))
    later = advance(p, later, at(90.0), Signals(), due_window(p, later, at(90.0)), measured(Outcome.FAILED))
    assert later.state is RolloutState.ROLLED_BACK, "a regression while waiting still rolls back"
    approved = advance(p, progress, at(76.0), Signals(approved=True))
    assert approved.state is RolloutState.PROMOTED


def test_approval_before_the_rollout_waits_for_it_is_ignored() -> None:
    p = plan(manual=True)
    progress, _ = run(p, [Outcome.SUCCESSFUL], signals={5: Signals(approved=True), 10: Signals(approved=True)})
    assert progress.state is RolloutState.PROGRESSING


def test_abort_rolls_back_from_any_step() -> None:
    progress, _ = run(plan(), [Outcome.SUCCESSFUL] * 3, signals={35: Signals(aborted=True)})
    assert progress.state is RolloutState.ROLLED_BACK
    assert progress.weight == 0
    assert "abort" in progress.reason
    assert progress.aborted


def test_progress_deadline_rolls_back_a_stuck_rollout() -> None:
    p = CanaryPlan(
        steps=STEPS,
        checks=(LATENCY,),
        policy=AnalysisPolicy(warmup_s=15, inconclusive_limit=100),
        interval_s=15,
        progress_deadline_s=60,
    )
    progress, _ = run(p, [Outcome.INCONCLUSIVE] * 10)
    assert progress.state is RolloutState.ROLLED_BACK
    assert "progressDeadlineSeconds" in progress.reason


def test_a_pause_longer_than_the_deadline_is_not_a_lack_of_progress() -> None:
    """A 30-minute hold on a step (a soak) with a 10-minute deadline: healthy intervals all through
    the pause, then the next step; only a rollout stuck past the pause and the deadline rolls back."""
    p = CanaryPlan(
        steps=(Step(50, pause_s=1800), Step(100)),
        checks=(LATENCY,),
        policy=AnalysisPolicy(warmup_s=15),
        interval_s=15,
        progress_deadline_s=600,
    )
    progress, trace = run(p, [Outcome.SUCCESSFUL] * 200, tick_s=15)
    assert progress.state is RolloutState.PROMOTED
    assert [w for _, w in weights(trace)] == [50, 100]
    stuck = CanaryPlan(
        steps=p.steps,
        checks=p.checks,
        policy=AnalysisPolicy(warmup_s=15, inconclusive_limit=1000),
        interval_s=15,
        progress_deadline_s=600,
    )
    progress, _ = run(stuck, [Outcome.INCONCLUSIVE] * 200, tick_s=15)
    assert progress.state is RolloutState.ROLLED_BACK and "progressDeadlineSeconds" in progress.reason
    assert 1800 + 600 < (progress.decision_time_s or 0) <= 1800 + 600 + 30


def test_final_state_never_changes() -> None:
    p = plan(failure_limit=0)
    progress, _ = run(p, [Outcome.FAILED])
    assert advance(p, progress, at(500.0), Signals(approved=True), None) == progress


def test_progress_round_trips_through_json_for_status() -> None:
    progress, _ = run(plan(), [Outcome.SUCCESSFUL, Outcome.SUCCESSFUL])
    again = CanaryProgress.model_validate_json(progress.model_dump_json())
    assert again == progress


def test_plan_from_spec_reads_steps_pauses_and_policy() -> None:
    rollout = RolloutSpec.model_validate(
        {
            "steps": [{"weight": 20, "pause": "1m"}, {"weight": 100}],
            "promotion": "manual",
            "analysis": {"interval": "10s", "warmup": "5s", "metrics": [{"name": "latency", "maxRelativeIncrease": 0.2}]},
        }
    )
    p = canary_plan(rollout)
    assert p.steps == (Step(20, 60.0), Step(100, 0.0))
    assert p.manual and p.interval_s == 10.0 and p.policy.warmup_s == 5.0
    assert [c.name for c in p.checks] == ["latency"]


def test_plan_refuses_steps_that_do_not_end_at_100() -> None:
    with pytest.raises(ValueError, match="steps"):
        CanaryPlan(steps=(Step(10),), checks=(LATENCY,), policy=AnalysisPolicy(), interval_s=15)
