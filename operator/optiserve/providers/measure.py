"""Measure one analysis interval online: each check's data from a `MetricsProvider`, judged.

The online counterpart of `optiserve.domain.replay`: the same judge functions, fed from the
metrics backend instead of a recording. A check returns None when neither variant has a series for
it (the judge then holds, naming the metric); a backend that fails to answer is the judge's Error,
an answer without data its Inconclusive.
"""

from __future__ import annotations

from optiserve.domain.analysis import Measurement, MetricCheck, MetricKind
from optiserve.domain.judge import judge_agreement, judge_custom, judge_latency, judge_rate
from optiserve.providers.metrics import Counts, MetricsProvider

BASELINE = "baseline"
CANDIDATE = "candidate"


def _no_series(*counts: Counts | None) -> bool:
    return all(c is not None and not c.series_found for c in counts)


def _latency(check: MetricCheck, provider: MetricsProvider, window_s: float) -> Measurement | None:
    baseline = provider.latency_samples(BASELINE, window_s)
    candidate = provider.latency_samples(CANDIDATE, window_s)
    # No latency values at all: no traffic, or no series? The request counters tell.
    silent = baseline == [] and candidate == []
    if silent and _no_series(provider.request_counts(BASELINE, window_s), provider.request_counts(CANDIDATE, window_s)):
        return None
    return judge_latency(check, baseline, candidate)


def _rate(check: MetricCheck, provider: MetricsProvider, window_s: float) -> Measurement | None:
    baseline = provider.request_counts(BASELINE, window_s)
    candidate = provider.request_counts(CANDIDATE, window_s)
    if _no_series(baseline, candidate):
        return None
    return judge_rate(
        check,
        baseline.hits if baseline else None,
        baseline.total if baseline else None,
        candidate.hits if candidate else None,
        candidate.total if candidate else None,
    )


def _agreement(check: MetricCheck, provider: MetricsProvider, window_s: float) -> Measurement | None:
    counts = provider.comparator_counts(check.name, window_s)
    if _no_series(counts):
        return None
    return judge_agreement(check, counts.hits if counts else None, counts.total if counts else None)


def measure(check: MetricCheck, provider: MetricsProvider, window_s: float, query: str | None = None) -> Measurement | None:
    """Judge ``check`` over the last ``window_s`` seconds; None when it has no series at all."""
    if check.kind is MetricKind.LATENCY:
        return _latency(check, provider, window_s)
    if check.kind is MetricKind.ERROR_RATE:
        return _rate(check, provider, window_s)
    if check.kind in (MetricKind.AGREEMENT, MetricKind.ACCURACY):
        return _agreement(check, provider, window_s)
    if query is None:
        raise ValueError(f"metric '{check.name}': a custom metric needs its query")
    values = provider.custom_values(query, CANDIDATE, window_s)
    return None if values == [] else judge_custom(check, values)


def measure_interval(
    checks: tuple[MetricCheck, ...], provider: MetricsProvider, window_s: float, queries: dict[str, str] | None = None
) -> list[Measurement]:
    """Every check's measurement for one interval; checks without any series are left out."""
    measured = (measure(check, provider, window_s, (queries or {}).get(check.name)) for check in checks)
    return [m for m in measured if m is not None]
