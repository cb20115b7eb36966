"""Whether timed rounds can carry a speed verdict, and the paired speedup they give.

The benchmark times variants in alternating rounds (baseline, candidate, baseline, ...). A round
is *disturbed* when the kernel says its threads waited for a CPU for more than a set share of its
wall time (`interference.run_queue_wait_ns`): its timings measure the other work on the machine.
A *pair* is one round of every variant, back to back; it is clean when none of its rounds was
disturbed. Each clean pair gives one ratio (baseline median / candidate median) measured under
the same conditions. The verdict rests on a distribution-free confidence interval of the median
ratio (binomial order statistics: no assumption about the noise's shape): a threshold outside it
is decided, one inside it is within the measured noise, and too few clean pairs decide nothing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Round:
    """One timed round of one variant: its run times and the share of it spent waiting for a CPU."""

    times_s: tuple[float, ...]
    wait_fraction: float | None
    """Run-queue wait of the variant's threads / (wall time x threads); None where not exposed."""

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def disturbed(self, max_wait_fraction: float) -> bool:
        return self.wait_fraction is not None and self.wait_fraction > max_wait_fraction


def clean_pairs(rounds_by_variant: list[list[Round]], max_wait_fraction: float) -> list[int]:
    """Indices of the pairs in which no variant's round was disturbed."""
    pairs = min(len(rounds) for rounds in rounds_by_variant)
    return [i for i in range(pairs) if not any(rounds[i].disturbed(max_wait_fraction) for rounds in rounds_by_variant)]


def median_interval(values: tuple[float, ...], confidence: float) -> tuple[float, float, float]:
    """(low, high, coverage): the narrowest order-statistic interval around the median whose
    coverage is at least `confidence`, or the widest one (min, max) when too few values allow it."""
    ordered, n = sorted(values), len(values)
    low, high, coverage = ordered[0], ordered[-1], 1.0 - 2.0 / 2**n
    below = 0.0
    for k in range(n // 2):
        below += math.comb(n, k) / 2**n  # P(Binomial(n, 1/2) <= k)
        covered = 1.0 - 2.0 * below
        if covered < confidence:
            break
        low, high, coverage = ordered[k], ordered[n - 1 - k], covered
    return low, high, coverage


class SpeedVerdict(StrEnum):
    ABOVE = "above"
    """The interval lies above the threshold."""
    BELOW = "below"
    """The interval lies below it (or on it, for a strict threshold)."""
    WITHIN_NOISE = "within-noise"
    """The threshold lies inside the interval."""
    TOO_FEW = "too-few"
    """Too few undisturbed pairs: a busy machine."""


@dataclass(frozen=True)
class SpeedEvidence:
    """Baseline vs candidate at one batch size, from the paired rounds."""

    batch_size: int
    ratios: tuple[float, ...]
    """Baseline median / candidate median of every clean pair, in the order measured."""
    pairs: int
    """Pairs measured, disturbed ones included."""
    needed: int
    """Clean pairs a verdict needs at least (the spec's repeats)."""
    confidence: float
    median_wait_fraction: float | None
    """Median run-queue wait share over every round measured (the machine's business)."""

    @property
    def median_ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def enough(self) -> bool:
        return len(self.ratios) >= max(1, self.needed)

    @property
    def interval(self) -> tuple[float, float, float] | None:
        """(low, high, coverage) of the median ratio; None without a clean pair."""
        return median_interval(self.ratios, self.confidence) if self.ratios else None

    def verdict(self, threshold: float, *, strict: bool = False) -> SpeedVerdict:
        """Where `threshold` lies against the interval (strict: the speedup must exceed it)."""
        interval = self.interval
        if not self.enough or interval is None:
            return SpeedVerdict.TOO_FEW
        low, high, _ = interval
        if low > threshold or (low == threshold and not strict):
            return SpeedVerdict.ABOVE
        if high < threshold or (high == threshold and strict):
            return SpeedVerdict.BELOW
        return SpeedVerdict.WITHIN_NOISE

    def explain(self, threshold: float) -> str:
        """The figures behind the verdict at `threshold`, in words."""
        wait = f"{self.median_wait_fraction:.0%}" if self.median_wait_fraction is not None else "unknown"
        if not self.enough or self.interval is None:
            return (
                f"the machine was busy: only {len(self.ratios)} of {self.pairs} paired rounds at batch {self.batch_size} "
                f"were undisturbed ({self.needed} needed); the benchmark's threads waited for a CPU {wait} of the time "
                "(median over rounds)"
            )
        low, high, coverage = self.interval
        return (
            f"the paired speedup at batch {self.batch_size} is {self.median_ratio:.2f}x, its {coverage:.0%} interval "
            f"{low:.2f}x to {high:.2f}x over {len(self.ratios)} undisturbed pairs (threshold {threshold:g}x); "
            f"run-queue wait {wait}"
        )


def speed_evidence(
    baseline: list[Round], candidate: list[Round], batch_size: int, *, needed: int, max_wait_fraction: float, confidence: float
) -> SpeedEvidence:
    """The paired speedup of `candidate` over `baseline` (rounds index-aligned), on the clean pairs."""
    clean = clean_pairs([baseline, candidate], max_wait_fraction)
    ratios = tuple(baseline[i].median_s / candidate[i].median_s for i in clean if candidate[i].median_s > 0)
    waits = [r.wait_fraction for r in (*baseline, *candidate) if r.wait_fraction is not None]
    return SpeedEvidence(
        batch_size=batch_size,
        ratios=ratios,
        pairs=min(len(baseline), len(candidate)),
        needed=needed,
        confidence=confidence,
        median_wait_fraction=statistics.median(waits) if waits else None,
    )
