"""The probe loop: every interval, the next few golden samples go to both variants at once.

Each sample is sent to the baseline and the candidate concurrently with the same inputs, so both
answer under the same load at the same moment. A failure or timeout on either side is counted
against that side (`optiserve_comparator_errors_total`) and the sample is neither compared nor
agreeing: an unreachable candidate must never look like an agreeing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from optiserve.comparator.compare import AgreementRule, OutputMismatchError, SampleComparison, compare_sample
from optiserve.comparator.metrics import BASELINE, CANDIDATE, ComparatorMetrics
from optiserve.golden import GoldenSample

logger = logging.getLogger(__name__)

Infer = Callable[[GoldenSample], Awaitable[npt.NDArray[Any]]]
"""Send one sample to one variant; the output array, or an exception."""


class GoldenCursor:
    """Round-robin over the golden set: each round takes the samples after the last round's."""

    def __init__(self, samples: Sequence[GoldenSample]) -> None:
        if not samples:
            raise ValueError("golden set: no samples")
        self.samples = samples
        self.position = 0

    def take(self, count: int) -> list[GoldenSample]:
        """The next `count` samples (at most the whole set, each once per round)."""
        count = min(count, len(self.samples))
        taken = [self.samples[(self.position + i) % len(self.samples)] for i in range(count)]
        self.position = (self.position + count) % len(self.samples)
        return taken


@dataclass(frozen=True)
class ProbeSettings:
    interval_s: float = 1.0
    sample_size: int = 8
    timeout_s: float = 5.0
    concurrency: int = 4
    """Samples in flight at once (each is two requests, one per variant)."""

    def __post_init__(self) -> None:
        for name in ("interval_s", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("sample_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")


async def _answer(infer: Infer, sample: GoldenSample, timeout_s: float) -> npt.NDArray[Any]:
    return await asyncio.wait_for(infer(sample), timeout_s)


async def probe_sample(
    sample: GoldenSample,
    baseline: Infer,
    candidate: Infer,
    rule: AgreementRule,
    metrics: ComparatorMetrics,
    timeout_s: float,
) -> SampleComparison | None:
    """Both variants at once; the comparison, or None when either side failed (counted as its error)."""
    answers = await asyncio.gather(
        _answer(baseline, sample, timeout_s), _answer(candidate, sample, timeout_s), return_exceptions=True
    )
    outputs: list[npt.NDArray[Any]] = []
    for variant, answer in zip((BASELINE, CANDIDATE), answers, strict=True):
        if isinstance(answer, Exception):
            metrics.record_error(variant)
            logger.warning("%s failed: %s", variant, _describe(answer))
        elif isinstance(answer, BaseException):
            raise answer  # cancellation and interpreter exits are not the model's errors
        else:
            outputs.append(answer)
    if len(outputs) < 2:
        return None
    try:
        comparison = compare_sample(outputs[0], outputs[1], sample.label, rule)
    except OutputMismatchError as e:  # the candidate answered something the baseline's output cannot be compared to
        metrics.record_error(CANDIDATE)
        logger.warning("candidate output differs in shape from the baseline's: %s", e)
        return None
    metrics.record(comparison)
    return comparison


def _describe(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"


class ProbeLoop:
    def __init__(
        self,
        golden: Sequence[GoldenSample],
        baseline: Infer,
        candidate: Infer,
        rule: AgreementRule,
        metrics: ComparatorMetrics,
        settings: ProbeSettings,
    ) -> None:
        self.cursor = GoldenCursor(golden)
        self.baseline = baseline
        self.candidate = candidate
        self.rule = rule
        self.metrics = metrics
        self.settings = settings
        self.rounds = 0

    async def run_round(self) -> list[SampleComparison | None]:
        """One round: `sample_size` samples, at most `concurrency` of them in flight."""
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def one(sample: GoldenSample) -> SampleComparison | None:
            async with limit:
                return await probe_sample(sample, self.baseline, self.candidate, self.rule, self.metrics, self.settings.timeout_s)

        results = await asyncio.gather(*(one(s) for s in self.cursor.take(self.settings.sample_size)))
        self.rounds += 1
        self.metrics.record_round()
        return list(results)

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every `interval_s` (a slow round is followed at once by the next) until `stop` is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await self.run_round()
            remaining = self.settings.interval_s - (loop.time() - started)
            if remaining > 0:
                with contextlib.suppress(TimeoutError):  # the interval passed: next round
                    await asyncio.wait_for(stop.wait(), remaining)
