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
    scrape_s: float = 30.0
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
