"""Evidence windows and the paired latency test: per-scrape data, shared load, mid-canary onsets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from optiserve.api.rollout import AnalysisSpec, RolloutSpec
from optiserve.domain.analysis import Analysis, AnalysisPolicy, Decision, EvidenceTest, MetricCheck, MetricKind, Outcome
from optiserve.domain.analysis_spec import analysis_plan, analysis_timing, canary_plan
from optiserve.domain.canary import Window, evidence_windows, start
from optiserve.domain.evidence import (
    MIN_PAIRS,
    PASS_PAIRS,
    Pairs,
    Windows,
    corrected,
    interval_windows,
    judge_latency_windows,
    pair_by_scrape,
    window_test,
)
from optiserve.domain.judge import judge_latency, step
from optiserve.domain.replay import replay

LATENCY = MetricCheck(name="latency", kind=MetricKind.LATENCY, max_relative_increase=0.10)
SCRAPE_S = 5.0


def scrapes(
    seed: int, n: int, *, factor: float = 1.0, onset_s: float = 0.0, sigma: float = 0.15, burst: bool = False
) -> tuple[list[list[float]], list[list[float]]]:
    """One latency value per variant per 5 s scrape, on a load both share (with a 3x burst)."""
    rng = np.random.default_rng(seed)
    times = np.arange(1, n + 1) * SCRAPE_S
    load = np.where((times > 20) & (times <= 40), 3.0, 1.0) if burst else np.ones(n)
    base = 5.0 * load * rng.lognormal(0.0, sigma, n)
    cand = 5.0 * load * rng.lognormal(0.0, sigma, n) * np.where(times > onset_s, factor, 1.0)
    return [[float(t), float(v)] for t, v in zip(times, base, strict=True)], [
        [float(t), float(v)] for t, v in zip(times, cand, strict=True)
    ]


def windows_until(end_s: float, start_s: float = 0.0) -> Windows:
    return interval_windows(end_s, warmup_s=start_s, interval_s=15.0, window_s=end_s, scrape_s=SCRAPE_S)


def test_per_scrape_values_pair_by_timestamp_and_per_request_samples_do_not() -> None:
    baseline, candidate = scrapes(1, 12)
    pairs = pair_by_scrape(baseline, candidate)
    assert pairs is not None and pairs.times.size == 12
    per_request = [[t + 0.001 * i, v] for i, (t, v) in enumerate(candidate)]
    assert pair_by_scrape(baseline, per_request) is None


def test_a_load_burst_both_variants_share_cancels_in_the_pairs() -> None:
    baseline, candidate = scrapes(2, 24, burst=True)
    paired = judge_latency_windows(LATENCY, baseline, candidate, windows_until(120.0))
    assert paired.outcome is Outcome.SUCCESSFUL, paired.reason
    assert paired.test == "paired-t-test"
    # The same values compared as independent samples carry the burst's spread.
    unpaired = judge_latency(LATENCY, [v for _, v in baseline], [v for _, v in candidate])
    assert unpaired.p_value is not None and paired.p_value is not None
    assert paired.p_value > unpaired.p_value


def test_a_regression_that_began_late_fails_on_the_window_since_its_onset() -> None:
    baseline, candidate = scrapes(3, 24, factor=2.0, onset_s=85.0)  # the last 7 of 24 scrapes
    measurement = judge_latency_windows(LATENCY, baseline, candidate, windows_until(120.0))
    assert measurement.outcome is Outcome.FAILED, measurement.reason
    assert measurement.window_start_s is not None and measurement.window_start_s >= 80.0
    assert "alpha corrected" in measurement.reason


def test_a_suffix_that_only_suggests_a_regression_waits_instead_of_passing() -> None:
    # log(candidate / baseline): noise of +-0.2 throughout, the last 4 scrapes 0.25 higher on average
    # (t of about 1.5 against the 10 % tolerance: suggestive, far from significant at its alpha share).
    log_ratios = [0.2, -0.2] * 10 + [0.45, 0.05, 0.45, 0.05]
    times = [SCRAPE_S * (i + 1) for i in range(len(log_ratios))]
    baseline = [[t, 5.0] for t in times]
    candidate = [[t, 5.0 * float(np.exp(d))] for t, d in zip(times, log_ratios, strict=True)]
    measurement = judge_latency_windows(LATENCY, baseline, candidate, windows_until(120.0))
    assert (measurement.outcome, measurement.awaiting_data) == (Outcome.INCONCLUSIVE, True), measurement.reason
    assert "suggests a regression" in measurement.reason and measurement.window_start_s == 100.0
    calm = [[t, 5.0 * float(np.exp(d))] for t, d in zip(times, [0.2, -0.2] * 12, strict=True)]
    assert judge_latency_windows(LATENCY, baseline, calm, windows_until(120.0)).outcome is Outcome.SUCCESSFUL


def test_too_few_pairs_is_awaiting_data_with_the_count_needed() -> None:
    baseline, candidate = scrapes(5, MIN_PAIRS - 1)
    measurement = judge_latency_windows(LATENCY, baseline, candidate, windows_until(15.0))
    assert (measurement.outcome, measurement.awaiting_data, measurement.samples_needed) == (
        Outcome.INCONCLUSIVE,
        True,
        MIN_PAIRS,
    )
    assert f"only {MIN_PAIRS - 1} of the {MIN_PAIRS} paired scrapes" in measurement.reason


def test_a_pass_needs_more_pairs_than_a_failure() -> None:
    healthy = judge_latency_windows(LATENCY, *scrapes(6, PASS_PAIRS - 2), windows_until(40.0))
    assert (healthy.outcome, healthy.awaiting_data, healthy.samples_needed) == (Outcome.INCONCLUSIVE, True, PASS_PAIRS)
    slower = judge_latency_windows(LATENCY, *scrapes(6, PASS_PAIRS - 2, factor=3.0), windows_until(40.0))
    assert slower.outcome is Outcome.FAILED, slower.reason


def test_a_series_that_stopped_is_never_a_pass() -> None:
    baseline, candidate = scrapes(7, 24)
    stopped = [point for point in candidate if point[0] <= 80.0]
    measurement = judge_latency_windows(LATENCY, baseline, stopped, windows_until(120.0))
    assert measurement.outcome is Outcome.INCONCLUSIVE and not measurement.awaiting_data
    assert "no new data" in measurement.reason


def test_alpha_shares_over_windows_sum_to_at_most_alpha() -> None:
    for windows in (1, 2, 5, 9):
        shares = [corrected(LATENCY, windows, index).alpha for index in range(windows)]
        assert sum(shares) <= LATENCY.alpha + 1e-12
        assert shares[0] == pytest.approx(LATENCY.alpha / 2)


def test_the_sequential_p_value_stays_valid_however_often_it_is_looked_at() -> None:
    """Under no shift, the always-valid p-value falls below alpha in at most about alpha of the
    sequences, with a look after every sample from the 10th on (its plug-in variance needs that
    many: from the 4th, 8.5 % were rejected at 5 %); the fixed test, looked at as often, far more."""
    rng = np.random.default_rng(8)
    sequences, looks, alpha = 400, 60, 0.05
    rejected = {EvidenceTest.FIXED: 0, EvidenceTest.SEQUENTIAL: 0}
    for _ in range(sequences):
        d = rng.normal(0.0, 0.2, looks)
        for method in rejected:
            for n in range(10, looks + 1):
                pairs = Pairs(times=np.arange(float(n)), log_ratios=d[:n], baseline=np.ones(n), candidate=np.exp(d[:n]))
                test = window_test(pairs, -1.0, 0.0, method)
                if test is not None and test.p_value < alpha:
                    rejected[method] += 1
                    break
    assert rejected[EvidenceTest.SEQUENTIAL] / sequences <= alpha
    assert rejected[EvidenceTest.FIXED] > 2 * rejected[EvidenceTest.SEQUENTIAL]


def _awaiting(check: MetricCheck) -> list:  # type: ignore[type-arg]
    baseline, candidate = scrapes(9, 2)
    return [judge_latency_windows(check, baseline, candidate, windows_until(15.0))]


def test_awaiting_data_does_not_count_against_the_inconclusive_limit_and_holds_after_the_wait_limit() -> None:
    policy = AnalysisPolicy(inconclusive_limit=0, data_wait_limit=3)
    analysis = Analysis(checks=(LATENCY,), policy=policy)
    decisions = []
    for k in range(1, 6):
        analysis, verdict = step(analysis, _awaiting(LATENCY), at_s=15.0 * k)
        decisions.append(verdict.decision)
        if verdict.decision.is_final:
            break
    assert decisions == [Decision.CONTINUE] * 3 + [Decision.HOLD]
    assert analysis.tally("latency").inconclusive == 0
    assert analysis.verdict is not None and "dataWaitLimit 3" in analysis.verdict.reason


def test_the_wait_limit_follows_the_scrape_interval() -> None:
    fast = analysis_plan(AnalysisSpec.model_validate({"interval": "15s", "scrapeInterval": "5s"}))
    slow = analysis_plan(AnalysisSpec.model_validate({"interval": "15s", "scrapeInterval": "30s"}))
    assert (fast.scrape_s, slow.scrape_s) == (5.0, 30.0)
    assert fast.policy.data_wait_limit < slow.policy.data_wait_limit
    assert slow.policy.data_wait_limit * 15.0 >= PASS_PAIRS * 30.0  # long enough for a pass's scrapes


def test_windows_follow_the_weight_change_of_the_current_step() -> None:
    rollout = RolloutSpec.model_validate({"analysis": {"interval": "15s", "warmup": "15s", "metrics": [LATENCY_SPEC]}})
    plan = canary_plan(rollout)
    began = datetime(2026, 1, 1, tzinfo=UTC)
    progress = start(plan, began).model_copy(update={"step": 1, "step_started_at": began + timedelta(seconds=37)})
    windows = evidence_windows(plan, progress, Window(start_s=15.0, end_s=90.0))
    assert windows.start_s == 15.0 and windows.changes_s == (37.0,)
    assert set(windows.starts) >= {15.0, 75.0, 60.0}


LATENCY_SPEC = {"name": "latency", "maxRelativeIncrease": 0.1}


def _replayed(baseline: list[list[float]], candidate: list[list[float]]) -> dict[str, Any]:
    return replay(
        {"latency": baseline},
        {"latency": candidate},
        [LATENCY],
        interval_s=15.0,
        policy=AnalysisPolicy(warmup_s=15.0),
        window_s=float("inf"),
    )


def test_replayed_per_scrape_recording_rolls_back_a_regression_that_began_mid_canary() -> None:
    report = _replayed(*scrapes(10, 48, factor=2.0, onset_s=60.0, sigma=0.2))
    assert (report["verdict"], report["metric"]) == ("rollback", "latency")
    assert report["decision_time_s"] - 60.0 <= 60.0


def test_replayed_healthy_per_scrape_recording_with_bursts_is_promoted() -> None:
    report = _replayed(*scrapes(11, 48, sigma=0.2, burst=True))
    assert report["verdict"] == "promote", report["reason"]


def _rollout(**analysis: object) -> RolloutSpec:
    return RolloutSpec.model_validate({"analysis": {"interval": "15s", "warmup": "15s", "metrics": [LATENCY_SPEC], **analysis}})


def test_timing_names_when_a_healthy_canary_can_first_be_promoted() -> None:
    timing = analysis_timing(_rollout(scrapeInterval="5s"))
    # ten paired scrapes of 5 s after the 15 s warm-up: the interval ending at 75 s; then two more.
    assert (timing.first_pass_s, timing.earliest_promotion_s, timing.warnings) == (75.0, 105.0, ())


@pytest.mark.parametrize(
    ("analysis", "field"),
    [
        ({"scrapeInterval": "30s"}, "spec.rollout.analysis.scrapeInterval: 30s is longer than interval 15s"),
        ({"scrapeInterval": "15s", "interval": "15s"}, "a latency pass needs 10 paired scrapes, 150s at 15s"),
    ],
)
def test_timing_warns_when_the_scrapes_are_too_sparse_to_decide(analysis: dict[str, str], field: str) -> None:
    warnings = analysis_timing(_rollout(**analysis)).warnings
    assert any(field in warning for warning in warnings), warnings


def test_timing_warns_when_the_progress_deadline_comes_before_any_promotion() -> None:
    rollout = RolloutSpec.model_validate(
        {
            "progressDeadlineSeconds": 60,
            "analysis": {"interval": "15s", "warmup": "15s", "scrapeInterval": "5s", "metrics": [LATENCY_SPEC]},
        }
    )
    warnings = analysis_timing(rollout).warnings
    assert any(w.startswith("spec.rollout.progressDeadlineSeconds: 60s is shorter") for w in warnings), warnings


def test_status_says_how_many_samples_a_waiting_metric_has_and_needs() -> None:
    from optiserve.domain.canary import advance
    from optiserve.status_writer import canary_status

    rollout = RolloutSpec.model_validate({"analysis": {"interval": "15s", "warmup": "0s", "metrics": [LATENCY_SPEC]}})
    plan = canary_plan(rollout)
    began = datetime(2026, 1, 1, tzinfo=UTC)
    progress = start(plan, began)
    waiting = judge_latency_windows(LATENCY, *scrapes(12, 6), windows_until(15.0))
    progress = advance(plan, progress, began + timedelta(seconds=15), window=Window(0.0, 15.0), measurements=[waiting])
    (measurement,) = canary_status(progress)["measurements"]
    assert measurement["outcome"] == "Inconclusive"
    assert (measurement["awaiting_data"], measurement["candidate_samples"], measurement["samples_needed"]) == (True, 6, 10)
    assert progress.tallies["latency"].inconclusive == 0 and progress.tallies["latency"].consecutive_waits == 1
