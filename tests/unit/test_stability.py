"""Paired rounds, disturbed rounds and the speed evidence they give (no timing: rounds are made up)."""

from __future__ import annotations

import pytest

from optiserve_jobs.interference import CpuAllowance, cpu_allowance, run_queue_wait_ns
from optiserve_jobs.stability import Round, SpeedVerdict, clean_pairs, median_interval, speed_evidence


def rounds(*medians_ms: float, wait: float = 0.0) -> list[Round]:
    return [Round((m / 1000.0,) * 3, wait) for m in medians_ms]


def test_a_round_is_disturbed_when_its_threads_waited_beyond_the_limit() -> None:
    assert Round((0.01,), 0.30).disturbed(0.05)
    assert not Round((0.01,), 0.01).disturbed(0.05)
    assert not Round((0.01,), None).disturbed(0.05), "no schedstat: judged on the interval alone"


def test_a_pair_is_clean_only_when_every_variant_was_undisturbed() -> None:
    baseline = [Round((0.02,), w) for w in (0.0, 0.4, 0.0, 0.0)]
    candidate = [Round((0.01,), w) for w in (0.0, 0.0, 0.3, 0.0)]
    assert clean_pairs([baseline, candidate], 0.05) == [0, 3]


def test_the_speedup_is_the_median_of_paired_ratios_on_clean_pairs() -> None:
    baseline = [*rounds(20, 22, 21), Round((0.200,), 0.6)]  # a starved baseline round says nothing
    candidate = [*rounds(10, 10, 10), Round((0.010,), 0.0)]
    speed = speed_evidence(baseline, candidate, 1, needed=3, max_wait_fraction=0.05, confidence=0.9)
    assert speed.ratios == pytest.approx((2.0, 2.2, 2.1))
    assert speed.median_ratio == pytest.approx(2.1) and speed.pairs == 4
    assert speed.verdict(1.5) is SpeedVerdict.ABOVE and speed.verdict(2.5) is SpeedVerdict.BELOW
    assert speed.verdict(2.1) is SpeedVerdict.WITHIN_NOISE


def test_too_few_clean_pairs_are_not_a_verdict() -> None:
    baseline, candidate = rounds(20, 20, 20, wait=0.5), rounds(10, 10, 10, wait=0.5)
    speed = speed_evidence(baseline, candidate, 1, needed=3, max_wait_fraction=0.05, confidence=0.9)
    assert speed.verdict(1.0) is SpeedVerdict.TOO_FEW and speed.median_ratio is None
    assert "busy" in speed.explain(1.0) and "50%" in speed.explain(1.0)


@pytest.mark.parametrize(
    ("n", "indices", "coverage"),
    [(3, (0, 2), 0.75), (5, (0, 4), 0.9375), (9, (1, 7), 0.9609), (15, (3, 11), 0.9648)],
)
def test_the_median_interval_is_the_order_statistics_binomial_coverage_allows(
    n: int, indices: tuple[int, int], coverage: float
) -> None:
    values = tuple(float(v) for v in range(n, 0, -1))
    low, high, covered = median_interval(values, 0.9)
    ordered = sorted(values)
    assert (low, high) == (ordered[indices[0]], ordered[indices[1]])
    assert covered == pytest.approx(coverage, abs=1e-4) and (covered >= 0.9 or n < 5)


def test_a_strict_threshold_on_the_interval_edge_is_not_exceeded() -> None:
    speed = speed_evidence(rounds(10, 12, 11), rounds(10, 10, 10), 1, needed=3, max_wait_fraction=0.05, confidence=0.9)
    assert speed.verdict(1.0) is SpeedVerdict.ABOVE and speed.verdict(1.0, strict=True) is SpeedVerdict.WITHIN_NOISE


@pytest.mark.parametrize(("affinity", "quota", "usable"), [(8, None, 8), (8, 2.0, 2), (8, 1.5, 1), (2, 4.0, 2), (4, 0.5, 1)])
def test_usable_cpus_follow_the_cpuset_and_the_quota(affinity: int, quota: float | None, usable: int) -> None:
    assert CpuAllowance(node_cpus=64, affinity_cpus=affinity, quota_cpus=quota).usable == usable


def test_cgroup_quotas_are_read_from_v2_and_v1(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    v2 = Path(str(tmp_path)) / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cpu_allowance(v2).quota_cpus == pytest.approx(1.5)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_allowance(v2).quota_cpus is None
    v1 = Path(str(tmp_path)) / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_allowance(v1).quota_cpus == pytest.approx(2.0)


def test_this_process_run_queue_wait_is_readable_and_grows_monotonically() -> None:
    first = run_queue_wait_ns()
    if first is None:
        pytest.fail("/proc/self/task/*/schedstat is not readable on this kernel")
    second = run_queue_wait_ns()
    assert second is not None and second >= first
