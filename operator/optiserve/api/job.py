"""The versioned contract between the operator and the optimization Job.

The operator builds a `JobRequest` from an `OptimizedModel` spec; the Job answers with a
`JobResult` small enough for a Kubernetes termination message (4 KiB), and writes its full
report next to the artifact.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from optiserve.api.base import ApiModel
from optiserve.api.spec import (
    BenchmarkSpec,
    ModelSpec,
    OptimizedModel,
    Pass,
    TritonSpec,
    ValidationSpec,
)

JOB_API_VERSION: Literal["optiserve.io/job/v1"] = "optiserve.io/job/v1"
TERMINATION_MESSAGE_LIMIT = 4096

# While the Job runs, its log is the one channel to the operator (the pod has no API credentials):
# when a pass starts, the job writes the line `pass <i>/<n>: <type>` (its progress log, after the
# logging prefix), and the operator reads the running pass from the tail of the pod's log.
_PASS_LINE = re.compile(r"(?:^|\s)pass (?P<index>\d{1,3})/(?P<total>\d{1,3}): (?P<type>[a-z][a-z0-9_-]{0,31})\s*$")


@dataclass(frozen=True)
class RunningPass:
    index: int
    """Counted from 1."""
    total: int
    type: str

    @property
    def label(self) -> str:
        """As status.optimization.currentPass shows it: `2/4 distill`."""
        return f"{self.index}/{self.total} {self.type}"


def pass_line(index: int, total: int, pass_type: str) -> str:
    """The progress line a job writes when its pass `index` (from 1) of `total` starts."""
    return f"pass {index}/{total}: {pass_type}"


def running_pass(log: str) -> RunningPass | None:
    """The last pass a job's log says started; None for a log without a pass line (not started, or
    still loading the model). Anything else in the log (training progress, warnings) is ignored."""
    for line in reversed(log.splitlines()):
        found = _PASS_LINE.search(line)
        if found is None:
            continue
        index, total = int(found["index"]), int(found["total"])
        if 1 <= index <= total:
            return RunningPass(index, total, found["type"])
    return None


class JobRequest(ApiModel):
    api_version: Literal["optiserve.io/job/v1"] = Field(default=JOB_API_VERSION, description="Contract version.")
    name: str = Field(description="Model name; the Triton model is published under it.")
    model: ModelSpec = Field(description="The source model.")
    passes: list[Pass] = Field(default_factory=list, description="Optimization passes in order.")
    validation: ValidationSpec = Field(description="Validation data and gates.")
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec, description="Benchmark settings.")
    triton: TritonSpec = Field(default_factory=TritonSpec, description="Triton serving settings.")
    base_dir: str | None = Field(default=None, description="Directory that relative paths are resolved against.")


# A published artifact: what the job returns, its report records, and `status.artifact` shows.
# (A comment, not a docstring: pydantic would carry a docstring into the generated CRD.)
class ArtifactRef(ApiModel):
    uri: str = Field(description="Where the published Triton model repository is.")
    sha256: str = Field(description="sha256 of the repository's manifest (which lists every file's sha256).")
    size_bytes: int = Field(description="Size of the optimized model file.")


class JobResult(ApiModel):
    api_version: Literal["optiserve.io/job/v1"] = Field(default=JOB_API_VERSION, description="Contract version.")
    passed: bool = Field(description="True when every pass and gate succeeded and the artifact was published.")
    reason: str = Field(default="", description="Why the job failed (empty on success).")
    artifact: ArtifactRef | None = Field(default=None, description="The published artifact, when passed.")
    speedup_p50: float | None = Field(default=None, description="Baseline p50 / candidate p50 at the first batch size.")
    size_ratio: float | None = Field(default=None, description="Candidate bytes / baseline bytes.")
    fidelity_mean: float | None = Field(default=None, description="Mean fidelity to the baseline outputs.")
    fidelity_min: float | None = Field(default=None, description="Worst single-sample fidelity.")
    accuracy_delta: float | None = Field(default=None, description="Candidate minus baseline label accuracy.")
    failed_gates: list[str] = Field(default_factory=list, description="Names of the gates that failed.")
    report_uri: str | None = Field(default=None, description="Where the full report.json is.")

    def to_termination_message(self) -> str:
        """Serialize within the termination-message limit, shortening the reason if needed."""
        message = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(message.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return message
        overflow = len(message.encode()) - TERMINATION_MESSAGE_LIMIT + 3
        shortened = self.model_copy(update={"reason": self.reason[: max(0, len(self.reason) - overflow)] + "..."})
        return shortened.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def from_termination_message(cls, message: str) -> JobResult:
        return cls.model_validate(json.loads(message))


def job_request_from_manifest(manifest: OptimizedModel, base_dir: str | None = None) -> JobRequest:
    spec = manifest.spec
    return JobRequest(
        name=manifest.metadata.name,
        model=spec.model,
        passes=list(spec.optimization.passes),
        validation=spec.validation,
        benchmark=spec.benchmark,
        triton=spec.serving.triton,
        base_dir=base_dir,
    )
