"""Replaying recorded series through the judge: when it would have decided, and what."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optiserve.domain.analysis import AnalysisPolicy, MetricCheck, MetricKind
from optiserve.domain.replay import replay

CHECKS = [
    MetricCheck(name="latency", kind=MetricKind.LATENCY, max_relative_increase=0.10),
    MetricCheck(name="errorRate", kind=MetricKind.ERROR_RATE, max_absolute_increase=0.01),
    MetricCheck(name="agreement", kind=MetricKind.AGREEMENT, min=0.99),
]
SCRAPE_S = 5.0

Series = dict[str, list[list[float]]]


def counter(times: np.ndarray, events: np.ndarray, duration: float) -> list[list[float]]:
    """A cumulative counter of ``events`` (at ``times``), scraped every SCRAPE_S seconds from t=0."""
    return [[float(at), float(np.count_nonzero(events & (times <= at)))] for at in np.arange(0.0, duration + 1e-9, SCRAPE_S)]


def variant(
    seed: int,
    *,
    rps: float,
    duration: float = 120.0,
    latency_scale: float = 1.0,
    error_rate: float = 0.005,
    agreement: float | None = None,
) -> Series:
    """A recording: one latency point per request, error and agreement counters per scrape."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, duration, rng.poisson(rps * duration)))
    latency = latency_scale * rng.lognormal(np.log(10.0), 0.4, times.size)
    everything = np.ones(times.size, dtype=bool)
    series: Series = {
        "latency": np.column_stack([times, latency]).tolist(),
        "errorRate.total": counter(times, everything, duration),
        "errorRate.failures": counter(times, rng.random(times.size) < error_rate, duration),
    }
    if agreement is not None:
        series["agreement.compared"] = counter(times, everything, duration)
        series["agreement.agreeing"] = counter(times, rng.random(times.size) < agreement, duration)
    return series


def baseline(seed: int = 1, duration: float = 120.0) -> Series:
    return variant(seed, rps=20.0, duration=duration)


def candidate(seed: int = 2, duration: float = 120.0, **changes: Any) -> Series:
    return variant(seed, rps=6.0, duration=duration, agreement=changes.pop("agreement", 0.999), **changes)


def test_twice_the_latency_from_the_start_rolls_back_within_a_minute() -> None:
    report = replay(baseline(), candidate(latency_scale=2.0), CHECKS, interval_s=15.0)
    assert report["verdict"] == "rollback"
    assert report["metric"] == "latency"
    assert report["decision_time_s"] == 30.0  # two Failed intervals, failureLimit 1
    assert [interval["outcomes"]["latency"] for interval in report["intervals"]] == ["Failed", "Failed"]
    assert {interval["outcomes"]["errorRate"] for interval in report["intervals"]} == {"Successful"}


def test_warm_up_delays_the_first_judged_interval() -> None:
    report = replay(baseline(), candidate(latency_scale=2.0), CHECKS, interval_s=15.0, policy=AnalysisPolicy(warmup_s=15.0))
    assert [interval["t_s"] for interval in report["intervals"]] == [30.0, 45.0]
    assert (report["verdict"], report["decision_time_s"]) == ("rollback", 45.0)
    assert report["decision_time_s"] <= 60.0


def test_a_healthy_candidate_is_promoted() -> None:
    report = replay(baseline(), candidate(), CHECKS, interval_s=15.0)
    assert (report["verdict"], report["metric"]) == ("promote", None)
    assert report["decision_time_s"] <= 60.0
    # A healthy candidate is never Failed; an interval whose point estimate strays past a bound by
    # noise is Inconclusive (more data), which only delays the promotion.
    assert all(outcome != "Failed" for interval in report["intervals"] for outcome in interval["outcomes"].values())


def test_five_points_more_errors_roll_back_on_the_error_rate() -> None:
    report = replay(baseline(), candidate(error_rate=0.055), CHECKS, interval_s=15.0)
    assert (report["verdict"], report["metric"]) == ("rollback", "errorRate")


def test_an_accuracy_drop_with_better_latency_rolls_back_on_agreement() -> None:
    report = replay(baseline(), candidate(latency_scale=0.6, agreement=0.9), CHECKS, interval_s=15.0)
    assert (report["verdict"], report["metric"]) == ("rollback", "agreement")
    assert report["intervals"][0]["outcomes"]["latency"] == "Successful"


def without_points(series: Series) -> Series:
    return {name: [] for name in series}


NO_DATA_CASES = [
    ("nothing recorded", {}, {}),
    ("candidate series without traffic", baseline(), without_points(candidate())),
    ("candidate series absent", baseline(), {}),
    ("latency only, candidate silent", {"latency": baseline()["latency"]}, {"latency": []}),
]


@pytest.mark.parametrize(
    ("recorded_baseline", "recorded_candidate"), [c[1:] for c in NO_DATA_CASES], ids=[c[0] for c in NO_DATA_CASES]
)
def test_no_data_holds_and_never_promotes(recorded_baseline: Series, recorded_candidate: Series) -> None:
    report = replay(recorded_baseline, recorded_candidate, CHECKS, interval_s=15.0)
    assert report["verdict"] == "hold"
    assert all(interval["decision"] != "promote" for interval in report["intervals"])
    assert report["decision_time_s"] is None or report["decision_time_s"] <= 60.0


def test_a_metric_without_any_series_is_named() -> None:
    recorded_candidate = candidate()
    recorded_candidate = {name: points for name, points in recorded_candidate.items() if not name.startswith("agreement")}
    report = replay(baseline(), recorded_candidate, CHECKS, interval_s=15.0)
    assert (report["verdict"], report["decision_time_s"], report["metric"]) == ("hold", 15.0, "agreement")
    assert "'agreement' has no series" in report["reason"]


def test_a_recording_that_ends_undecided_is_a_hold_without_a_decision_time() -> None:
    report = replay(baseline(duration=30.0), candidate(duration=30.0), CHECKS, interval_s=15.0)
    assert (report["verdict"], report["decision_time_s"]) == ("hold", None)
    assert len(report["intervals"]) == 2
    assert "ended after 2 intervals" in report["reason"]


def test_counter_resets_count_from_zero() -> None:
    check = MetricCheck(name="errorRate", kind=MetricKind.ERROR_RATE, max=0.5, min_samples=1)
    recorded = {"errorRate.total": [[0, 0], [5, 100], [10, 30], [15, 80]], "errorRate.failures": [[0, 0], [15, 0]]}
    report = replay({}, recorded, [check], interval_s=15.0)
    assert report["intervals"][0]["measurements"][0]["candidate_samples"] == 100 + 30 + 50


def test_absent_failure_counter_reads_as_no_failures() -> None:
    check = MetricCheck(name="errorRate", kind=MetricKind.ERROR_RATE, max=0.01)
    report = replay({}, {"errorRate.total": [[0, 0], [15, 500]]}, [check], interval_s=15.0)
    measurement = report["intervals"][0]["measurements"][0]
    assert (measurement["outcome"], measurement["candidate_value"], measurement["candidate_samples"]) == ("Successful", 0.0, 500)


def test_null_values_are_errors_not_passes() -> None:
    check = MetricCheck(name="latency", kind=MetricKind.LATENCY, max=100.0, min_samples=1)
    report = replay({}, {"latency": [[1, 5.0], [2, None], [15, 5.0]]}, [check], interval_s=15.0)
    assert report["intervals"][0]["outcomes"] == {"latency": "Error"}


def test_the_report_is_plain_json() -> None:
    report = replay(baseline(), candidate(latency_scale=2.0), CHECKS, interval_s=15.0)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    measurement = report["intervals"][0]["measurements"][0]
    assert {"metric", "outcome", "reason", "p_value", "effect_size", "threshold", "baseline_samples"} <= set(measurement)


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        ({"latency": [[1.0]]}, "series 'latency'"),
        ({"latency": [[1.0, "fast"]]}, "series 'latency'"),
        ({"latency": [[None, 1.0]]}, "timestamp"),
    ],
)
def test_malformed_series_are_refused_naming_them(recorded: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replay({}, recorded, CHECKS, interval_s=15.0)


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        replay({}, {}, CHECKS, interval_s=0.0)


def test_a_a_replays_rarely_roll_back() -> None:
    runs = 200
    verdicts = [
        replay(variant(seed, rps=20.0, duration=75.0), candidate(seed + 10_000, duration=75.0), CHECKS, interval_s=15.0)[
            "verdict"
        ]
        for seed in range(runs)
    ]
    assert verdicts.count("rollback") / runs <= 0.02
    assert verdicts.count("promote") / runs >= 0.9


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_the_order_of_recorded_points_does_not_matter(seed: int) -> None:
    rng = np.random.default_rng(seed)
    recorded_baseline, recorded_candidate = baseline(duration=45.0), candidate(duration=45.0, latency_scale=1.3)
    shuffled = {name: [points[i] for i in rng.permutation(len(points))] for name, points in recorded_candidate.items()}
    original = replay(recorded_baseline, recorded_candidate, CHECKS, interval_s=15.0)
    assert replay(recorded_baseline, shuffled, CHECKS, interval_s=15.0) == original
