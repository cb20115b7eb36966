"""The canary part of the spec: traffic steps, analysis metrics and the promotion policy."""

from __future__ import annotations

import re
from enum import StrEnum
from itertools import pairwise

from pydantic import Field, model_validator

from optiserve.api.base import ApiModel

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


class TrafficProvider(StrEnum):
    REPLICAS = "replicas"
    GATEWAY_API = "gateway-api"
    NGINX = "nginx"


OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a DNS subdomain, as Kubernetes names most objects
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a DNS label


class GatewayRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN, description="The Gateway's name.")
    namespace: str | None = Field(
        default=None, max_length=63, pattern=NAMESPACE_PATTERN, description="The Gateway's namespace (default: the model's)."
    )
    section_name: str | None = Field(
        default=None, max_length=253, description="The Gateway listener to attach to (default: every listener)."
    )


class TrafficSpec(ApiModel):
    provider: TrafficProvider = Field(
        default=TrafficProvider.REPLICAS,
        description="How traffic is split: replica ratio, Gateway API HTTPRoute weights, or nginx (local mode).",
    )
    http_route: str | None = Field(
        default=None,
        max_length=253,
        pattern=OBJECT_NAME_PATTERN,
        description="HTTPRoute whose weights are managed (provider gateway-api, required). Without gateway it must exist "
        "and belongs to the user: only the weights of its backendRefs to the model's baseline and candidate Services change.",
    )
    gateway: GatewayRef | None = Field(
        default=None,
        description="provider gateway-api: the operator creates and owns the HTTPRoute httpRoute, attached to this Gateway.",
    )
    backend_port: int = Field(
        default=8000, ge=1, le=65535, description="Service port the HTTPRoute's backendRefs use (Triton's HTTP port)."
    )

    @model_validator(mode="after")
    def _check_provider_fields(self) -> TrafficSpec:
        if self.provider is TrafficProvider.GATEWAY_API and not self.http_route:
            raise ValueError("httpRoute: required with provider gateway-api")
        if self.provider is not TrafficProvider.GATEWAY_API and self.gateway is not None:
            raise ValueError(f"gateway: only with provider gateway-api, not {self.provider.value}")
        return self


class RolloutStep(ApiModel):
    weight: int = Field(ge=0, le=100, description="Percent of traffic sent to the candidate at this step.")
    pause: str | None = Field(
        default=None, pattern=DURATION_PATTERN, description="How long to hold this step before judging it, e.g. 30s."
    )


class MetricName(StrEnum):
    LATENCY = "latency"
    ERROR_RATE = "errorRate"
    AGREEMENT = "agreement"
    ACCURACY = "accuracy"


class AnalysisMetric(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=63,
        description="latency, errorRate, agreement, accuracy (built-in Triton and comparator queries) or any name with a query.",
    )
    query: str | None = Field(default=None, description="Custom PromQL; {{variant}} is replaced by baseline or candidate.")
    max_relative_increase: float | None = Field(
        default=None, ge=0, description="Largest allowed increase over the baseline running at the same time (0.1 = 10 %)."
    )
    max_absolute_increase: float | None = Field(
        default=None, ge=0, description="errorRate: largest allowed rate above the baseline's (0.01 = one point)."
    )
    max: float | None = Field(default=None, description="Absolute upper bound for the candidate's value.")
    min: float | None = Field(default=None, description="Absolute lower bound for the candidate's value.")

    @model_validator(mode="after")
    def _check_bounds(self) -> AnalysisMetric:
        if self.max_relative_increase is None and self.max_absolute_increase is None and self.max is None and self.min is None:
            raise ValueError("max: a metric needs maxRelativeIncrease, maxAbsoluteIncrease, max or min")
        if self.name == MetricName.ERROR_RATE and self.max_relative_increase is not None:
            raise ValueError(
                "maxRelativeIncrease: not for errorRate (undefined when the baseline has no errors); use maxAbsoluteIncrease"
            )
        if self.name not in {m.value for m in MetricName} and not self.query:
            raise ValueError(f"query: required for the custom metric '{self.name}'")
        return self


class LatencySource(StrEnum):
    TRITON = "triton"
    HISTOGRAM = "histogram"


class PrometheusSpec(ApiModel):
    address: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Prometheus base URL (default: the operator's, the chart's prometheus.address).",
    )


class AnalysisSpec(ApiModel):
    interval: str = Field(default="15s", pattern=DURATION_PATTERN, description="How often each metric is judged.")
    warmup: str = Field(
        default="15s", pattern=DURATION_PATTERN, description="Excluded from judging after the canary gets traffic."
    )
    scrape_interval: str = Field(
        default="5s",
        pattern=DURATION_PATTERN,
        description="How often Prometheus scrapes the served models (the chart's model PodMonitor: 5s): the range "
        "queries' step, and how long the judge waits for the samples a decision needs.",
    )
    latency_source: LatencySource = Field(
        default=LatencySource.TRITON,
        description="triton: each scrape's mean request latency from Triton's counters (queue included). histogram: "
        "each scrape's median request from the served model's optiserve_request_duration_seconds histogram, robust to "
        "a few slow requests but blind to Triton's queue; Triton's means where a variant exports no histogram.",
    )
    prometheus: PrometheusSpec = Field(default_factory=PrometheusSpec, description="Where the metrics are.")
    metrics: list[AnalysisMetric] = Field(
        default_factory=list,
        max_length=16,
        description="What is judged; candidate against the baseline running at the same time.",
    )
    failure_limit: int = Field(default=1, ge=0, description="Roll back when a metric failed in more intervals than this.")
    inconclusive_limit: int = Field(
        default=3, ge=0, description="Hold when a metric was inconclusive in more intervals than this."
    )
    consecutive_error_limit: int = Field(
        default=4, ge=0, description="Roll back when a metric's measurement errored more times in a row than this."
    )


class Promotion(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class RolloutSpec(ApiModel):
    traffic: TrafficSpec = Field(default_factory=TrafficSpec, description="Traffic splitting.")
    steps: list[RolloutStep] = Field(
        default_factory=lambda: [RolloutStep(weight=10), RolloutStep(weight=50), RolloutStep(weight=100)],
        min_length=1,
        max_length=20,
        description="Candidate weights, strictly increasing, ending at 100.",
    )
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="Canary analysis.")
    promotion: Promotion = Field(default=Promotion.AUTO, description="auto: promote after the last step passes.")
    promote_artifact: str | None = Field(
        default=None,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="With promotion manual: promote only the candidate whose artifact digest is this (GitOps approval).",
    )
    progress_deadline_seconds: int = Field(default=1800, ge=60, description="Fail the rollout if it makes no progress.")

    @model_validator(mode="after")
    def _check_steps(self) -> RolloutSpec:
        weights = [s.weight for s in self.steps]
        if any(b <= a for a, b in pairwise(weights)) or weights[-1] != 100:
            raise ValueError("steps: weights must be strictly increasing and end at 100")
        return self


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """'1m30s' -> 90.0 (the format of `interval`, `warmup` and step pauses)."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 15s, 1m30s)")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)
