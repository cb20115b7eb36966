"""Whether timed rounds can carry a speed verdict, and the paired speedup they give.

The benchmark times variants in alternating rounds (baseline, candidate, baseline, ...). A round
is *disturbed* when the kernel says its threads waited for a CPU for more than a set share of its
wall time (`interference.run_queue_wait_ns`): its timings measure the other work on the machine.
A *pair* is one round of every variant, back to back; it is clean when none of its rounds was
disturbed. The speedup is judged on the clean pairs only, each pair giving one ratio (baseline
median / candidate median) measured under the same conditions; the spread of those ratios is the
measured noise. Too few clean pairs, or ratios spread too wide, and the figures decide nothing:
the speed gate is inconclusive, never a pass or a fail.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


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


@dataclass(frozen=True)
class SpeedEvidence:
    """Baseline vs candidate at one batch size, from the paired rounds."""

    batch_size: int
    ratios: tuple[float, ...]
    """Baseline median / candidate median of each clean pair judged (the latest `needed`)."""
    pairs: int
    """Pairs measured, disturbed ones included."""
    needed: int
    """Clean pairs a verdict needs (the spec's repeats)."""
    spread: float | None
    """(max - min) / median of the ratios: the noise that remained in the clean pairs."""
    max_spread: float
    median_wait_fraction: float | None
    """Median run-queue wait share over every round measured (the machine's business)."""

    @property
    def median_ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def slowest_ratio(self) -> float | None:
        return min(self.ratios) if self.ratios else None

    @property
    def stable(self) -> bool:
        return len(self.ratios) >= self.needed and self.spread is not None and self.spread <= self.max_spread

    def why_unstable(self) -> str:
        """Why these figures cannot carry a verdict ('' when they can)."""
        if self.stable:
            return ""
        wait = f"{self.median_wait_fraction:.0%}" if self.median_wait_fraction is not None else "unknown"
        if len(self.ratios) < self.needed:
            return (
                f"the machine was busy: only {len(self.ratios)} of {self.pairs} paired rounds at batch {self.batch_size} "
                f"were undisturbed ({self.needed} needed); the benchmark's threads waited for a CPU {wait} of the time "
                "(median over rounds)"
            )
        assert self.spread is not None
        return (
            f"the paired speedups at batch {self.batch_size} spread {self.spread:.0%} (limit {self.max_spread:.0%}): "
            f"{min(self.ratios):.2f}x to {max(self.ratios):.2f}x over {len(self.ratios)} undisturbed pairs; run-queue wait {wait}"
        )


def speed_evidence(
    baseline: list[Round], candidate: list[Round], batch_size: int, *, needed: int, max_wait_fraction: float, max_spread: float
) -> SpeedEvidence:
    """The paired speedup of `candidate` over `baseline` (rounds index-aligned), on the latest
    `needed` clean pairs: a machine that calmed down is judged on its calm."""
    clean = clean_pairs([baseline, candidate], max_wait_fraction)[-needed:]
    ratios = tuple(baseline[i].median_s / candidate[i].median_s for i in clean if candidate[i].median_s > 0)
    spread = (max(ratios) - min(ratios)) / statistics.median(ratios) if ratios else None
    waits = [r.wait_fraction for r in (*baseline, *candidate) if r.wait_fraction is not None]
    return SpeedEvidence(
        batch_size=batch_size,
        ratios=ratios,
        pairs=min(len(baseline), len(candidate)),
        needed=needed,
        spread=spread,
        max_spread=max_spread,
        median_wait_fraction=statistics.median(waits) if waits else None,
    )
