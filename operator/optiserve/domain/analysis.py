"""Typed configuration, results and state of a canary analysis.

The words follow Argo Rollouts: every interval, each metric is judged into one *measurement*
whose `Outcome` is Successful, Failed, Inconclusive or Error; the `AnalysisPolicy` limits turn
the run of measurements into a `Decision`. The functions that do this live in
`optiserve.domain.judge`; this module holds only the data they exchange.

All models are frozen and refuse NaN and infinity, so a measurement can be written to status or
JSON as it is.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class EvidenceTest(StrEnum):
    """How a window's paired per-scrape log-ratios become a p-value (see optiserve.domain.evidence)."""

    FIXED = "t-test"
    SEQUENTIAL = "msprt"


class DomainModel(BaseModel):
    """Immutable, strict base: unknown fields and non-finite floats are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class MetricKind(StrEnum):
    """What a metric measures, which decides how it is judged.

    latency: latency samples (per request, or one value per scrape); lower is better; candidate
        against the baseline running at the same time.
    error_rate: request counts per variant per interval (failures and total); lower is better.
    agreement / accuracy: the comparator's counts (agreeing and compared samples) for the
        candidate; a fraction in [0, 1], higher is better.
    custom: a value series of the candidate, judged on absolute bounds only.
    """

    LATENCY = "latency"
    ERROR_RATE = "error_rate"
    AGREEMENT = "agreement"
    ACCURACY = "accuracy"
    CUSTOM = "custom"


DEFAULT_MIN_SAMPLES: dict[MetricKind, int] = {
    MetricKind.LATENCY: 10,
    MetricKind.ERROR_RATE: 50,
    MetricKind.AGREEMENT: 50,
    MetricKind.ACCURACY: 50,
    MetricKind.CUSTOM: 1,
}
"""Samples (latency values, requests, compared samples, values) needed before any verdict."""

CRITERIA_BY_KIND: dict[MetricKind, frozenset[str]] = {
    MetricKind.LATENCY: frozenset({"max", "max_relative_increase"}),
    MetricKind.ERROR_RATE: frozenset({"max", "max_absolute_increase"}),
    MetricKind.AGREEMENT: frozenset({"min"}),
    MetricKind.ACCURACY: frozenset({"min"}),
    MetricKind.CUSTOM: frozenset({"max", "min"}),
}
"""The bounds each kind understands; setting any other is an error, never silently ignored."""

FRACTION_KINDS = frozenset({MetricKind.ERROR_RATE, MetricKind.AGREEMENT, MetricKind.ACCURACY})


class MetricCheck(DomainModel):
    """How one metric is judged. At least one bound that applies to its kind must be set."""

    name: str = Field(min_length=1, description="The metric's name in the spec and in the recorded series.")
    kind: MetricKind
    max: float | None = Field(default=None, description="Absolute upper bound on the candidate's value.")
    min: float | None = Field(default=None, description="Absolute lower bound on the candidate's value.")
    max_relative_increase: float | None = Field(
        default=None, ge=0, description="Latency: the candidate's median may exceed the baseline's by at most this fraction."
    )
    max_absolute_increase: float | None = Field(
        default=None, ge=0, le=1, description="Error rate: the candidate's rate may exceed the baseline's by at most this."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level of the one-sided tests.")
    min_samples: int = Field(default=1, ge=1, description="Samples or requests needed before any verdict.")

    @model_validator(mode="before")
    @classmethod
    def _default_min_samples(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("min_samples") is not None:
            return data
        try:
            kind = MetricKind(str(data.get("kind")))
        except (ValueError, TypeError):
            return data  # the field validator reports the bad kind
        return {**data, "min_samples": DEFAULT_MIN_SAMPLES[kind]}

    @model_validator(mode="after")
    def _check_criteria(self) -> MetricCheck:
        allowed = CRITERIA_BY_KIND[self.kind]
        given = {
            name for name in ("max", "min", "max_relative_increase", "max_absolute_increase") if getattr(self, name) is not None
        }
        if unknown := sorted(given - allowed):
            raise ValueError(
                f"{unknown[0]}: does not apply to {self.kind} metric '{self.name}' (use {', '.join(sorted(allowed))})"
            )
        if not given:
            raise ValueError(f"metric '{self.name}' of kind {self.kind} needs one of: {', '.join(sorted(allowed))}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: {self.min} is above max {self.max} for metric '{self.name}'")
        if self.kind in FRACTION_KINDS and any(not 0 <= bound <= 1 for bound in (self.min, self.max) if bound is not None):
            raise ValueError(f"metric '{self.name}' is a fraction: its bounds must lie in [0, 1]")
        return self

    @property
    def compares_to_baseline(self) -> bool:
        """Whether this check needs the baseline's data (a relative tolerance is set)."""
        return self.max_relative_increase is not None or self.max_absolute_increase is not None


class Outcome(StrEnum):
    """Argo Rollouts' measurement outcomes. Only Successful ever counts towards promotion."""

    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class Measurement(DomainModel):
    """One metric judged over one interval, with everything needed to explain the outcome."""

    metric: str
    kind: MetricKind
    outcome: Outcome
    reason: str = Field(description="One sentence a user can read.")
    test: str | None = Field(default=None, description="The statistical test or rule that decided.")
    baseline_value: float | None = Field(default=None, description="Baseline's median latency or rate.")
    candidate_value: float | None = Field(default=None, description="Candidate's median latency, rate, or latest value.")
    baseline_samples: int = Field(default=0, ge=0, description="Baseline latency samples or requests in the window.")
    candidate_samples: int = Field(default=0, ge=0, description="Candidate samples, requests or values in the window.")
    statistic: float | None = Field(default=None, description="Mann-Whitney U, or Fisher's odds ratio.")
    p_value: float | None = Field(default=None, description="p-value of the deciding one-sided test.")
    effect_size: float | None = Field(default=None, description="Relative (latency) or absolute (rates) difference.")
    threshold: float | None = Field(default=None, description="The tolerance or bound the effect was held against.")
    series_missing: bool = Field(default=False, description="Neither variant had a series for this metric.")
    awaiting_data: bool = Field(
        default=False,
        description="Inconclusive only because fewer samples than needed have arrived yet: not counted against "
        "inconclusiveLimit (the judge waits, within dataWaitLimit intervals).",
    )
    samples_needed: int | None = Field(default=None, ge=0, description="With awaiting_data: how many samples are needed.")
    window_start_s: float | None = Field(
        default=None, description="Start of the evidence window that decided (seconds after the first canary traffic)."
    )

    @field_validator("baseline_value", "candidate_value", "statistic", "p_value", "effect_size", "threshold", mode="before")
    @classmethod
    def _finite_or_none(cls, value: Any) -> Any:
        """Infinite odds ratios and ratios over a zero baseline are reported as unknown, not as inf."""
        if isinstance(value, int | float) and not math.isfinite(value):
            return None
        return value


class AnalysisPolicy(DomainModel):
    """Limits that turn measurements into a decision.

    Every limit is counted per metric and is exceeded, as in Argo Rollouts, when the count is
    *greater than* the limit: with ``failure_limit=1`` the second Failed measurement of a metric
    rolls back, with ``failure_limit=0`` the first one does.
    """

    failure_limit: int = Field(default=1, ge=0, description="Roll back when a metric's Failed count exceeds this.")
    inconclusive_limit: int = Field(default=3, ge=0, description="Hold when a metric's Inconclusive count exceeds this.")
    consecutive_error_limit: int = Field(
        default=4, ge=0, description="Roll back when a metric's consecutive Error count exceeds this."
    )
    warmup_s: float = Field(default=0.0, ge=0, description="Seconds after the first canary traffic that are not judged.")
    required_successes: int = Field(
        default=3, ge=1, description="Successful measurements every metric needs before the candidate is promoted."
    )
    history_limit: int = Field(default=10, ge=1, description="Intervals kept in the bounded history.")
    data_wait_limit: int = Field(
        default=8,
        ge=0,
        description="Hold when a metric waited for its samples in more consecutive intervals than this (data absent).",
    )
    evidence_test: EvidenceTest = Field(
        default=EvidenceTest.FIXED, description="How paired latency windows become p-values (see optiserve.domain.evidence)."
    )


class Decision(StrEnum):
    """What the analysis says to do after an interval.

    continue: no decision yet; judge the next interval.
    promote: every metric passed; move on (next step or full promotion).
    rollback: the candidate is worse (failure limit) or cannot be measured (consecutive errors).
    hold: the judge cannot decide (inconclusive limit, or a metric has no series at all); stop
        progressing, promote nothing, and leave the call to a person.
    """

    CONTINUE = "continue"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    HOLD = "hold"

    @property
    def is_final(self) -> bool:
        return self is not Decision.CONTINUE


class Verdict(DomainModel):
    decision: Decision
    reason: str = Field(description="One sentence; names the metric that decided, if one did.")
    metric: str | None = Field(default=None, description="The metric that decided, if one did.")


class MetricTally(DomainModel):
    """Counts of one metric's outcomes since warm-up ended."""

    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    consecutive_waits: int = Field(default=0, description="Intervals in a row that only awaited data.")


class IntervalRecord(DomainModel):
    """One judged interval, as kept in the bounded history."""

    at_s: float = Field(description="End of the interval, seconds after the first canary traffic.")
    decision: Decision
    measurements: tuple[Measurement, ...]


class Analysis(DomainModel):
    """The accumulated state of one canary analysis; advanced only by `judge.step`."""

    checks: tuple[MetricCheck, ...] = Field(min_length=1)
    policy: AnalysisPolicy = Field(default_factory=AnalysisPolicy)
    tallies: dict[str, MetricTally] = Field(default_factory=dict)
    history: tuple[IntervalRecord, ...] = ()
    verdict: Verdict | None = Field(default=None, description="Set once a final decision was made; it never changes after.")

    @model_validator(mode="after")
    def _unique_names(self) -> Analysis:
        names = [check.name for check in self.checks]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"checks: metric '{duplicates[0]}' is listed more than once")
        return self

    def tally(self, metric: str) -> MetricTally:
        return self.tallies.get(metric, MetricTally())
