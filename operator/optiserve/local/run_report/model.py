"""The run report's data: what `optiserve run` measured and decided, as validated pydantic models.

One clock for the whole report: every ``*_s`` time is seconds after ``run.started_at``, except
``run.decision_time_s``, which counts from the first canary traffic (as the judge's replay does),
so the decision happened at ``run.canary_started_s + run.decision_time_s`` on the run clock.
Step indices start at 1, as in the resource's status (``canary.step``; 0 means before the first).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from optiserve.api.status import Phase
from optiserve.domain.analysis import Decision, Measurement
from optiserve_jobs.report import Report as OptimizationReport

RUN_REPORT_SCHEMA: Literal["optiserve.io/run-report/v1"] = "optiserve.io/run-report/v1"


class ReportModel(BaseModel):
    """Immutable, strict base: unknown fields and non-finite floats are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class RunOutcome(StrEnum):
    """How the run ended. `held` is the judge's hold: nothing promoted, the call is left to a person."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    HELD = "held"
    FAILED = "failed"


_FINAL_PHASE: dict[RunOutcome, Phase] = {
    RunOutcome.PROMOTED: Phase.PROMOTED,
    RunOutcome.ROLLED_BACK: Phase.ROLLED_BACK,
    RunOutcome.FAILED: Phase.FAILED,
}
"""The phase a run with this outcome ends in; a held run stays in Canary."""


class StepResult(StrEnum):
    PASSED = "passed"
    ROLLED_BACK = "rolled_back"
    HELD = "held"
    ABORTED = "aborted"
    NOT_REACHED = "not_reached"


class PhaseEntry(ReportModel):
    phase: Phase = Field(description="The operator's phase, e.g. Optimizing or Canary.")
    started_s: float = Field(ge=0, description="When the run entered this phase.")


class RunSummary(ReportModel):
    model: str = Field(min_length=1, description="The model's name (the resource's metadata.name).")
    manifest: str = Field(min_length=1, description="The OptimizedModel manifest the run was started with, as given.")
    inject: str | None = Field(default=None, description="The regression injected into the candidate, e.g. latency=2x.")
    started_at: AwareDatetime = Field(description="When the run started (timezone-aware).")
    duration_s: float = Field(ge=0, description="Wall time of the whole run.")
    outcome: RunOutcome
    reason: str = Field(min_length=1, description="One sentence: why the run ended this way.")
    canary_started_s: float | None = Field(default=None, ge=0, description="When the first canary traffic was sent.")
    decision_time_s: float | None = Field(
        default=None, ge=0, description="Seconds after the first canary traffic when the judge decided; null if it never did."
    )
    phases: tuple[PhaseEntry, ...] = Field(default=(), description="Phases in the order they were entered.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.decision_time_s is not None and self.canary_started_s is None:
            raise ValueError("canary_started_s: is required when decision_time_s is set (the decision time counts from it)")
        starts = [entry.started_s for entry in self.phases]
        if starts != sorted(starts):
            raise ValueError("phases: must be in the order they were entered (started_s never decreases)")
        final = _FINAL_PHASE.get(self.outcome)
        if final is not None and self.phases and self.phases[-1].phase is not final:
            raise ValueError(f"phases: a run with outcome {self.outcome} must end in phase {final}, not {self.phases[-1].phase}")
        return self

    @property
    def decided_at_s(self) -> float | None:
        """The judge's decision on the run clock, or None if it never decided."""
        if self.decision_time_s is None or self.canary_started_s is None:
            return None
        return self.canary_started_s + self.decision_time_s


class StepReport(ReportModel):
    index: int = Field(ge=1, description="1 for the first rollout step, as status.canary.step counts.")
    weight: int = Field(ge=0, le=100, description="Percent of traffic sent to the candidate at this step.")
    started_s: float | None = Field(default=None, ge=0, description="When the weight was set; null if never reached.")
    ended_s: float | None = Field(default=None, ge=0, description="When the step was left or the run ended.")
    result: StepResult

    @model_validator(mode="after")
    def _times(self) -> Self:
        if self.result is StepResult.NOT_REACHED and self.started_s is not None:
            raise ValueError(f"steps[{self.index}].started_s: a step that was not reached has no start")
        if self.result is not StepResult.NOT_REACHED and self.started_s is None:
            raise ValueError(f"steps[{self.index}].started_s: is required for a step with result {self.result}")
        if self.started_s is not None and self.ended_s is not None and self.ended_s < self.started_s:
            raise ValueError(f"steps[{self.index}].ended_s: {self.ended_s} is before started_s {self.started_s}")
        return self


class IntervalReport(ReportModel):
    """One judged interval: the judge's `IntervalRecord` placed on the run clock, with its step."""

    at_s: float = Field(ge=0, description="End of the interval.")
    step: int = Field(ge=1, description="The rollout step being judged.")
    weight: int = Field(ge=0, le=100, description="The candidate's traffic weight during the interval.")
    decision: Decision
    measurements: tuple[Measurement, ...] = Field(default=(), description="One per metric judged in this interval.")


class VariantTraffic(ReportModel):
    sent: int = Field(ge=0, description="Requests the load generator sent to this variant.")
    ok: int = Field(ge=0, description="Requests that were answered successfully.")
    failed: int = Field(ge=0, description="Requests that failed (error status, transport error or timeout).")
    server_requests: int | None = Field(
        default=None, ge=0, description="Requests the server counted (Prometheus); null if it could not be queried."
    )
    server_failures: int | None = Field(default=None, ge=0, description="Failures the server counted (Prometheus).")

    @model_validator(mode="after")
    def _counts(self) -> Self:
        if self.ok + self.failed > self.sent:
            raise ValueError(f"ok + failed: {self.ok} + {self.failed} is more than sent ({self.sent})")
        return self


class TrafficReport(ReportModel):
    baseline: VariantTraffic
    candidate: VariantTraffic
    load_failed_during_transitions: int = Field(
        ge=0, description="Failures the load generator saw during weight changes, promotion and rollback (must be 0)."
    )
    load_failed_unattributed: int = Field(
        default=0, ge=0, description="Failed requests no variant answered (e.g. the proxy found no upstream)."
    )


class LatencyPoint(ReportModel):
    t_s: float = Field(ge=0)
    latency_ms: float = Field(ge=0, description="Client-side median latency of the requests in that second.")


class WeightChange(ReportModel):
    t_s: float = Field(ge=0)
    weight: int = Field(ge=0, le=100, description="The candidate's new traffic weight.")


class LatencySeries(ReportModel):
    baseline: tuple[LatencyPoint, ...] = ()
    candidate: tuple[LatencyPoint, ...] = ()
    weight_changes: tuple[WeightChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.baseline or self.candidate)


class VariantCost(ReportModel):
    runtime: str = Field(description="What the throughput was measured on, e.g. onnxruntime.")
    replicas: int = Field(ge=1)
    throughput_per_replica_s: float = Field(gt=0, description="Requests per second one replica serves.")
    cost_per_hour: float = Field(ge=0, description="replicas x price per replica-hour.")
    cost_per_million: float = Field(ge=0, description="price / (throughput per replica x 3600) x 1e6.")


class CostReport(ReportModel):
    price_per_replica_hour: float = Field(gt=0)
    currency: str = Field(default="USD", min_length=1)
    source: str = Field(description="Which measurement the throughput comes from.")
    baseline: VariantCost
    candidate: VariantCost
    ratio: float = Field(ge=0, description="Candidate's cost per million requests / the baseline's.")


class RunReport(ReportModel):
    """Everything `optiserve run` writes to report.json."""

    schema_version: Literal["optiserve.io/run-report/v1"] = RUN_REPORT_SCHEMA
    run: RunSummary
    steps: tuple[StepReport, ...] = ()
    intervals: tuple[IntervalReport, ...] = ()
    traffic: TrafficReport
    latency_series: LatencySeries = Field(default_factory=LatencySeries)
    optimization: OptimizationReport | None = Field(
        default=None, description="The optimization job's report.json (docs/report-schema.md); null if it never ran."
    )
    cost: CostReport | None = Field(default=None, description="Null when there is no benchmark to derive it from.")

    @model_validator(mode="after")
    def _steps_and_intervals(self) -> Self:
        indices = [step.index for step in self.steps]
        if indices != list(range(1, len(indices) + 1)):
            raise ValueError(f"steps: indices must be 1, 2, ... in order, got {indices}")
        for position, interval in enumerate(self.intervals):
            if interval.step not in indices:
                raise ValueError(f"intervals[{position}].step: {interval.step} is not one of the steps {indices}")
        times = [interval.at_s for interval in self.intervals]
        if times != sorted(times):
            raise ValueError("intervals: must be in time order (at_s never decreases)")
        return self
