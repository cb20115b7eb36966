"""From the spec's `rollout.analysis` to the judge's checks and policy (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from optiserve.api.rollout import AnalysisMetric, AnalysisSpec, MetricName, Promotion, RolloutSpec, duration_seconds
from optiserve.domain.analysis import AnalysisPolicy, MetricCheck, MetricKind
from optiserve.domain.canary import CanaryPlan, Step
from optiserve.domain.evidence import PASS_PAIRS

_KINDS = {
    MetricName.LATENCY: MetricKind.LATENCY,
    MetricName.ERROR_RATE: MetricKind.ERROR_RATE,
    MetricName.AGREEMENT: MetricKind.AGREEMENT,
    MetricName.ACCURACY: MetricKind.ACCURACY,
}


@dataclass(frozen=True)
class AnalysisPlan:
    checks: list[MetricCheck]
    policy: AnalysisPolicy
    interval_s: float
    window_s: float = math.inf
    """Each interval is judged on everything since warm-up: the evidence grows with the canary,
    so a small regression that one 15 s window cannot show is caught a few intervals later."""
    scrape_s: float = 5.0
    """Prometheus' scrape interval (the spec's analysis.scrapeInterval)."""


def metric_check(metric: AnalysisMetric) -> MetricCheck:
    """Built-in names judge against the baseline; anything with a query is a custom value with bounds.

    Every bound the spec sets is passed on: a bound the metric's kind does not take is refused by
    `MetricCheck` with the field named, never dropped silently.
    """
    kind = MetricKind.CUSTOM if metric.query else _KINDS.get(MetricName(metric.name), MetricKind.CUSTOM)
    bounds = {
        "max_relative_increase": metric.max_relative_increase,
        "max_absolute_increase": metric.max_absolute_increase,
        "max": metric.max,
        "min": metric.min,
    }
    return MetricCheck(name=metric.name, kind=kind, **{k: v for k, v in bounds.items() if v is not None})


def data_wait_intervals(interval_s: float, scrape_s: float, inconclusive_limit: int) -> int:
    """Intervals the judge may wait for samples: the time a pass needs at this scrape interval
    (`PASS_PAIRS` paired scrapes, and two more for alignment), plus the inconclusive limit's slack."""
    return math.ceil((PASS_PAIRS + 2) * scrape_s / interval_s) + inconclusive_limit + 1


def analysis_plan(spec: AnalysisSpec) -> AnalysisPlan:
    interval_s, scrape_s = duration_seconds(spec.interval), duration_seconds(spec.scrape_interval)
    policy = AnalysisPolicy(
        failure_limit=spec.failure_limit,
        inconclusive_limit=spec.inconclusive_limit,
        consecutive_error_limit=spec.consecutive_error_limit,
        warmup_s=duration_seconds(spec.warmup),
        data_wait_limit=data_wait_intervals(interval_s, scrape_s, spec.inconclusive_limit),
    )
    return AnalysisPlan([metric_check(m) for m in spec.metrics], policy, interval_s, scrape_s=scrape_s)


def canary_plan(rollout: RolloutSpec) -> CanaryPlan:
    """The rollout's steps, checks and limits from the spec (the spec's models already checked them)."""
    analysis = analysis_plan(rollout.analysis)
    steps = tuple(Step(weight=s.weight, pause_s=duration_seconds(s.pause) if s.pause else 0.0) for s in rollout.steps)
    return CanaryPlan(
        steps=steps,
        checks=tuple(analysis.checks),
        policy=analysis.policy,
        interval_s=analysis.interval_s,
        manual=rollout.promotion is Promotion.MANUAL,
        progress_deadline_s=float(rollout.progress_deadline_seconds),
        window_s=analysis.window_s,
        scrape_s=analysis.scrape_s,
    )


@dataclass(frozen=True)
class Timing:
    """When a canary on this analysis can decide, from its intervals and Prometheus' scrapes."""

    first_pass_s: float
    """The first interval a latency check can pass in (`PASS_PAIRS` paired scrapes after warm-up)."""
    earliest_promotion_s: float
    warnings: tuple[str, ...]


def _first_pass_s(plan: CanaryPlan, compares_latency: bool) -> float:
    warmup, interval = plan.policy.warmup_s, plan.interval_s
    needed = PASS_PAIRS * plan.scrape_s if compares_latency else interval
    return warmup + max(1, math.ceil(needed / interval)) * interval


def analysis_timing(rollout: RolloutSpec) -> Timing:
    """The earliest promotion a healthy candidate can reach, and what in the settings prevents a
    decision (the warnings `optiserve validate` prints)."""
    plan = canary_plan(rollout)
    compares_latency = any(c.kind is MetricKind.LATENCY and c.compares_to_baseline for c in plan.checks)
    first = _first_pass_s(plan, compares_latency)
    successes = max(plan.policy.required_successes, len(plan.steps))
    earliest = first + (successes - 1) * plan.interval_s + sum(step.pause_s for step in plan.steps)
    analysis = rollout.analysis
    warnings = []
    if plan.scrape_s > plan.interval_s:
        warnings.append(
            f"spec.rollout.analysis.scrapeInterval: {analysis.scrape_interval} is longer than interval {analysis.interval}: "
            "some intervals get no new scrape and judge nothing new; make interval at least the scrape interval"
        )
    nominal = plan.policy.warmup_s + plan.interval_s * len(plan.steps) + sum(step.pause_s for step in plan.steps)
    if compares_latency and first > 2 * nominal:
        warnings.append(
            f"spec.rollout.analysis.scrapeInterval: a latency pass needs {PASS_PAIRS} paired scrapes, "
            f"{PASS_PAIRS * plan.scrape_s:g}s at {analysis.scrape_interval}: the first step cannot pass before {first:g}s, "
            f"more than twice the steps' own {nominal:g}s (warm-up, an interval per step, pauses); the canary will "
            "mostly wait for data: scrape the served models more often"
        )
    if earliest - sum(step.pause_s for step in plan.steps) > plan.progress_deadline_s:  # pauses do not count
        warnings.append(
            f"spec.rollout.progressDeadlineSeconds: {plan.progress_deadline_s:g}s is shorter than the earliest promotion "
            f"({earliest:g}s after the first canary traffic): every canary would be rolled back on the deadline"
        )
    return Timing(first_pass_s=first, earliest_promotion_s=earliest, warnings=tuple(warnings))
