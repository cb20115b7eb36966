"""The canary judge: pure functions from windowed metric data to measurements, and from
measurements to a decision.

Each ``judge_*`` function judges one metric over one interval, the candidate against the baseline
running at the same time (Kayenta's approach), and returns a `Measurement`. Their shared rules:

- ``None`` for a variant's data means its query failed: Error. An empty window (no traffic) is
  Inconclusive. NaN, infinite or impossible values (negative latency, more failures than
  requests) are Error.
- Fewer than ``check.min_samples`` samples or requests in either compared variant: Inconclusive.
- Failed only when a one-sided test at ``check.alpha`` shows the candidate is worse than the
  tolerance or bound allows. Successful only when, besides, every point estimate is within its
  bound; a candidate that looks worse than allowed but not significantly so is Inconclusive.
  Noise is never a failure, and neither too little data nor an unproven regression is a pass.

`step` folds one interval's measurements into the `Analysis` state and applies Argo Rollouts'
failure, inconclusive and consecutive-error limits; see `optiserve.domain.analysis.Decision`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from optiserve.domain.analysis import (
    Analysis,
    AnalysisPolicy,
    Decision,
    EvidenceTest,
    IntervalRecord,
    Measurement,
    MetricCheck,
    MetricKind,
    MetricTally,
    Outcome,
    Verdict,
)
from optiserve.domain.evidence import HINT_ALPHA, Pairs, WindowTest


def _stats() -> Any:  # scipy ships no type information
    """scipy.stats, imported on first use: it costs the operator about 60 MB of memory, and only a
    running canary's judging needs it (an operator managing 1,000 models mostly does not)."""
    from scipy import stats

    return stats


FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")


@dataclass(frozen=True)
class _Finding:
    """The result of one criterion (a bound or a comparison) of a check."""

    failed: bool
    sentence: str
    test: str
    statistic: float | None = None
    p_value: float | None = None
    effect_size: float | None = None
    threshold: float | None = None
    inside: bool = True
    """The point estimate is within the bound. Not failed but not inside is no evidence either way."""


class _Counts(NamedTuple):
    hits: int
    total: int

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else 0.0


# ---------------------------------------------------------------- measurement builders


def _measurement(check: MetricCheck, outcome: Outcome, sentence: str, **values: float | int | str | None) -> Measurement:
    return Measurement.model_validate(
        {"metric": check.name, "kind": check.kind, "outcome": outcome, "reason": f"{check.name}: {sentence}", **values}
    )


def _suggestive(finding: _Finding) -> bool:
    """A point estimate beyond the bound blocks a pass only when its test leans that way too
    (p below `HINT_ALPHA`); a bound without a test (an absolute median or value) always does."""
    return finding.p_value is None or finding.p_value < HINT_ALPHA


def _conclude(check: MetricCheck, findings: Sequence[_Finding], **values: float | int | None) -> Measurement:
    """Failed if any criterion failed (that one explains it). Successful only when every point
    estimate is within its bound too: a candidate that looks worse than allowed but not yet
    significantly so is Inconclusive (more data needed), never a pass."""
    failed = [finding for finding in findings if finding.failed]
    outside = [finding for finding in findings if not finding.inside and _suggestive(finding)]
    deciding = failed[0] if failed else outside[0] if outside else findings[-1]
    outcome = Outcome.FAILED if failed else Outcome.INCONCLUSIVE if outside else Outcome.SUCCESSFUL
    sentence = "; ".join(finding.sentence for finding in findings) if outcome is Outcome.SUCCESSFUL else deciding.sentence
    if outcome is Outcome.INCONCLUSIVE:
        sentence += "; beyond the bound but not significantly: more data needed"
    return _measurement(
        check,
        outcome,
        sentence,
        test=deciding.test,
        statistic=deciding.statistic,
        p_value=deciding.p_value,
        effect_size=deciding.effect_size,
        threshold=deciding.threshold,
        **values,
    )


def no_series(check: MetricCheck) -> Measurement:
    """The measurement of a metric for which neither variant has a series at all.

    `step` treats a check without a measurement in an interval the same way, and stops the
    analysis on it once warm-up is over: a name or query that matches nothing is never a pass.
    """
    return _measurement(
        check,
        Outcome.INCONCLUSIVE,
        "no series for the baseline or the candidate; check the metric's name and query",
        series_missing=True,
    )


def _require_kind(check: MetricCheck, *kinds: MetricKind) -> None:
    if check.kind not in kinds:
        raise ValueError(f"metric '{check.name}' is of kind {check.kind}, not {' or '.join(kinds)}")


def _failed_queries(**variants: object) -> str:
    """A sentence naming the variants whose query failed (their data is None)."""
    failed = [variant for variant, data in variants.items() if data is None]
    return f"the {' and '.join(failed)} {'query' if len(failed) == 1 else 'queries'} failed; no data to judge"


def _pair(first: float | None, second: float | None) -> tuple[float, float] | None:
    return None if first is None or second is None else (first, second)


class _Shortage(NamedTuple):
    sentence: str
    awaiting: bool
    """Some data but not enough: the judge waits for it (see `step`). No data at all is no
    traffic, an Inconclusive that counts."""


def _too_few(check: MetricCheck, unit: str, **sizes: int) -> _Shortage | None:
    """What the first variant below min_samples lacks, or None if all have enough."""
    for variant, size in sizes.items():
        if size == 0:
            return _Shortage(f"no {variant} {unit} in the window (no traffic)", awaiting=False)
        if size < check.min_samples:
            return _Shortage(f"only {size} of the {check.min_samples} {variant} {unit} needed", awaiting=True)
    return None


def _short(check: MetricCheck, shortage: _Shortage, sizes: Mapping[str, int], needed: int | None = None) -> Measurement:
    """Inconclusive for too little data, awaiting it or not."""
    return _measurement(
        check,
        Outcome.INCONCLUSIVE,
        shortage.sentence,
        awaiting_data=shortage.awaiting,
        samples_needed=(needed or check.min_samples) if shortage.awaiting else None,
        **sizes,
    )


def _p(value: float) -> float:
    """A p-value a degenerate test left undefined (NaN) counts as no evidence."""
    return value if math.isfinite(value) else 1.0


# ---------------------------------------------------------------- latency


def _latency_array(variant: str, samples: Sequence[float]) -> FloatArray | str:
    array = np.asarray(samples, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(array) | (array < 0)))
    if bad:
        return f"{bad} of the {variant}'s {array.size} latency samples are NaN, infinite or negative"
    return array


def _relative_increase(baseline_median: float, candidate_median: float) -> float:
    if baseline_median > 0:
        return candidate_median / baseline_median - 1.0
    return 0.0 if candidate_median == 0 else math.inf


def _latency_bound(limit: float, candidate_median: float) -> _Finding:
    failed = candidate_median > limit
    relation = "above" if failed else "within"
    return _Finding(
        failed=failed,
        sentence=f"candidate median {candidate_median:.4g} is {relation} the bound {limit:.4g}",
        test="median-bound",
        effect_size=candidate_median - limit,
        threshold=limit,
        inside=not failed,
    )


def _latency_shift(check: MetricCheck, baseline: FloatArray, candidate: FloatArray) -> _Finding:
    """Failed when the candidate is significantly slower than the baseline *plus the tolerance*.

    The one-sided Mann-Whitney U test (candidate greater) is run against the baseline's samples
    scaled by ``1 + max_relative_increase``, so it rejects only when the data shows the candidate
    is worse by more than the tolerance, not merely worse; and the medians' ratio must exceed
    the tolerance too. A/A noise then fails far less often than alpha, while a regression well
    beyond the tolerance still fails within one interval.
    """
    tolerance = check.max_relative_increase or 0.0
    result = _stats().mannwhitneyu(candidate, baseline * (1.0 + tolerance), alternative="greater")
    p_value = _p(float(result.pvalue))
    baseline_median, candidate_median = float(np.median(baseline)), float(np.median(candidate))
    increase = _relative_increase(baseline_median, candidate_median)
    failed = p_value < check.alpha and increase > tolerance
    comparison = f"candidate median {candidate_median:.4g} is {increase:+.1%} against the baseline's {baseline_median:.4g}"
    if failed:
        judgement = f"significantly beyond the {tolerance:.0%} tolerance (Mann-Whitney U p={p_value:.3g} < {check.alpha})"
    else:
        judgement = f"not shown to be beyond the {tolerance:.0%} tolerance (Mann-Whitney U p={p_value:.3g})"
    return _Finding(
        failed=failed,
        sentence=f"{comparison}, {judgement}",
        test="mann-whitney-u",
        statistic=float(result.statistic),
        p_value=p_value,
        effect_size=increase,
        threshold=tolerance,
        inside=increase <= tolerance,
    )


def judge_latency(
    check: MetricCheck, baseline_samples: Sequence[float] | None, candidate_samples: Sequence[float] | None
) -> Measurement:
    """Judge the latency samples of one window (per request, or one value per scrape).

    Failed when the candidate is significantly slower than the baseline plus
    ``max_relative_increase`` (see `_latency_shift`), or when its median exceeds ``max``. The
    baseline is only needed (and only checked) when a relative tolerance is set.
    """
    _require_kind(check, MetricKind.LATENCY)
    baseline_data = baseline_samples if check.compares_to_baseline else ()
    if baseline_data is None or candidate_samples is None:
        return _measurement(check, Outcome.ERROR, _failed_queries(baseline=baseline_data, candidate=candidate_samples))
    candidate = _latency_array("candidate", candidate_samples)
    if isinstance(candidate, str):
        return _measurement(check, Outcome.ERROR, candidate)
    baseline = _latency_array("baseline", baseline_data)
    if isinstance(baseline, str):
        return _measurement(check, Outcome.ERROR, baseline)
    sizes = {"candidate_samples": candidate.size, "baseline_samples": baseline.size}
    compared = (
        {"candidate": candidate.size, "baseline": baseline.size} if check.compares_to_baseline else {"candidate": candidate.size}
    )
    if short := _too_few(check, "latency samples", **compared):
        return _short(check, short, sizes)
    candidate_median = float(np.median(candidate))
    findings = [_latency_bound(check.max, candidate_median)] if check.max is not None else []
    if check.max_relative_increase is not None:
        findings.append(_latency_shift(check, baseline, candidate))
    baseline_median = float(np.median(baseline)) if baseline.size else None
    return _conclude(check, findings, baseline_value=baseline_median, candidate_value=candidate_median, **sizes)


def short_of_pairs(check: MetricCheck, have: int, needed: int) -> Measurement:
    """Awaiting data: fewer paired scrapes than the paired test needs."""
    shortage = _Shortage(f"only {have} of the {needed} paired scrapes needed (both variants at the same scrape)", True)
    if have == 0:
        shortage = _Shortage("no scrape with latency values for both variants in the window (no traffic)", False)
    return _short(check, shortage, {"candidate_samples": have, "baseline_samples": have}, needed)


def paired_measurement(
    check: MetricCheck, pairs: Pairs, start_s: float, test: WindowTest | None, method: EvidenceTest
) -> Measurement:
    """One window's paired latency measurement: the geometric mean of the per-scrape ratios
    against ``1 + max_relative_increase``, at ``check.alpha`` (already corrected for the scan)."""
    if test is None:
        return short_of_pairs(check, 0, 2).model_copy(update={"window_start_s": start_s})
    inside = pairs.times > start_s
    candidate_median = float(np.median(pairs.candidate[inside]))
    baseline_median = float(np.median(pairs.baseline[inside]))
    tolerance = check.max_relative_increase or 0.0
    threshold = math.log1p(tolerance)
    failed = test.p_value < check.alpha and test.mean > threshold
    name = "paired t" if method is EvidenceTest.FIXED else "mSPRT"
    comparison = (
        f"candidate {math.expm1(test.mean):+.1%} against the baseline, paired over {test.n} scrapes since t={start_s:g}s "
        f"(medians {candidate_median:.4g} and {baseline_median:.4g})"
    )
    if failed:
        judgement = f"significantly beyond the {tolerance:.0%} tolerance ({name} p={test.p_value:.3g} < {check.alpha:.3g})"
    else:
        judgement = f"not shown to be beyond the {tolerance:.0%} tolerance ({name} p={test.p_value:.3g})"
    shift = _Finding(
        failed=failed,
        sentence=f"{comparison}, {judgement}",
        test=f"paired-{method.value}",
        statistic=test.statistic,
        p_value=test.p_value,
        effect_size=math.expm1(test.mean),
        threshold=tolerance,
        inside=test.mean <= threshold,
    )
    findings = [_latency_bound(check.max, candidate_median), shift] if check.max is not None else [shift]
    sizes = {"candidate_samples": test.n, "baseline_samples": test.n}
    measurement = _conclude(check, findings, baseline_value=baseline_median, candidate_value=candidate_median, **sizes)
    return measurement.model_copy(update={"window_start_s": start_s})


# ---------------------------------------------------------------- counts


def _counts(variant: str, hits: float, total: float, hit_name: str) -> _Counts | str:
    """Counts from (possibly extrapolated, so non-integer) counter increases, or what is wrong with them."""
    if not (math.isfinite(hits) and math.isfinite(total)):
        return f"the {variant}'s {hit_name} or total count is NaN or infinite"
    rounded = _Counts(round(hits), round(total))
    if rounded.hits < 0 or rounded.total < 0:
        return f"the {variant}'s counts are negative ({hit_name} {hits:g}, total {total:g})"
    if rounded.hits > rounded.total:
        return f"the {variant} has more {hit_name} ({hits:g}) than requests ({total:g})"
    return rounded


def _rate(counts: _Counts) -> str:
    return f"{counts.rate:.3%} ({counts.hits}/{counts.total})"


def _rate_bound(check: MetricCheck, limit: float, candidate: _Counts) -> _Finding:
    """One-sided exact binomial test: is the candidate's rate above ``limit``?"""
    p_value = _p(float(_stats().binomtest(candidate.hits, candidate.total, p=limit, alternative="greater").pvalue))
    failed = p_value < check.alpha
    verdict = f"significantly above (p={p_value:.3g} < {check.alpha})" if failed else f"not shown to exceed (p={p_value:.3g})"
    return _Finding(
        failed=failed,
        sentence=f"candidate error rate {_rate(candidate)} is {verdict} the bound {limit:.3%}",
        test="binomial",
        p_value=p_value,
        effect_size=candidate.rate - limit,
        threshold=limit,
        inside=candidate.rate <= limit,
    )


def _rate_increase(check: MetricCheck, baseline: _Counts, candidate: _Counts) -> _Finding:
    """Intersection-union test: Failed only when BOTH one-sided tests reject, so p = max of both.

    Fisher's exact test (candidate rate above baseline rate) accounts for the baseline's own
    uncertainty and stays valid at low counts and all-zero baselines; the exact binomial test
    against ``baseline rate + max_absolute_increase`` applies the tolerance.
    """
    tolerance = check.max_absolute_increase or 0.0
    table = [[candidate.hits, candidate.total - candidate.hits], [baseline.hits, baseline.total - baseline.hits]]
    fisher = _stats().fisher_exact(table, alternative="greater")
    allowed = min(1.0, baseline.rate + tolerance)
    binomial = _stats().binomtest(candidate.hits, candidate.total, p=allowed, alternative="greater")
    p_value = max(_p(float(fisher.pvalue)), _p(float(binomial.pvalue)))
    failed = p_value < check.alpha
    comparison = f"candidate error rate {_rate(candidate)} against the baseline's {_rate(baseline)}"
    if failed:
        judgement = (
            f"significantly more than {tolerance:.3%} above it (Fisher exact and binomial p={p_value:.3g} < {check.alpha})"
        )
    else:
        judgement = f"not shown to be more than {tolerance:.3%} above it (p={p_value:.3g})"
    return _Finding(
        failed=failed,
        sentence=f"{comparison}: {judgement}",
        test="fisher-exact+binomial",
        statistic=float(fisher.statistic),
        p_value=p_value,
        effect_size=candidate.rate - baseline.rate,
        threshold=tolerance,
        inside=candidate.rate <= allowed,
    )


def judge_rate(
    check: MetricCheck,
    baseline_failures: float | None,
    baseline_total: float | None,
    candidate_failures: float | None,
    candidate_total: float | None,
) -> Measurement:
    """Judge an error rate from the request counts of one window (counter increases).

    ``max_absolute_increase``: Failed when the candidate's rate is significantly above the
    baseline's plus the tolerance (see `_rate_increase`). ``max``: Failed when it is
    significantly above ``max`` (exact binomial test). ``min_samples`` counts requests.
    """
    _require_kind(check, MetricKind.ERROR_RATE)
    relative = check.compares_to_baseline
    candidate_pair = _pair(candidate_failures, candidate_total)
    baseline_pair = _pair(baseline_failures, baseline_total) if relative else (0.0, 0.0)
    if baseline_pair is None or candidate_pair is None:
        return _measurement(check, Outcome.ERROR, _failed_queries(baseline=baseline_pair, candidate=candidate_pair))
    candidate = _counts("candidate", *candidate_pair, "failures")
    if isinstance(candidate, str):
        return _measurement(check, Outcome.ERROR, candidate)
    baseline = _counts("baseline", *baseline_pair, "failures")
    if isinstance(baseline, str):
        return _measurement(check, Outcome.ERROR, baseline)
    sizes = {"candidate_samples": candidate.total, "baseline_samples": baseline.total}
    compared = {"candidate": candidate.total, "baseline": baseline.total} if relative else {"candidate": candidate.total}
    if short := _too_few(check, "requests", **compared):
        return _short(check, short, sizes)
    findings = [_rate_bound(check, check.max, candidate)] if check.max is not None else []
    if relative:
        findings.append(_rate_increase(check, baseline, candidate))
    values = {"candidate_value": candidate.rate, "baseline_value": baseline.rate if relative else None}
    return _conclude(check, findings, **values, **sizes)


def judge_agreement(check: MetricCheck, agreeing: float | None, compared: float | None) -> Measurement:
    """Judge the comparator's counts for the candidate against ``min``.

    Failed when a one-sided exact binomial test shows the agreement (or accuracy) is below
    ``min``, i.e. when the exact (Clopper-Pearson) upper confidence bound at 1 - alpha lies below
    it; a few disagreements that the sample size cannot tell apart from ``min`` are not a failure.
    """
    _require_kind(check, MetricKind.AGREEMENT, MetricKind.ACCURACY)
    pair = _pair(agreeing, compared)
    if pair is None:
        return _measurement(check, Outcome.ERROR, _failed_queries(candidate=pair))
    counts = _counts("candidate", *pair, "agreeing samples")
    if isinstance(counts, str):
        return _measurement(check, Outcome.ERROR, counts)
    if short := _too_few(check, "compared samples", candidate=counts.total):
        return _short(check, short, {"candidate_samples": counts.total})
    bound = float(check.min or 0.0)
    result = _stats().binomtest(counts.hits, counts.total, p=bound, alternative="less")
    p_value = _p(float(result.pvalue))
    upper = float(result.proportion_ci(confidence_level=1 - check.alpha, method="exact").high)
    failed = p_value < check.alpha
    relation = "below" if failed else "not shown to be below"
    sentence = (
        f"{check.kind} {counts.rate:.3%} ({counts.hits}/{counts.total}, upper {1 - check.alpha:.0%} bound {upper:.3%}) "
        f"is {relation} the minimum {bound:.3%} (binomial p={p_value:.3g})"
    )
    finding = _Finding(
        failed=failed,
        sentence=sentence,
        test="binomial",
        p_value=p_value,
        effect_size=counts.rate - bound,
        threshold=bound,
        inside=counts.rate >= bound,
    )
    return _conclude(check, [finding], candidate_value=counts.rate, candidate_samples=counts.total)


def _value_bound(latest: float, name: str, bound: float) -> _Finding:
    failed = latest > bound if name == "max" else latest < bound
    return _Finding(
        failed=failed,
        sentence=f"latest value {latest:.4g} is {'outside' if failed else 'within'} the {name} bound {bound:.4g}",
        test="bound",
        effect_size=latest - bound,
        threshold=bound,
        inside=not failed,
    )


def judge_custom(check: MetricCheck, values: Sequence[float] | None) -> Measurement:
    """Judge the latest value of the window against the absolute bounds ``max`` and ``min``."""
    _require_kind(check, MetricKind.CUSTOM)
    if values is None:
        return _measurement(check, Outcome.ERROR, _failed_queries(candidate=values))
    array = np.asarray(values, dtype=np.float64)
    if bad := int(np.count_nonzero(~np.isfinite(array))):
        return _measurement(check, Outcome.ERROR, f"{bad} of the {array.size} values are NaN or infinite")
    if short := _too_few(check, "values", candidate=array.size):
        return _short(check, short, {"candidate_samples": array.size})
    latest = float(array[-1])
    bounds = (("max", check.max), ("min", check.min))
    findings = [_value_bound(latest, name, bound) for name, bound in bounds if bound is not None]
    return _conclude(check, findings, candidate_value=latest, candidate_samples=array.size)


# ---------------------------------------------------------------- analysis across intervals


def keep_last(items: tuple[T, ...], item: T, limit: int) -> tuple[T, ...]:
    """Append ``item`` and keep only the newest ``limit`` entries (bounded history in status)."""
    if limit < 1:
        raise ValueError(f"limit: must be at least 1, got {limit}")
    return (*items, item)[-limit:]


def _add(tally: MetricTally, measurement: Measurement) -> MetricTally:
    """Count one outcome. Awaiting data is not a judgement: it counts only as a wait."""
    outcome, waiting = measurement.outcome, measurement.awaiting_data
    return MetricTally(
        successful=tally.successful + (outcome is Outcome.SUCCESSFUL),
        failed=tally.failed + (outcome is Outcome.FAILED),
        inconclusive=tally.inconclusive + (outcome is Outcome.INCONCLUSIVE and not waiting),
        errors=tally.errors + (outcome is Outcome.ERROR),
        consecutive_errors=tally.consecutive_errors + 1 if outcome is Outcome.ERROR else 0,
        consecutive_waits=tally.consecutive_waits + 1 if waiting else 0,
    )


def _complete_interval(checks: Sequence[MetricCheck], measurements: Sequence[Measurement]) -> tuple[Measurement, ...]:
    """The interval's measurements in spec order; a check without one gets `no_series`."""
    by_metric = {measurement.metric: measurement for measurement in measurements}
    if len(by_metric) != len(measurements):
        raise ValueError("measurements: a metric is measured more than once in one interval")
    known = {check.name for check in checks}
    if unknown := sorted(set(by_metric) - known):
        raise ValueError(f"measurements: metric '{unknown[0]}' is not one of the analysis' checks")
    return tuple(by_metric.get(check.name) or no_series(check) for check in checks)


Interval = tuple[Measurement, ...]
Rule = Callable[[AnalysisPolicy, Mapping[str, MetricTally], Interval], Verdict | None]


@dataclass(frozen=True)
class _LimitRule:
    """Argo's limits: a metric whose count exceeds the policy's limit decides the analysis."""

    count: Callable[[MetricTally], int]
    limit: Callable[[AnalysisPolicy], int]
    limit_name: str
    what: str
    """How the count reads, with {n}: "Failed in {n} intervals"."""
    decision: Decision

    def __call__(self, policy: AnalysisPolicy, tallies: Mapping[str, MetricTally], interval: Interval) -> Verdict | None:
        for measurement in interval:
            count, limit = self.count(tallies[measurement.metric]), self.limit(policy)
            if count > limit:
                what = self.what.format(n=count)
                reason = f"metric '{measurement.metric}' {what}, more than {self.limit_name} {limit}: {measurement.reason}"
                return Verdict(decision=self.decision, reason=reason, metric=measurement.metric)
        return None


_failure_rule = _LimitRule(
    lambda t: t.failed, lambda p: p.failure_limit, "failureLimit", "Failed in {n} intervals", Decision.ROLLBACK
)
_error_rule = _LimitRule(
    lambda t: t.consecutive_errors,
    lambda p: p.consecutive_error_limit,
    "consecutiveErrorLimit",
    "could not be measured in {n} consecutive intervals",
    Decision.ROLLBACK,
)
_data_wait_rule = _LimitRule(
    lambda t: t.consecutive_waits,
    lambda p: p.data_wait_limit,
    "dataWaitLimit",
    "waited for its samples in {n} consecutive intervals (data absent or too sparse for the analysis)",
    Decision.HOLD,
)
_inconclusive_rule = _LimitRule(
    lambda t: t.inconclusive,
    lambda p: p.inconclusive_limit,
    "inconclusiveLimit",
    "was Inconclusive in {n} intervals",
    Decision.HOLD,
)


def _missing_rule(policy: AnalysisPolicy, tallies: Mapping[str, MetricTally], interval: Interval) -> Verdict | None:
    for measurement in interval:
        if measurement.series_missing:
            reason = (
                f"metric '{measurement.metric}' has no series for the baseline or the candidate after warm-up; "
                "check its name and query"
            )
            return Verdict(decision=Decision.HOLD, reason=reason, metric=measurement.metric)
    return None


def _promotion_rule(policy: AnalysisPolicy, tallies: Mapping[str, MetricTally], interval: Interval) -> Verdict | None:
    latest_successful = all(measurement.outcome is Outcome.SUCCESSFUL for measurement in interval)
    enough = all(tallies[measurement.metric].successful >= policy.required_successes for measurement in interval)
    if not (latest_successful and enough):
        return None
    names = ", ".join(measurement.metric for measurement in interval)
    reason = f"every metric ({names}) was Successful in at least {policy.required_successes} intervals, the latest included"
    return Verdict(decision=Decision.PROMOTE, reason=reason)


def _waiting(policy: AnalysisPolicy, tallies: Mapping[str, MetricTally], interval: Interval) -> Verdict:
    progress = "; ".join(
        f"'{m.metric}' {m.outcome} ({tallies[m.metric].successful}/{policy.required_successes} Successful)" for m in interval
    )
    pending = next((m for m in interval if m.outcome is not Outcome.SUCCESSFUL), None)
    detail = f"; {pending.reason}" if pending else ""
    return Verdict(
        decision=Decision.CONTINUE, reason=f"judging continues: {progress}{detail}", metric=pending.metric if pending else None
    )


RULES: tuple[Rule, ...] = (_failure_rule, _error_rule, _missing_rule, _data_wait_rule, _inconclusive_rule, _promotion_rule)
"""Applied in this order; the first that decides wins, so a failure outranks a missing series."""


def _decide(policy: AnalysisPolicy, tallies: Mapping[str, MetricTally], interval: Interval) -> Verdict:
    for rule in RULES:
        if verdict := rule(policy, tallies, interval):
            return verdict
    return _waiting(policy, tallies, interval)


def step(state: Analysis, measurements: Sequence[Measurement], *, at_s: float) -> tuple[Analysis, Verdict]:
    """Fold one interval's measurements (its window ending at ``at_s`` seconds after the first
    canary traffic) into the analysis and decide.

    - Intervals ending within ``policy.warmup_s`` are not judged: state unchanged, continue.
      Callers start windows no earlier than the end of warm-up.
    - A check without a measurement has no series for either variant (see `no_series`).
    - Decision order: rollback on a metric's Failed count > failure_limit; rollback on its
      consecutive Error count > consecutive_error_limit; hold on a missing series; hold on its
      Inconclusive count > inconclusive_limit; promote when every metric was Successful in this
      interval and in at least ``required_successes`` intervals; otherwise continue.
    - A final decision is kept: stepping a decided analysis returns it unchanged.
    """
    if state.verdict is not None:
        return state, state.verdict
    if at_s <= state.policy.warmup_s:
        reason = f"warming up: intervals ending by {state.policy.warmup_s:g}s after the first canary traffic are not judged"
        return state, Verdict(decision=Decision.CONTINUE, reason=reason)
    interval = _complete_interval(state.checks, measurements)
    tallies = {measurement.metric: _add(state.tally(measurement.metric), measurement) for measurement in interval}
    verdict = _decide(state.policy, tallies, interval)
    record = IntervalRecord(at_s=at_s, decision=verdict.decision, measurements=interval)
    updated = state.model_copy(
        update={
            "tallies": tallies,
            "history": keep_last(state.history, record, state.policy.history_limit),
            "verdict": verdict if verdict.decision.is_final else None,
        }
    )
    return updated, verdict
