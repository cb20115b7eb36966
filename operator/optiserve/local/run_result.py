"""From a finished `RunState` to the `RunReport` written into `--report DIR`."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from optiserve.domain.analysis import Decision
from optiserve.domain.canary import RolloutState
from optiserve.local.load import RequestRecord
from optiserve.local.run import CanaryRun, RunState, Timeline
from optiserve.local.run_report import (
    CostReport,
    IntervalReport,
    LatencyPoint,
    LatencySeries,
    PhaseEntry,
    RunOutcome,
    RunReport,
    RunSummary,
    StepReport,
    StepResult,
    TrafficReport,
    VariantTraffic,
    WeightChange,
    cost_from_benchmark,
)
from optiserve_jobs.report import Report as OptimizationReport

VARIANTS = ("baseline", "candidate")


def _final_step_result(state: RolloutState, aborted: bool) -> StepResult:
    if state is RolloutState.PROMOTED:
        return StepResult.PASSED
    if state is RolloutState.HELD:
        return StepResult.HELD
    return StepResult.ABORTED if aborted else StepResult.ROLLED_BACK


def _steps(run: CanaryRun, end_s: float) -> tuple[StepReport, ...]:
    steps = []
    reached = len(run.step_starts)
    aborted = run.progress.aborted
    for index, step in enumerate(run.plan.steps, start=1):
        if index > reached:
            steps.append(StepReport(index=index, weight=step.weight, result=StepResult.NOT_REACHED))
            continue
        started = run.step_starts[index - 1]
        last = index == reached
        ended = end_s if last else run.step_starts[index]
        result = _final_step_result(run.progress.state, aborted) if last else StepResult.PASSED
        steps.append(StepReport(index=index, weight=step.weight, started_s=started, ended_s=max(ended, started), result=result))
    return tuple(steps)


def _intervals(run: CanaryRun) -> tuple[IntervalReport, ...]:
    return tuple(
        IntervalReport(
            at_s=interval.at_s,
            step=interval.step,
            weight=interval.weight,
            decision=Decision(interval.decision),
            measurements=interval.measurements,
        )
        for interval in run.intervals
    )


def _in_transition(record: RequestRecord, offset_s: float, timeline: Timeline) -> bool:
    at = record.t_s + offset_s
    return any(start <= at <= end for start, end in timeline.transitions)


def _lost_to_switch(record: RequestRecord) -> bool:
    """A failure the switch could have caused: not answered by a variant (the proxy or the connection
    failed), or answered by the baseline. The candidate's own error answers (an injected regression)
    are its verdict's business, not the switch's."""
    return not record.ok and record.variant != "candidate"


def _traffic(run: CanaryRun, timeline: Timeline) -> TrafficReport:
    records = run.load.records if run.load is not None else []
    offset = _load_offset(run, timeline)
    variants = {}
    for variant in VARIANTS:
        mine = [r for r in records if r.variant == variant]
        ok = sum(r.ok for r in mine)
        requests, failures = run.server_counts.get(variant, (None, None))
        variants[variant] = VariantTraffic(
            sent=len(mine),
            ok=ok,
            failed=len(mine) - ok,
            server_requests=round(requests) if requests is not None else None,
            server_failures=round(failures) if failures is not None else None,
        )
    unattributed_failures = sum(1 for r in records if not r.ok and r.variant not in VARIANTS)
    during = sum(1 for r in records if _lost_to_switch(r) and _in_transition(r, offset, timeline))
    return TrafficReport(
        baseline=variants["baseline"],
        candidate=variants["candidate"],
        load_failed_during_transitions=during,
        load_failed_unattributed=unattributed_failures,
    )


def _load_offset(run: CanaryRun, timeline: Timeline) -> float:
    """Run-clock time of the load's t=0 (the load starts just before the canary's first weight)."""
    if run.load is None:
        return run.canary_started_s
    return run.load.started_unix - timeline.started_at.timestamp()


def _latency(run: CanaryRun, timeline: Timeline) -> LatencySeries:
    records = run.load.records if run.load is not None else []
    offset = _load_offset(run, timeline)
    per_second: dict[str, dict[int, list[float]]] = {v: defaultdict(list) for v in VARIANTS}
    for record in records:
        if record.ok and record.variant in per_second:
            per_second[record.variant][int(record.t_s + offset)].append(record.latency_ms)
    points = {
        variant: tuple(
            LatencyPoint(t_s=float(second), latency_ms=float(np.median(values))) for second, values in sorted(seconds.items())
        )
        for variant, seconds in per_second.items()
    }
    changes = tuple(WeightChange(t_s=t, weight=w) for t, w in timeline.weights)
    return LatencySeries(baseline=points["baseline"], candidate=points["candidate"], weight_changes=changes)


def _cost(state: RunState, optimization: OptimizationReport | None) -> CostReport | None:
    if optimization is None or optimization.benchmark is None or state.manifest is None:
        return None
    replicas = state.manifest.spec.serving.replicas
    return cost_from_benchmark(
        optimization.benchmark,
        price_per_replica_hour=state.options.price_per_replica_hour,
        baseline_replicas=replicas,
        candidate_replicas=replicas,
    )


def build_run_report(state: RunState) -> RunReport:
    timeline = state.timeline
    end_s = timeline.now_s()
    optimization = OptimizationReport.model_validate(state.outputs.report) if state.outputs is not None else None
    run = state.canary
    decision = run.progress.decision_time_s if run is not None and run.progress.is_final else None
    summary = RunSummary(
        model=state.manifest.metadata.name if state.manifest is not None else state.options.manifest.stem,
        manifest=str(state.options.manifest),
        inject=",".join(state.options.inject) or None,
        started_at=timeline.started_at,
        duration_s=end_s,
        outcome=RunOutcome(state.outcome),
        reason=state.reason or state.outcome,
        canary_started_s=run.canary_started_s if run is not None else None,
        decision_time_s=decision,
        phases=tuple(PhaseEntry(phase=phase, started_s=t) for phase, t in timeline.phases),
    )
    empty = VariantTraffic(sent=0, ok=0, failed=0)
    return RunReport(
        run=summary,
        steps=_steps(run, end_s) if run is not None else (),
        intervals=_intervals(run) if run is not None else (),
        traffic=_traffic(run, timeline)
        if run is not None
        else TrafficReport(baseline=empty, candidate=empty, load_failed_during_transitions=0),
        latency_series=_latency(run, timeline) if run is not None else LatencySeries(),
        optimization=optimization,
        cost=_cost(state, optimization),
    )
