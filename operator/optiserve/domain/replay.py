"""Replay recorded metric series through the canary judge, as if it had run online.

Input: two JSON-like dicts, ``baseline`` and ``candidate``, each mapping a series name to a list
of ``[t_seconds, value]`` points. ``t = 0`` is the first canary traffic; points may come in any
order and may share a timestamp; a ``null`` value reads as NaN (and judges as Error). For a check
named ``NAME``:

=====================  ======================  =========================================================
kind                   series (per variant)    values
=====================  ======================  =========================================================
latency                ``NAME``                one point per latency sample: a request's latency, or one
                                               latency value per scrape (e.g. a p50); any one unit
error_rate             ``NAME.total``,         cumulative request counters, one point per scrape;
                       ``NAME.failures``       ``NAME.failures`` may be absent (read as no failures)
agreement / accuracy   ``NAME.agreeing``,      the comparator's cumulative counters, one point per scrape;
                       ``NAME.compared``       read from the candidate only
custom                 ``NAME``                the candidate's gauge values, one point per scrape
=====================  ======================  =========================================================

Intervals end at ``warmup_s + k * interval_s`` (k = 1, 2, ...) while the recording lasts; each
is judged on the window ``(max(end - window_s, warmup_s), end]``. Latency and custom values are
the points inside the window; counts are counter increases over it, from the last point at or
before the window's start (or the first point inside it) to the last point inside it, a drop
being a counter reset as in Prometheus. A check whose series are absent from both dicts has no
series (the analysis holds on it); a variant without the series has no traffic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from optiserve.domain.analysis import (
    Analysis,
    AnalysisPolicy,
    Decision,
    EvidenceTest,
    Measurement,
    MetricCheck,
    MetricKind,
    Verdict,
)
from optiserve.domain.evidence import COUNTS_FULL_SHARE, Windows, interval_windows, judge_latency_windows, scan
from optiserve.domain.judge import judge_agreement, judge_custom, judge_rate, step

FloatArray = npt.NDArray[np.float64]
RecordedSeries = Mapping[str, Sequence[Sequence[float | None]]]
"""Series name -> ``[[t_seconds, value], ...]``."""


@dataclass(frozen=True)
class _Series:
    """One recorded series, sorted by time."""

    times: FloatArray
    values: FloatArray

    def window(self, start: float, end: float) -> FloatArray:
        """The values of the points with ``start < t <= end``."""
        first, last = np.searchsorted(self.times, [start, end], side="right")
        return self.values[first:last]

    def increase(self, start: float, end: float) -> float:
        """How much a cumulative counter grew over ``(start, end]``; resets count from zero."""
        first, last = (int(i) for i in np.searchsorted(self.times, [start, end], side="right"))
        counters = self.values[max(first - 1, 0) : last]
        if not np.all(np.isfinite(counters)):
            return float("nan")
        if counters.size < 2:
            return 0.0
        steps = np.diff(counters)
        return float(np.sum(np.where(steps >= 0, steps, counters[1:])))


Recording = dict[str, _Series]


def _parse_series(name: str, points: object) -> _Series:
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"series '{name}': points must be [t_seconds, value] pairs of numbers") from error
    if array.size == 0:
        array = array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"series '{name}': points must be [t_seconds, value] pairs of numbers")
    if not np.all(np.isfinite(array[:, 0])):
        raise ValueError(f"series '{name}': every timestamp must be a finite number of seconds")
    order = np.argsort(array[:, 0], kind="stable")
    return _Series(times=array[order, 0], values=array[order, 1])


def _recording(series: RecordedSeries) -> Recording:
    return {name: _parse_series(name, points) for name, points in series.items()}


def _samples(recording: Recording, name: str, start: float, end: float) -> list[float]:
    series = recording.get(name)
    return series.window(start, end).tolist() if series is not None else []


def _increase(recording: Recording, name: str, start: float, end: float) -> float:
    series = recording.get(name)
    return series.increase(start, end) if series is not None else 0.0


def _points(recording: Recording, name: str, start: float, end: float) -> list[list[float]]:
    series = recording.get(name)
    if series is None:
        return []
    first, last = np.searchsorted(series.times, [start, end], side="right")
    points: list[list[float]] = np.column_stack([series.times[first:last], series.values[first:last]]).tolist()
    return points


def _measure(
    check: MetricCheck, baseline: Recording, candidate: Recording, windows: Windows, method: EvidenceTest
) -> Measurement | None:
    """Judge one check over the interval's windows; None when neither variant has its series."""
    name, start, end = check.name, windows.start_s, windows.end_s
    if check.kind is MetricKind.LATENCY:
        if name not in baseline and name not in candidate:
            return None
        return judge_latency_windows(
            check, _points(baseline, name, start, end), _points(candidate, name, start, end), windows, method
        )
    if check.kind is MetricKind.ERROR_RATE:
        failures, total = f"{name}.failures", f"{name}.total"
        if total not in baseline and total not in candidate:
            return None

        def rate(check_k: MetricCheck, since: float) -> Measurement:
            return judge_rate(
                check_k,
                _increase(baseline, failures, since, end),
                _increase(baseline, total, since, end),
                _increase(candidate, failures, since, end),
                _increase(candidate, total, since, end),
            )

        latest = _increase(candidate, total, windows.latest_s, end) > 0
        return scan(check, windows.starts, rate, latest, full_share=COUNTS_FULL_SHARE)
    if check.kind in (MetricKind.AGREEMENT, MetricKind.ACCURACY):
        agreeing, compared = f"{name}.agreeing", f"{name}.compared"
        if agreeing not in candidate or compared not in candidate:
            return None

        def agreement(check_k: MetricCheck, since: float) -> Measurement:
            return judge_agreement(
                check_k, _increase(candidate, agreeing, since, end), _increase(candidate, compared, since, end)
            )

        latest = _increase(candidate, compared, windows.latest_s, end) > 0
        return scan(check, windows.starts, agreement, latest, full_share=COUNTS_FULL_SHARE)
    if name not in candidate:
        return None
    return judge_custom(check, _samples(candidate, name, start, end))


def scrape_spacing_s(*recordings: Recording) -> float:
    """The recording's typical time between scrapes (median gap between distinct timestamps)."""
    gaps = [
        float(np.median(np.diff(np.unique(series.times))))
        for recording in recordings
        for series in recording.values()
        if np.unique(series.times).size > 2
    ]
    return float(np.median(gaps)) if gaps else 0.0


def _end_of_recording(*recordings: Recording) -> float | None:
    ends = [float(series.times[-1]) for recording in recordings for series in recording.values() if series.times.size]
    return max(ends) if ends else None


def _interval_ends(warmup_s: float, interval_s: float, end_s: float | None) -> Iterator[float]:
    """Ends of the whole intervals after warm-up that the recording covers."""
    if end_s is None:
        return
    k = 1
    while (at_s := warmup_s + k * interval_s) <= end_s + 1e-9:
        yield at_s
        k += 1


def _interval_report(at_s: float, verdict: Verdict, measurements: Sequence[Measurement]) -> dict[str, Any]:
    return {
        "t_s": at_s,
        "decision": verdict.decision.value,
        "reason": verdict.reason,
        "outcomes": {m.metric: m.outcome.value for m in measurements},
        "measurements": [m.model_dump(mode="json") for m in measurements],
    }


def _undecided(intervals: Sequence[dict[str, Any]], last: Verdict | None) -> Verdict:
    if last is None:
        return Verdict(decision=Decision.HOLD, reason="the recording holds no whole interval after warm-up to judge")
    reason = f"the recording ended after {len(intervals)} intervals without a decision; latest: {last.reason}"
    return Verdict(decision=Decision.HOLD, reason=reason, metric=last.metric)


def replay(
    baseline: RecordedSeries,
    candidate: RecordedSeries,
    checks: Sequence[MetricCheck],
    *,
    interval_s: float,
    policy: AnalysisPolicy | None = None,
    window_s: float | None = None,
) -> dict[str, Any]:
    """Judge the recording interval by interval and return a JSON-serializable report.

    ``policy`` carries the limits and the warm-up (default `AnalysisPolicy()`); ``window_s``
    defaults to ``interval_s``. The report holds ``verdict`` (promote, rollback or hold: a
    recording that ends undecided is a hold, never a promote), ``decision_time_s`` (the end of
    the deciding interval, None if none decided), ``reason``, ``metric`` (the deciding metric, if
    any) and ``intervals`` (per interval: ``t_s``, ``decision``, ``reason``, ``outcomes`` by metric
    and the full ``measurements``).
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s: must be positive, got {interval_s}")
    if window_s is not None and window_s <= 0:
        raise ValueError(f"window_s: must be positive, got {window_s}")
    policy = policy or AnalysisPolicy()
    window = window_s or interval_s
    recorded_baseline, recorded_candidate = _recording(baseline), _recording(candidate)
    analysis = Analysis(checks=tuple(checks), policy=policy)
    intervals: list[dict[str, Any]] = []
    verdict: Verdict | None = None
    scrape_s = scrape_spacing_s(recorded_baseline, recorded_candidate)
    for at_s in _interval_ends(policy.warmup_s, interval_s, _end_of_recording(recorded_baseline, recorded_candidate)):
        windows = interval_windows(at_s, warmup_s=policy.warmup_s, interval_s=interval_s, window_s=window, scrape_s=scrape_s)
        measured = (_measure(check, recorded_baseline, recorded_candidate, windows, policy.evidence_test) for check in checks)
        analysis, verdict = step(analysis, [m for m in measured if m is not None], at_s=at_s)
        intervals.append(_interval_report(at_s, verdict, analysis.history[-1].measurements))
        if verdict.decision.is_final:
            break
    decided = verdict is not None and verdict.decision.is_final
    final = verdict if verdict is not None and decided else _undecided(intervals, verdict)
    return {
        "verdict": final.decision.value,
        "decision_time_s": intervals[-1]["t_s"] if decided else None,
        "reason": final.reason,
        "metric": final.metric,
        "interval_s": interval_s,
        "window_s": window,
        "warmup_s": policy.warmup_s,
        "intervals": intervals,
    }
