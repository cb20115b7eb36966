"""Measure one analysis interval online: each check's data from a `MetricsProvider`, judged.

The online counterpart of `optiserve.domain.replay`: the same judges and the same evidence windows
(`optiserve.domain.evidence`), fed from the metrics backend instead of a recording. A check returns
None when neither variant has a series for it (the judge then holds, naming the metric); a backend
that fails to answer is the judge's Error, an answer without data its Inconclusive.

Times: the judge counts seconds from the first canary traffic; the backend looks back from now.
`Clock` converts: a window starting ``s`` seconds after the first traffic is the last
``elapsed_s - s`` seconds, and a backend timestamp ``t`` (Unix seconds) is ``t - origin_unix_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from optiserve.domain.analysis import EvidenceTest, Measurement, MetricCheck, MetricKind
from optiserve.domain.evidence import COUNTS_FULL_SHARE, Windows, judge_latency_windows, scan
from optiserve.domain.judge import judge_agreement, judge_custom, judge_rate
from optiserve.providers.metrics import Counts, MetricsProvider

BASELINE = "baseline"
CANDIDATE = "candidate"


@dataclass(frozen=True)
class Clock:
    origin_unix_s: float
    """The first canary traffic, Unix seconds."""
    elapsed_s: float
    """Now, in seconds after the first canary traffic."""

    def lookback_s(self, start_s: float) -> float:
        return max(1.0, self.elapsed_s - start_s)

    def canary_points(self, points: Sequence[tuple[float, float]] | None) -> list[list[float]] | None:
        return None if points is None else [[t - self.origin_unix_s, v] for t, v in points]


def _no_series(*counts: Counts | None) -> bool:
    return all(c is not None and not c.series_found for c in counts)


def _latency(
    check: MetricCheck, provider: MetricsProvider, windows: Windows, clock: Clock, method: EvidenceTest
) -> Measurement | None:
    lookback = clock.lookback_s(windows.start_s)
    baseline = clock.canary_points(provider.latency_points(BASELINE, lookback))
    candidate = clock.canary_points(provider.latency_points(CANDIDATE, lookback))
    # No latency values at all: no traffic, or no series? The request counters tell.
    silent = baseline == [] and candidate == []
    if silent and _no_series(provider.request_counts(BASELINE, lookback), provider.request_counts(CANDIDATE, lookback)):
        return None
    return judge_latency_windows(check, _after(baseline, windows.start_s), _after(candidate, windows.start_s), windows, method)


def _after(points: list[list[float]] | None, start_s: float) -> list[list[float]] | None:
    return None if points is None else [p for p in points if p[0] > start_s]


def _has_new(counts: Counts | None) -> bool:
    return counts is not None and counts.total > 0


def _rate(check: MetricCheck, provider: MetricsProvider, windows: Windows, clock: Clock) -> Measurement | None:
    lookback = clock.lookback_s(windows.start_s)
    if _no_series(provider.request_counts(BASELINE, lookback), provider.request_counts(CANDIDATE, lookback)):
        return None

    def rate(check_k: MetricCheck, start_s: float) -> Measurement:
        baseline = provider.request_counts(BASELINE, clock.lookback_s(start_s))
        candidate = provider.request_counts(CANDIDATE, clock.lookback_s(start_s))
        return judge_rate(
            check_k,
            baseline.hits if baseline else None,
            baseline.total if baseline else None,
            candidate.hits if candidate else None,
            candidate.total if candidate else None,
        )

    latest = _has_new(provider.request_counts(CANDIDATE, clock.lookback_s(windows.latest_s)))
    return scan(check, windows.starts, rate, latest, full_share=COUNTS_FULL_SHARE)


def _agreement(check: MetricCheck, provider: MetricsProvider, windows: Windows, clock: Clock) -> Measurement | None:
    if _no_series(provider.comparator_counts(check.name, clock.lookback_s(windows.start_s))):
        return None

    def agreement(check_k: MetricCheck, start_s: float) -> Measurement:
        counts = provider.comparator_counts(check.name, clock.lookback_s(start_s))
        return judge_agreement(check_k, counts.hits if counts else None, counts.total if counts else None)

    latest = _has_new(provider.comparator_counts(check.name, clock.lookback_s(windows.latest_s)))
    return scan(check, windows.starts, agreement, latest, full_share=COUNTS_FULL_SHARE)


def measure(
    check: MetricCheck,
    provider: MetricsProvider,
    windows: Windows,
    clock: Clock,
    query: str | None = None,
    method: EvidenceTest = EvidenceTest.FIXED,
) -> Measurement | None:
    """Judge ``check`` over the interval's windows; None when it has no series at all."""
    if check.kind is MetricKind.LATENCY:
        return _latency(check, provider, windows, clock, method)
    if check.kind is MetricKind.ERROR_RATE:
        return _rate(check, provider, windows, clock)
    if check.kind in (MetricKind.AGREEMENT, MetricKind.ACCURACY):
        return _agreement(check, provider, windows, clock)
    if query is None:
        raise ValueError(f"metric '{check.name}': a custom metric needs its query")
    values = provider.custom_values(query, CANDIDATE, clock.lookback_s(windows.start_s))
    return None if values == [] else judge_custom(check, values)


def measure_interval(
    checks: tuple[MetricCheck, ...],
    provider: MetricsProvider,
    windows: Windows,
    clock: Clock,
    queries: dict[str, str] | None = None,
    method: EvidenceTest = EvidenceTest.FIXED,
) -> list[Measurement]:
    """Every check's measurement for one interval; checks without any series are left out."""
    measured = (measure(check, provider, windows, clock, (queries or {}).get(check.name), method) for check in checks)
    return [m for m in measured if m is not None]
