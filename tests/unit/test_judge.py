"""The canary judge: per-metric outcomes, and the limits that turn them into a decision."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from optiserve.domain.analysis import (
    Analysis,
    AnalysisPolicy,
    Decision,
    Measurement,
    MetricCheck,
    MetricKind,
    Outcome,
)
from optiserve.domain.judge import (
    judge_agreement,
    judge_custom,
    judge_latency,
    judge_rate,
    keep_last,
    no_series,
    step,
)

DOMAIN = Path(__file__).resolve().parents[2] / "operator" / "optiserve" / "domain"

LATENCY = MetricCheck(name="latency", kind=MetricKind.LATENCY, max_relative_increase=0.10)
LATENCY_CAP = MetricCheck(name="latency", kind=MetricKind.LATENCY, max=50.0)
ERRORS = MetricCheck(name="errorRate", kind=MetricKind.ERROR_RATE, max_absolute_increase=0.01)
ERRORS_STRICT = MetricCheck(name="errorRate", kind=MetricKind.ERROR_RATE, max_absolute_increase=0.0)
ERRORS_CAP = MetricCheck(name="errorRate", kind=MetricKind.ERROR_RATE, max=0.01)
AGREEMENT = MetricCheck(name="agreement", kind=MetricKind.AGREEMENT, min=0.99)
ACCURACY = MetricCheck(name="accuracy", kind=MetricKind.ACCURACY, min=0.9)
GPU_MEMORY = MetricCheck(name="gpuMemory", kind=MetricKind.CUSTOM, max=0.9, min=0.1)


def latencies(seed: int, n: int, scale: float = 1.0, sigma: float = 0.5) -> list[float]:
    """Log-normal latencies around 10 ms (right-skewed, as real latencies are)."""
    rng = np.random.default_rng(seed)
    return [float(value) for value in scale * rng.lognormal(np.log(10.0), sigma, n)]


# ---------------------------------------------------------------- latency

LATENCY_CASES = [
    ("2x slower", LATENCY, latencies(1, 60), latencies(2, 60, scale=2.0), Outcome.FAILED),
    ("same distribution", LATENCY, latencies(1, 200), latencies(2, 60), Outcome.SUCCESSFUL),
    ("faster", LATENCY, latencies(1, 200), latencies(2, 60, scale=0.5), Outcome.SUCCESSFUL),
    # 5 % slower on 4000 samples is significant, but within the 10 % tolerance.
    ("5% slower, within tolerance", LATENCY, latencies(1, 4000), latencies(2, 4000, scale=1.05), Outcome.SUCCESSFUL),
    ("sparse candidate", LATENCY, latencies(1, 200), latencies(2, 9, scale=2.0), Outcome.INCONCLUSIVE),
    ("sparse baseline", LATENCY, latencies(1, 5), latencies(2, 60, scale=2.0), Outcome.INCONCLUSIVE),
    ("no candidate traffic", LATENCY, latencies(1, 200), [], Outcome.INCONCLUSIVE),
    ("candidate query failed", LATENCY, latencies(1, 200), None, Outcome.ERROR),
    ("baseline query failed", LATENCY, None, latencies(2, 60), Outcome.ERROR),
    ("NaN in candidate", LATENCY, latencies(1, 200), [*latencies(2, 60), math.nan], Outcome.ERROR),
    ("Inf in baseline", LATENCY, [math.inf, *latencies(1, 200)], latencies(2, 60), Outcome.ERROR),
    ("negative latency", LATENCY, latencies(1, 200), [-1.0, *latencies(2, 60)], Outcome.ERROR),
    ("median above max", LATENCY_CAP, None, latencies(2, 60, scale=6.0), Outcome.FAILED),
    ("median below max, no baseline needed", LATENCY_CAP, None, latencies(2, 60), Outcome.SUCCESSFUL),
]


@pytest.mark.parametrize(
    ("check", "baseline", "candidate", "expected"), [case[1:] for case in LATENCY_CASES], ids=[case[0] for case in LATENCY_CASES]
)
def test_latency_outcomes(
    check: MetricCheck, baseline: list[float] | None, candidate: list[float] | None, expected: Outcome
) -> None:
    measurement = judge_latency(check, baseline, candidate)
    assert measurement.outcome is expected, measurement.reason
    assert measurement.reason.startswith("latency: ")


def test_latency_failure_is_explained() -> None:
    measurement = judge_latency(LATENCY, latencies(1, 60), latencies(2, 60, scale=2.0))
    assert measurement.test == "mann-whitney-u"
    assert measurement.p_value is not None and measurement.p_value < LATENCY.alpha
    assert measurement.effect_size is not None and measurement.threshold == 0.10
    assert measurement.effect_size > 0.5
    assert measurement.baseline_samples == 60 and measurement.candidate_samples == 60
    assert measurement.candidate_value is not None and measurement.baseline_value is not None
    assert measurement.candidate_value > 1.5 * measurement.baseline_value
    assert "tolerance" in measurement.reason


def test_no_traffic_and_failed_query_are_told_apart() -> None:
    empty = judge_latency(LATENCY, latencies(1, 100), [])
    failed = judge_latency(LATENCY, latencies(1, 100), None)
    assert (empty.outcome, failed.outcome) == (Outcome.INCONCLUSIVE, Outcome.ERROR)
    assert "no traffic" in empty.reason
    assert "candidate query failed" in failed.reason


def test_zero_baseline_median_gives_a_serializable_measurement() -> None:
    measurement = judge_latency(LATENCY, [0.0] * 40, [5.0] * 40)
    assert measurement.outcome is Outcome.FAILED
    assert measurement.effect_size is None  # infinite relative increase is reported as unknown
    json.dumps(measurement.model_dump(mode="json"), allow_nan=False)


# ---------------------------------------------------------------- error rate

RATE_CASES: list[tuple[str, MetricCheck, tuple[float | None, float | None, float | None, float | None], Outcome]] = [
    ("+5 points", ERRORS, (10, 1000, 12, 200), Outcome.FAILED),
    ("same rate", ERRORS, (10, 1000, 2, 200), Outcome.SUCCESSFUL),
    # Beyond the bound by an amount the counts cannot tell from noise (p >= 0.1): a pass; closer to
    # significance (0.05 <= p < 0.1): Inconclusive, more data needed.
    ("all-zero baseline, few errors at low counts, within the noise", ERRORS, (0, 60, 2, 60), Outcome.SUCCESSFUL),
    ("all-zero baseline, few errors, big baseline, suggestive", ERRORS, (0, 500, 2, 50), Outcome.INCONCLUSIVE),
    ("all-zero baseline, one error, no tolerance, within the noise", ERRORS_STRICT, (0, 50, 1, 50), Outcome.SUCCESSFUL),
    ("all-zero baseline, two errors, no tolerance, suggestive", ERRORS_STRICT, (0, 200, 2, 60), Outcome.INCONCLUSIVE),
    ("all-zero baseline, clear regression, no tolerance", ERRORS_STRICT, (0, 1000, 10, 200), Outcome.FAILED),
    ("extrapolated counters", ERRORS, (10.4, 1000.2, 2.3, 199.7), Outcome.SUCCESSFUL),
    ("too few candidate requests", ERRORS, (10, 1000, 10, 40), Outcome.INCONCLUSIVE),
    ("too few baseline requests", ERRORS, (0, 20, 10, 100), Outcome.INCONCLUSIVE),
    ("no candidate traffic", ERRORS, (10, 1000, 0, 0), Outcome.INCONCLUSIVE),
    ("candidate query failed", ERRORS, (10, 1000, None, 100), Outcome.ERROR),
    ("baseline query failed", ERRORS, (None, None, 1, 100), Outcome.ERROR),
    ("NaN count", ERRORS, (10, 1000, math.nan, 100), Outcome.ERROR),
    ("more failures than requests", ERRORS, (10, 1000, 120, 100), Outcome.ERROR),
    ("negative count", ERRORS, (-5, 1000, 1, 100), Outcome.ERROR),
    ("above the absolute max", ERRORS_CAP, (None, None, 8, 200), Outcome.FAILED),
    ("within the absolute max", ERRORS_CAP, (None, None, 2, 200), Outcome.SUCCESSFUL),
]


@pytest.mark.parametrize(("check", "counts", "expected"), [case[1:] for case in RATE_CASES], ids=[case[0] for case in RATE_CASES])
def test_rate_outcomes(
    check: MetricCheck, counts: tuple[float | None, float | None, float | None, float | None], expected: Outcome
) -> None:
    measurement = judge_rate(check, *counts)
    assert measurement.outcome is expected, measurement.reason


def test_rate_failure_reports_rates_and_tolerance() -> None:
    measurement = judge_rate(ERRORS, 10, 1000, 12, 200)
    assert measurement.test == "fisher-exact+binomial"
    assert measurement.baseline_value == pytest.approx(0.01)
    assert measurement.candidate_value == pytest.approx(0.06)
    assert measurement.effect_size == pytest.approx(0.05)
    assert measurement.threshold == 0.01
    assert measurement.p_value is not None and measurement.p_value < 0.05
    assert (measurement.baseline_samples, measurement.candidate_samples) == (1000, 200)


# ---------------------------------------------------------------- agreement, accuracy, custom

AGREEMENT_CASES: list[tuple[str, MetricCheck, tuple[float | None, float | None], Outcome]] = [
    ("clear drop", AGREEMENT, (95, 100), Outcome.FAILED),
    ("at the minimum", AGREEMENT, (99, 100), Outcome.SUCCESSFUL),
    ("tiny noise below the minimum", AGREEMENT, (98, 100), Outcome.SUCCESSFUL),
    ("below the minimum, suggestive but not significant", AGREEMENT, (97, 100), Outcome.INCONCLUSIVE),
    ("large sample just below", AGREEMENT, (9850, 10000), Outcome.FAILED),
    ("sparse", AGREEMENT, (10, 10), Outcome.INCONCLUSIVE),
    ("nothing compared", AGREEMENT, (0, 0), Outcome.INCONCLUSIVE),
    ("query failed", AGREEMENT, (None, 100), Outcome.ERROR),
    ("more agreeing than compared", AGREEMENT, (101, 100), Outcome.ERROR),
    ("accuracy drop", ACCURACY, (70, 100), Outcome.FAILED),
    ("accuracy fine", ACCURACY, (93, 100), Outcome.SUCCESSFUL),
]


@pytest.mark.parametrize(
    ("check", "counts", "expected"), [case[1:] for case in AGREEMENT_CASES], ids=[case[0] for case in AGREEMENT_CASES]
)
def test_agreement_outcomes(check: MetricCheck, counts: tuple[float | None, float | None], expected: Outcome) -> None:
    measurement = judge_agreement(check, *counts)
    assert measurement.outcome is expected, measurement.reason


CUSTOM_CASES: list[tuple[str, list[float] | None, Outcome]] = [
    ("latest above max", [0.5, 0.95], Outcome.FAILED),
    ("latest below min", [0.5, 0.05], Outcome.FAILED),
    ("earlier spike, latest fine", [0.95, 0.5], Outcome.SUCCESSFUL),
    ("NaN", [0.5, math.nan], Outcome.ERROR),
    ("Inf", [math.inf, 0.5], Outcome.ERROR),
    ("query failed", None, Outcome.ERROR),
    ("no values", [], Outcome.INCONCLUSIVE),
]


@pytest.mark.parametrize(("values", "expected"), [case[1:] for case in CUSTOM_CASES], ids=[case[0] for case in CUSTOM_CASES])
def test_custom_outcomes(values: list[float] | None, expected: Outcome) -> None:
    assert judge_custom(GPU_MEMORY, values).outcome is expected


def test_a_judge_refuses_a_check_of_another_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        judge_latency(ERRORS, [1.0], [1.0])


# ---------------------------------------------------------------- A/A noise

AA_RUNS = 200


def test_latency_a_a_noise_rarely_fails() -> None:
    failed = sum(
        judge_latency(LATENCY, latencies(seed, 90), latencies(seed + 10_000, 30)).outcome is Outcome.FAILED
        for seed in range(AA_RUNS)
    )
    assert failed / AA_RUNS <= 0.02


def test_latency_regression_beyond_tolerance_is_caught_at_the_same_sample_size() -> None:
    failed = sum(
        judge_latency(LATENCY, latencies(seed, 90), latencies(seed + 10_000, 30, scale=2.0)).outcome is Outcome.FAILED
        for seed in range(AA_RUNS)
    )
    assert failed / AA_RUNS >= 0.95


def test_error_rate_a_a_noise_rarely_fails() -> None:
    rng = np.random.default_rng(7)
    failed = 0
    for _ in range(AA_RUNS):
        baseline_failures, candidate_failures = rng.binomial(900, 0.01), rng.binomial(100, 0.01)
        failed += judge_rate(ERRORS, baseline_failures, 900, candidate_failures, 100).outcome is Outcome.FAILED
    assert failed / AA_RUNS <= 0.02


def test_agreement_at_the_minimum_rarely_fails() -> None:
    rng = np.random.default_rng(8)
    failed = sum(judge_agreement(AGREEMENT, rng.binomial(200, 0.99), 200).outcome is Outcome.FAILED for _ in range(AA_RUNS))
    assert failed / AA_RUNS <= AGREEMENT.alpha


# ---------------------------------------------------------------- properties

finite_latency = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@settings(max_examples=60, deadline=None)
@given(
    baseline=st.lists(finite_latency, min_size=20, max_size=60),
    candidate=st.lists(finite_latency, min_size=20, max_size=60),
    bad=non_finite,
    position=st.integers(min_value=0, max_value=60),
    in_candidate=st.booleans(),
)
def test_non_finite_latency_is_never_successful(
    baseline: list[float], candidate: list[float], bad: float, position: int, in_candidate: bool
) -> None:
    target = candidate if in_candidate else baseline
    target.insert(position % (len(target) + 1), bad)
    assert judge_latency(LATENCY, baseline, candidate).outcome is Outcome.ERROR


@settings(max_examples=60, deadline=None)
@given(
    baseline=st.lists(finite_latency, min_size=20, max_size=60),
    candidate=st.lists(finite_latency, min_size=20, max_size=60),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_latency_outcome_is_invariant_under_permutation(baseline: list[float], candidate: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    original = judge_latency(LATENCY, baseline, candidate)
    shuffled = judge_latency(LATENCY, rng.permutation(baseline).tolist(), rng.permutation(candidate).tolist())
    assert shuffled.outcome is original.outcome
    assert shuffled.p_value == pytest.approx(original.p_value)


@settings(max_examples=60, deadline=None)
@given(total=st.integers(min_value=50, max_value=5000), data=st.data())
def test_a_candidate_identical_to_the_baseline_never_fails(total: int, data: st.DataObject) -> None:
    failures = data.draw(st.integers(min_value=0, max_value=total))
    assert judge_rate(ERRORS_STRICT, failures, total, failures, total).outcome is not Outcome.FAILED


# ---------------------------------------------------------------- configuration


def test_min_samples_defaults_by_kind() -> None:
    assert (LATENCY.min_samples, ERRORS.min_samples, AGREEMENT.min_samples, GPU_MEMORY.min_samples) == (10, 50, 50, 1)
    assert MetricCheck(name="latency", kind=MetricKind.LATENCY, max=1.0, min_samples=5).min_samples == 5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "latency", "min": 1.0}, "min: does not apply"),
        ({"kind": "error_rate", "max_relative_increase": 0.1}, "max_relative_increase: does not apply"),
        ({"kind": "agreement"}, "needs one of: min"),
        ({"kind": "custom", "min": 2.0, "max": 1.0}, "min: 2.0 is above max"),
        ({"kind": "agreement", "min": 1.5}, r"bounds must lie in \[0, 1\]"),
        ({"kind": "latency", "max": 1.0, "alpha": 1.5}, "alpha"),
        ({"kind": "nonsense", "max": 1.0}, "kind"),
    ],
)
def test_invalid_checks_are_refused_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MetricCheck.model_validate({"name": "m", **fields})


def test_duplicate_metric_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="more than once"):
        Analysis(checks=(LATENCY, LATENCY))


def test_domain_imports_no_io_libraries() -> None:
    forbidden = {"kopf", "kubernetes", "requests", "httpx", "aiohttp", "urllib", "http", "prometheus_api_client", "socket"}
    for module in DOMAIN.glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {name.split(".")[0] for name in imported} & forbidden, module.name


# ---------------------------------------------------------------- analysis across intervals


def outcome(check: MetricCheck, result: Outcome) -> Measurement:
    return Measurement(metric=check.name, kind=check.kind, outcome=result, reason=f"{check.name}: {result}")


def run(analysis: Analysis, intervals: list[dict[MetricCheck, Outcome]], interval_s: float = 15.0) -> list[Decision]:
    """Step through intervals (one dict of outcomes per interval); the decisions, in order."""
    decisions = []
    for index, outcomes in enumerate(intervals, start=1):
        analysis, verdict = step(
            analysis, [outcome(check, result) for check, result in outcomes.items()], at_s=index * interval_s
        )
        decisions.append(verdict.decision)
    return decisions


OK, FAIL, INC, ERR = Outcome.SUCCESSFUL, Outcome.FAILED, Outcome.INCONCLUSIVE, Outcome.ERROR
GO_ON, PROMOTE, ROLLBACK, HOLD = Decision.CONTINUE, Decision.PROMOTE, Decision.ROLLBACK, Decision.HOLD

LIMIT_CASES = [
    ("failure_limit 0: first failure rolls back", AnalysisPolicy(failure_limit=0), [FAIL], [ROLLBACK]),
    ("failure_limit 1: second failure rolls back", AnalysisPolicy(failure_limit=1), [FAIL, OK, FAIL], [GO_ON, GO_ON, ROLLBACK]),
    ("failure_limit 2", AnalysisPolicy(failure_limit=2), [FAIL, FAIL, OK, FAIL], [GO_ON, GO_ON, GO_ON, ROLLBACK]),
    ("inconclusive_limit 0", AnalysisPolicy(inconclusive_limit=0), [INC], [HOLD]),
    ("inconclusive_limit 3", AnalysisPolicy(inconclusive_limit=3), [INC, OK, INC, INC, INC], [GO_ON, GO_ON, GO_ON, GO_ON, HOLD]),
    (
        "consecutive_error_limit 4",
        AnalysisPolicy(consecutive_error_limit=4),
        [ERR, ERR, ERR, ERR, ERR],
        [GO_ON, GO_ON, GO_ON, GO_ON, ROLLBACK],
    ),
    (
        "errors interrupted by a success reset",
        AnalysisPolicy(consecutive_error_limit=2),
        [ERR, ERR, OK, ERR, ERR, OK],
        [GO_ON, GO_ON, GO_ON, GO_ON, GO_ON, GO_ON],
    ),
    ("promote after required successes", AnalysisPolicy(required_successes=3), [OK, OK, OK], [GO_ON, GO_ON, PROMOTE]),
    (
        "a success after an inconclusive still counts",
        AnalysisPolicy(required_successes=2),
        [OK, INC, OK],
        [GO_ON, GO_ON, PROMOTE],
    ),
]


@pytest.mark.parametrize(
    ("policy", "outcomes", "expected"), [case[1:] for case in LIMIT_CASES], ids=[case[0] for case in LIMIT_CASES]
)
def test_limits(policy: AnalysisPolicy, outcomes: list[Outcome], expected: list[Decision]) -> None:
    decisions = run(Analysis(checks=(LATENCY,), policy=policy), [{LATENCY: result} for result in outcomes])
    assert decisions == expected


def test_promotion_needs_every_metric_successful_in_the_latest_interval() -> None:
    policy = AnalysisPolicy(required_successes=1, inconclusive_limit=5)
    intervals = [{LATENCY: OK, ERRORS: INC}, {LATENCY: OK, ERRORS: INC}, {LATENCY: INC, ERRORS: OK}, {LATENCY: OK, ERRORS: OK}]
    assert run(Analysis(checks=(LATENCY, ERRORS), policy=policy), intervals) == [GO_ON, GO_ON, GO_ON, PROMOTE]


def test_a_metric_that_never_succeeds_never_promotes() -> None:
    """No data is never a pass: latency keeps passing, errorRate never has enough traffic."""
    intervals = [{LATENCY: OK, ERRORS: INC}] * 10
    decisions = run(Analysis(checks=(LATENCY, ERRORS)), intervals)
    assert PROMOTE not in decisions
    assert decisions[3] is HOLD  # the 4th Inconclusive exceeds the default inconclusive_limit 3


def test_rollback_reason_names_the_metric() -> None:
    analysis = Analysis(checks=(LATENCY, AGREEMENT), policy=AnalysisPolicy(failure_limit=0))
    analysis, verdict = step(analysis, [outcome(LATENCY, OK), outcome(AGREEMENT, FAIL)], at_s=15)
    assert (verdict.decision, verdict.metric) == (Decision.ROLLBACK, "agreement")
    assert "'agreement' Failed in 1 intervals, more than failureLimit 0" in verdict.reason


def test_accuracy_drop_with_better_latency_rolls_back_on_agreement() -> None:
    analysis = Analysis(checks=(LATENCY, AGREEMENT))
    verdicts = []
    for index in range(1, 4):
        latency = judge_latency(LATENCY, latencies(index, 150), latencies(index + 100, 60, scale=0.6))
        agreement = judge_agreement(AGREEMENT, 180, 200)
        assert (latency.outcome, agreement.outcome) == (Outcome.SUCCESSFUL, Outcome.FAILED)
        analysis, verdict = step(analysis, [latency, agreement], at_s=15.0 * index)
        verdicts.append(verdict)
    assert [v.decision for v in verdicts[:2]] == [Decision.CONTINUE, Decision.ROLLBACK]
    assert verdicts[1].metric == "agreement"


def test_warm_up_intervals_are_not_counted() -> None:
    analysis = Analysis(checks=(LATENCY,), policy=AnalysisPolicy(warmup_s=30, failure_limit=0))
    for at_s in (15.0, 30.0):
        after, verdict = step(analysis, [outcome(LATENCY, FAIL)], at_s=at_s)
        assert verdict.decision is Decision.CONTINUE and "warming up" in verdict.reason
        assert after == analysis  # nothing recorded, nothing counted
    _, verdict = step(analysis, [outcome(LATENCY, FAIL)], at_s=45.0)
    assert verdict.decision is Decision.ROLLBACK


def test_missing_series_after_warm_up_holds_naming_the_metric() -> None:
    analysis = Analysis(checks=(LATENCY, AGREEMENT), policy=AnalysisPolicy(warmup_s=15))
    analysis, verdict = step(analysis, [outcome(LATENCY, OK)], at_s=15.0)
    assert verdict.decision is Decision.CONTINUE  # still warming up
    analysis, verdict = step(analysis, [outcome(LATENCY, OK)], at_s=30.0)
    assert (verdict.decision, verdict.metric) == (Decision.HOLD, "agreement")
    assert "'agreement' has no series" in verdict.reason
    assert analysis.history[-1].measurements[1].series_missing


def test_an_explicit_no_series_measurement_holds_too() -> None:
    _, verdict = step(Analysis(checks=(LATENCY,)), [no_series(LATENCY)], at_s=15.0)
    assert (verdict.decision, verdict.metric) == (Decision.HOLD, "latency")


def test_a_failure_outranks_a_missing_series() -> None:
    analysis = Analysis(checks=(LATENCY, AGREEMENT), policy=AnalysisPolicy(failure_limit=0))
    _, verdict = step(analysis, [outcome(LATENCY, FAIL)], at_s=15.0)
    assert (verdict.decision, verdict.metric) == (Decision.ROLLBACK, "latency")


def test_a_final_verdict_is_kept() -> None:
    analysis = Analysis(checks=(LATENCY,), policy=AnalysisPolicy(failure_limit=0))
    analysis, first = step(analysis, [outcome(LATENCY, FAIL)], at_s=15.0)
    again, second = step(analysis, [outcome(LATENCY, OK)], at_s=30.0)
    assert second == first and again == analysis


@pytest.mark.parametrize(
    ("measurements", "message"),
    [
        ([outcome(LATENCY, OK), outcome(LATENCY, OK)], "more than once"),
        ([outcome(AGREEMENT, OK)], "not one of the analysis' checks"),
    ],
)
def test_step_refuses_unexpected_measurements(measurements: list[Measurement], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        step(Analysis(checks=(LATENCY,)), measurements, at_s=15.0)


def test_history_is_bounded_to_the_latest_intervals() -> None:
    analysis = Analysis(checks=(LATENCY,), policy=AnalysisPolicy(history_limit=3, inconclusive_limit=100))
    for index in range(1, 11):
        analysis, _ = step(analysis, [outcome(LATENCY, INC)], at_s=15.0 * index)
    assert [record.at_s for record in analysis.history] == [120.0, 135.0, 150.0]
    assert analysis.tally("latency").inconclusive == 10  # counts are kept beyond the history


@pytest.mark.parametrize(
    ("items", "limit", "expected"),
    [((), 3, (0,)), ((1, 2), 3, (1, 2, 0)), ((1, 2, 3), 3, (2, 3, 0)), ((1, 2, 3, 4, 5), 1, (0,))],
)
def test_keep_last(items: tuple[int, ...], limit: int, expected: tuple[int, ...]) -> None:
    assert keep_last(items, 0, limit) == expected


def test_keep_last_refuses_an_empty_history() -> None:
    with pytest.raises(ValueError, match="limit"):
        keep_last((1,), 2, 0)
