"""The `OptimizedModel` status: phase, conditions, the job's summary and the canary's progress.

One module writes status (the operator's status writer); these models are its schema.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from optiserve.api.base import ApiModel
from optiserve.api.job import ArtifactRef


class Phase(StrEnum):
    PENDING = "Pending"
    OPTIMIZING = "Optimizing"
    VALIDATING = "Validating"
    DEPLOYING = "Deploying"
    CANARY = "Canary"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


def artifact_digest(sha256: str) -> str:
    """An artifact's digest as the API names it (status.canary.candidateArtifact, spec.rollout.promoteArtifact): sha256:<hex>."""
    return f"sha256:{sha256}"


class Condition(ApiModel):
    type: str = Field(description="Ready, Optimized, Validated, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One CamelCase word for machines.")
    message: str = Field(default="", description="A sentence for people.")
    last_transition_time: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="The generation this condition describes.")


class OptimizationSummary(ApiModel):
    speedup: float | None = Field(default=None, description="Baseline p50 / candidate p50 at the first batch size.")
    size_ratio: float | None = Field(default=None, description="Candidate bytes / baseline bytes.")
    accuracy_delta: float | None = Field(default=None, description="Candidate minus baseline label accuracy.")
    fidelity_mean: float | None = Field(default=None, description="Mean fidelity to the unoptimized model.")
    fidelity_min: float | None = Field(default=None, description="Worst single-sample fidelity.")
    current_pass: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "While the optimization Job runs: the pass it is in, as <i>/<n> <type> (e.g. 2/4 distill), read from "
            "the Job's log; gone once the Job ended."
        ),
    )


class CanaryStatus(ApiModel):
    weight: int = Field(default=0, ge=0, le=100, description="Percent of traffic on the candidate now.")
    step: int = Field(default=0, ge=0, description="The current step, counted from 1 (0 before the first).")
    candidate_artifact: str | None = Field(
        default=None,
        description="The candidate's artifact digest, sha256:<hex>: commit it as spec.rollout.promoteArtifact to approve it.",
    )
    state: str | None = Field(default=None, description="Progressing, AwaitingPromotion, Held, Promoted or RolledBack.")
    last_verdict: str | None = Field(
        default=None, description="The latest interval's decision: continue, promote, rollback or hold."
    )
    reason: str | None = Field(default=None, description="Why: names the metric, its values, test and threshold.")
    decision_time_seconds: float | None = Field(
        default=None, description="When the final decision was made, seconds after the first canary traffic."
    )
    measurements: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=50,
        description="The latest interval's measurements: values, sample sizes, statistic, p-value, effect size, threshold.",
    )
    progress: dict[str, Any] | None = Field(
        default=None,
        description="The rollout's state machine (step clock, per-metric tallies, bounded history); the operator reads it back.",
    )


class OptimizedModelStatus(ApiModel):
    phase: Phase = Field(default=Phase.PENDING, description="Where the model is in its pipeline.")
    phase_since: str | None = Field(default=None, description="When the model entered its current phase (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="The spec generation this status describes.")
    pipeline_generation: int | None = Field(
        default=None,
        description="The generation the running pipeline started for (an approval in promoteArtifact does not restart it).",
    )
    spec_digest: str | None = Field(
        default=None, description="Digest of the spec without rollout.promoteArtifact: a change restarts the pipeline."
    )
    message: str | None = Field(default=None, description="What is happening, or why it stopped.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    artifact: ArtifactRef | None = Field(default=None, description="The optimized artifact in use.")
    optimization: OptimizationSummary | None = Field(default=None, description="The optimization job's summary.")
    canary: CanaryStatus | None = Field(default=None, description="Canary progress.")
