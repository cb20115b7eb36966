"""Evidence windows that follow the rollout, and the paired latency test for per-scrape data.

A cluster gives the judge one latency value per variant per scrape (a summary quantile, or a mean
from counter deltas), a few per interval, and both variants ride on the same load: a burst that
slows the baseline by 2x slows the candidate too. Comparing the two sets of values as independent
samples (Mann-Whitney) buries a real difference under the shared load. Paired by scrape, the load
cancels: ``d = log(candidate / baseline)`` per scrape carries only the variants' own noise, and a
candidate within the tolerance has ``mean(d) <= log(1 + tolerance)``.

A regression may begin mid-canary (when a higher weight step starts). Evidence gathered since
warm-up then mixes the healthy minutes before the onset into it. So every interval is judged on
several windows ending now: everything since warm-up (where a healthy canary keeps accumulating
evidence) and suffixes starting at recent interval boundaries and weight changes (where an onset
shows undiluted). The scan is a change-point search over a few candidate points:

- **Failed** when some window shows, at ``alpha / K`` (Bonferroni over the ``K`` windows tested),
  that the candidate is beyond the tolerance;
- **Inconclusive** when some window *suggests* it (``p < hint_alpha``, uncorrected): the judge
  waits for more data instead of passing an interval whose latest data looks worse;
- **Successful** otherwise, and only if the latest interval has data at all (a stopped series is
  never a pass);
- awaiting data (``awaiting_data``) when the whole window has fewer samples than needed: that is
  not a judgement, and `step` does not count it against ``inconclusive_limit``.

A suffix borrows the variance of the whole window (residuals around each segment's own mean,
so a mean shift does not inflate it): three scrapes after an onset are then tested with the
noise level that thirty scrapes measured, not with an estimate from three values.

Two tests turn a window into a p-value: a fixed-sample one-sided t-test (repeated every interval,
with the Bonferroni correction over windows), and an always-valid mixture sequential probability
ratio test (mSPRT, Johari et al.; a normal mixture over the shift, with the plug-in variance), whose
p-value stays valid however often it is looked at, once the variance estimate has about ten
scrapes (from four, 8.5 % of null sequences looked at every scrape were rejected at 5 %).
``bench/canary.py`` compares both on the same replays; see docs/canary.md for the figures and the
choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from optiserve.domain.analysis import EvidenceTest, Measurement, MetricCheck, Outcome

FloatArray = npt.NDArray[np.float64]
Point = Sequence[float]
"""``[t_seconds, value]``."""

HINT_ALPHA = 0.1
"""A judged window whose point estimate is beyond the bound and whose one-sided p-value is below
this is Inconclusive (it had the data and could not decide: counted against inconclusiveLimit);
beyond the bound with a larger p-value, the estimate is within the noise of the bound: a pass."""
SUFFIX_HINT_ALPHA = 0.3
"""A suffix window whose p-value is below this suggests a regression that began recently: the
judge waits for more data (awaiting, not counted) instead of passing the interval."""
MIN_PAIRS = 4
"""Paired scrapes the whole window needs before the paired test judges (the t-test has 3 degrees
of freedom then; fewer pairs cannot tell a 2x regression from noise of 25 % per variant)."""
PASS_PAIRS = 10
"""Paired scrapes a pass needs. A failure can be shown on fewer (MIN_PAIRS), a pass cannot: with
4-9 scrapes the judge may roll back but otherwise waits. Promoting on less would also promote
a regression that began a few scrapes ago, before any test could see it."""
PAIRED_SHARE = 0.5
"""At least this share of the candidate's scrapes must have a baseline value at the same
timestamp for the pairing to be used; otherwise the samples are compared unpaired."""


@dataclass(frozen=True)
class Pairs:
    """Per-scrape log-ratios ``log(candidate / baseline)``, in time order."""

    times: FloatArray
    log_ratios: FloatArray
    baseline: FloatArray
    candidate: FloatArray


def _per_scrape(points: Sequence[Point]) -> dict[float, float]:
    """Each timestamp's median value (one value per scrape, or the scrape's request samples)."""
    grouped: dict[float, list[float]] = {}
    for t, value in points:
        grouped.setdefault(float(t), []).append(float(value))
    return {t: float(np.median(values)) for t, values in grouped.items()}


def pair_by_scrape(baseline: Sequence[Point], candidate: Sequence[Point]) -> Pairs | None:
    """The scrapes both variants have (positive values); None when the data is not per scrape
    (too few shared timestamps, e.g. one point per request at its own time)."""
    base, cand = _per_scrape(baseline), _per_scrape(candidate)
    shared = sorted(t for t in cand if t in base and base[t] > 0 and cand[t] > 0)
    if not cand or len(shared) < PAIRED_SHARE * len(cand):
        return None
    b = np.array([base[t] for t in shared], dtype=np.float64)
    c = np.array([cand[t] for t in shared], dtype=np.float64)
    return Pairs(times=np.array(shared, dtype=np.float64), log_ratios=np.log(c) - np.log(b), baseline=b, candidate=c)


@dataclass(frozen=True)
class WindowTest:
    """One evidence window's test: is the mean log-ratio above the tolerance's?"""

    start_s: float
    n: int
    mean: float
    p_value: float
    statistic: float


def _pooled_sd(before: FloatArray, inside: FloatArray) -> tuple[float, int]:
    """Residual standard deviation of a two-segment model and its degrees of freedom."""
    squares = float(np.sum((inside - inside.mean()) ** 2))
    segments = 1
    if before.size:
        squares += float(np.sum((before - before.mean()) ** 2))
        segments = 2
    df = before.size + inside.size - segments
    return (math.sqrt(squares / df) if df > 0 else math.nan), df


def _t_p_value(t: float, df: int) -> float:
    from scipy import stats  # first use only, as in optiserve.domain.judge

    return float(stats.t.sf(t, df))


def _msprt_p_value(mean: float, threshold: float, sd: float, n: int) -> float:
    """Always-valid p-value of a one-sided normal-mixture SPRT (mixing variance = the noise's)."""
    if mean <= threshold:
        return 1.0
    variance = sd * sd
    tau2 = variance
    log_lr = 0.5 * math.log(variance / (variance + n * tau2)) + (n * n * tau2 * (mean - threshold) ** 2) / (
        2 * variance * (variance + n * tau2)
    )
    return float(min(1.0, math.exp(-log_lr)))


def window_test(pairs: Pairs, start_s: float, threshold: float, method: EvidenceTest) -> WindowTest | None:
    """The test of the window ``(start_s, end]``; None when it has no pairs or no usable variance."""
    inside_mask = pairs.times > start_s
    inside, before = pairs.log_ratios[inside_mask], pairs.log_ratios[~inside_mask]
    if inside.size == 0:
        return None
    sd, df = _pooled_sd(before, inside)
    if not (df > 0 and math.isfinite(sd)):
        return None
    mean = float(inside.mean())
    if sd == 0:
        above = mean > threshold
        return WindowTest(start_s, inside.size, mean, 0.0 if above else 1.0, math.inf if above else -math.inf)
    t = (mean - threshold) / (sd / math.sqrt(inside.size))
    sequential = method is EvidenceTest.SEQUENTIAL
    p_value = _msprt_p_value(mean, threshold, sd, inside.size) if sequential else _t_p_value(t, df)
    return WindowTest(start_s, int(inside.size), mean, p_value, t)


def window_starts(full_start_s: float, boundaries: Sequence[float], end_s: float) -> tuple[float, ...]:
    """The full window's start, then the boundaries strictly inside the window, oldest first."""
    inside = sorted({b for b in boundaries if full_start_s < b < end_s - 1e-9})
    return (full_start_s, *inside)


# ---------------------------------------------------------------- combining windows


@dataclass(frozen=True)
class Judged:
    """One window's measurement, from a per-window judge run at the corrected alpha."""

    start_s: float
    measurement: Measurement


def _since(start_s: float) -> str:
    return f"since t={start_s:g}s"


def combine_windows(check: MetricCheck, judged: Sequence[Judged], latest_has_data: bool, pass_size: int = 0) -> Measurement:
    """One measurement from the windows' measurements (the first is the whole window).

    Failed if any window failed (the one with the smallest p-value explains it). Otherwise the whole
    window's outcome if it is not Successful, as awaiting data when it holds fewer than
    ``pass_size`` samples; Inconclusive (counted) if the latest interval brought no data; awaiting
    data if a suffix suggests a regression (``p < SUFFIX_HINT_ALPHA``); else Successful.
    """
    full = judged[0].measurement
    failed = [j for j in judged if j.measurement.outcome is Outcome.FAILED]
    if failed:
        worst = min(failed, key=lambda j: j.measurement.p_value if j.measurement.p_value is not None else 1.0)
        return _annotated(worst, len(judged))
    if full.outcome is not Outcome.SUCCESSFUL:
        return _awaiting_if_small(full, pass_size)
    if not latest_has_data:
        return full.model_copy(
            update={
                "outcome": Outcome.INCONCLUSIVE,
                "reason": f"{check.name}: no new data in the latest interval (the series stopped?); not a pass",
            }
        )
    hinted = [j for j in judged[1:] if _suggests_worse(j.measurement)]
    if hinted:
        hint = min(hinted, key=lambda j: j.measurement.p_value or 1.0)
        reason = (
            f"{hint.measurement.reason} ({_since(hint.start_s)}: suggests a regression, p < {SUFFIX_HINT_ALPHA}; "
            "more data needed)"
        )
        # A suffix is short by design: what it suggests, the next intervals' data will decide.
        update = {"outcome": Outcome.INCONCLUSIVE, "reason": reason, "awaiting_data": True}
        return hint.measurement.model_copy(update=update)
    return full


def _suggests_worse(measurement: Measurement) -> bool:
    return (
        measurement.outcome in (Outcome.SUCCESSFUL, Outcome.INCONCLUSIVE)
        and not measurement.awaiting_data
        and measurement.p_value is not None
        and measurement.p_value < SUFFIX_HINT_ALPHA
    )


def _annotated(judged: Judged, windows: int) -> Measurement:
    note = f" [{_since(judged.start_s)}; one of {windows} windows, alpha corrected]" if windows > 1 else ""
    return judged.measurement.model_copy(update={"reason": judged.measurement.reason + note})


def _awaiting_if_small(measurement: Measurement, pass_size: int) -> Measurement:
    if measurement.outcome is not Outcome.INCONCLUSIVE or measurement.candidate_samples >= pass_size:
        return measurement
    if measurement.awaiting_data or measurement.candidate_samples == 0:
        return measurement
    return measurement.model_copy(update={"awaiting_data": True, "samples_needed": pass_size})


COUNTS_FULL_SHARE = 1.0
"""Error rates and agreement keep the whole alpha on the whole window (their suffixes add half
of alpha more: at most 1.5 alpha per interval). Their tests carry the tolerance and need two
Failed intervals, and no healthy replay was rolled back on them either way, while the full
alpha rolled back 93 % instead of 89.5 % of +5-point error regressions within 60 s of the onset,
86 % instead of 74 % of 5-point agreement drops (bench/canary.py, 5 s scrapes, 400 replays)."""
SUFFIX_SHARES = 4
"""The suffixes' half of alpha is split at least this many ways, as many as a long canary has:
early in a canary, one or two suffixes do not get the whole half (their few scrapes are where
noise looks like an onset most often)."""


def corrected(check: MetricCheck, windows: int, index: int, full_share: float = 0.5) -> MetricCheck:
    """The check with its share of alpha (weighted Bonferroni): the whole window, where evidence
    accumulates, keeps ``full_share``; the suffixes share half of alpha."""
    share = full_share if index == 0 else 0.5 / max(windows - 1, SUFFIX_SHARES)
    return check.model_copy(update={"alpha": check.alpha * share})


JudgeWindow = Callable[[MetricCheck, float], Measurement]


def scan(
    check: MetricCheck,
    starts: Sequence[float],
    judge_window: JudgeWindow,
    latest_has_data: bool,
    pass_size: int = 0,
    full_share: float = 0.5,
) -> Measurement:
    """Judge every window with the corrected alpha and combine them (see `combine_windows`)."""
    judged = [Judged(start, judge_window(corrected(check, len(starts), i, full_share), start)) for i, start in enumerate(starts)]
    return combine_windows(check, judged, latest_has_data, pass_size)


# ---------------------------------------------------------------- latency over windows


@dataclass(frozen=True)
class Windows:
    """The evidence windows of one interval, all ending at ``end_s``."""

    starts: tuple[float, ...]
    """The whole window's start first, then suffix starts (see `window_starts`)."""
    end_s: float
    latest_s: float
    """Start of the latest stretch that must hold new data for a pass (an interval, or two scrapes
    where scrapes are sparser than intervals)."""
    changes_s: tuple[float, ...] = ()
    """Weight changes inside the window: each starts a window of its own."""

    @property
    def start_s(self) -> float:
        return self.starts[0]


SUFFIX_INTERVALS = 4
"""Suffix windows start at the last this many interval boundaries (and at weight changes)."""


def interval_windows(
    at_s: float, *, warmup_s: float, interval_s: float, window_s: float, scrape_s: float, changes_s: Sequence[float] = ()
) -> Windows:
    """The evidence windows of the interval ending at ``at_s`` (see optiserve.domain.evidence)."""
    full_start = max(at_s - window_s, warmup_s)
    boundaries = [at_s - k * interval_s for k in range(1, SUFFIX_INTERVALS + 1)]
    starts = window_starts(full_start, [*boundaries, *changes_s], at_s)
    changes = tuple(c for c in changes_s if full_start < c < at_s)
    return Windows(starts=starts, end_s=at_s, latest_s=at_s - max(interval_s, 2 * scrape_s), changes_s=changes)


def _points(points: Sequence[Point]) -> FloatArray:
    array = np.asarray(points, dtype=np.float64)
    return array.reshape(-1, 2) if array.size else np.empty((0, 2))


def _inside(points: FloatArray, start_s: float, end_s: float) -> FloatArray:
    return points[(points[:, 0] > start_s) & (points[:, 0] <= end_s)]


def _values(points: Sequence[Point] | None) -> list[float] | None:
    return None if points is None else [float(value) for _, value in points]


def judge_latency_windows(
    check: MetricCheck,
    baseline: Sequence[Point] | None,
    candidate: Sequence[Point] | None,
    windows: Windows,
    method: EvidenceTest = EvidenceTest.FIXED,
) -> Measurement:
    """Judge timestamped latency points over the interval's windows.

    Per-scrape data (both variants at the same timestamps) is judged paired (`pair_by_scrape`);
    per-request samples at their own times are judged unpaired, window by window, with
    `judge_latency` (Mann-Whitney). Points must lie inside the whole window.
    """
    from optiserve.domain.judge import judge_latency

    if baseline is None or candidate is None or not check.compares_to_baseline:
        return judge_latency(check, _values(baseline), _values(candidate))
    base, cand = _points(baseline), _points(candidate)
    values = np.concatenate([base[:, 1], cand[:, 1]])
    if not np.all(np.isfinite(values) & (values >= 0)):  # judge_latency says which variant, as an Error
        return judge_latency(check, base[:, 1].tolist(), cand[:, 1].tolist())
    latest = cand[:, 0].size > 0 and bool(np.any(cand[:, 0] > windows.latest_s))
    pairs = pair_by_scrape(base.tolist(), cand.tolist())
    if pairs is None:

        def unpaired(check_k: MetricCheck, start: float) -> Measurement:
            inside_b, inside_c = _inside(base, start, windows.end_s), _inside(cand, start, windows.end_s)
            return judge_latency(check_k, inside_b[:, 1].tolist(), inside_c[:, 1].tolist()).model_copy(
                update={"window_start_s": start}
            )

        return scan(check, windows.starts, unpaired, latest)
    return _paired_scan(check, pairs, windows, method, latest)


SUFFIX_PAIRS = (4, 8, 16, 32)
"""Latency suffix windows hold the latest this many paired scrapes (those shorter than the whole
window), so an onset is seen within a few scrapes at any scrape interval."""


def paired_starts(pairs: Pairs, windows: Windows) -> tuple[float, ...]:
    """The whole window, suffixes of `SUFFIX_PAIRS` scrapes, and windows from weight changes."""
    n = pairs.times.size
    by_count = [float(pairs.times[n - m - 1]) for m in SUFFIX_PAIRS if m < n]
    changes = [c for c in windows.changes_s if np.count_nonzero(pairs.times > c) >= MIN_PAIRS]
    return window_starts(windows.start_s, [*by_count, *changes], windows.end_s)


def _paired_scan(check: MetricCheck, pairs: Pairs, windows: Windows, method: EvidenceTest, latest: bool) -> Measurement:
    from optiserve.domain.judge import paired_measurement, short_of_pairs

    needed = max(2, min(check.min_samples, MIN_PAIRS))
    if pairs.times.size < needed:
        return short_of_pairs(check, int(pairs.times.size), needed)
    threshold = math.log1p(check.max_relative_increase or 0.0)
    to_pass = max(needed, min(check.min_samples, PASS_PAIRS))

    def paired(check_k: MetricCheck, start: float) -> Measurement:
        test = window_test(pairs, start, threshold, method)
        return paired_measurement(check_k, pairs, start, test, method)

    measurement = scan(check, paired_starts(pairs, windows), paired, latest, to_pass)
    if measurement.outcome is Outcome.SUCCESSFUL and pairs.times.size < to_pass:
        return short_of_pairs(check, int(pairs.times.size), to_pass)
    return measurement
