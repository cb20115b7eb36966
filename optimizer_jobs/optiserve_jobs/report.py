"""The job's full report (report.json); its schema is documented in docs/report-schema.md.

The measurements (`Fidelity`, `Gate`, `BatchTiming`, `VariantBenchmark`) are frozen dataclasses:
the validation and the benchmark return them and the report embeds them as they are, since
pydantic validates and serializes dataclasses like its own models. One type per concept, no copy
between a result and its report entry.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from optiserve.api.job import ArtifactRef
from optiserve_jobs.generative.report import GenerationReport
from optiserve_jobs.interference import cpu_allowance
from optiserve_jobs.stability import Round

REPORT_SCHEMA = "optiserve.io/report/v1"
_INTERESTING_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "avx512_bf16", "fma", "f16c",
)  # fmt: skip


class PassReport(BaseModel):
    name: str
    status: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class Fidelity:
    """How closely the candidate's outputs follow the baseline's (`validate.fidelity`)."""

    metric: str
    """`cosine` (per sample) or `top1_agreement` (classifiers)."""
    mean: float
    min: float
    """The worst single sample."""
    max_abs_error: float


@dataclass(frozen=True)
class Gate:
    """One validation gate and its verdict (`validate.evaluate_gates`)."""

    name: str
    passed: bool
    value: float | None
    threshold: float
    comparison: str  # ">=", ">" or "<="
    inconclusive: bool = False
    """The figures could not carry a verdict (a busy machine): neither passed nor failed."""
    detail: str = ""


class AccuracyReport(BaseModel):
    baseline: float
    candidate: float


@dataclass(frozen=True)
class BatchTiming:
    """One variant's latency at one batch size (`benchmark.run_benchmark`)."""

    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_per_s: float
    samples: int
    rounds: int = 0
    """Rounds timed, disturbed ones included."""
    disturbed_rounds: int = 0
    """Rounds of this variant whose threads waited for a CPU beyond the limit."""
    median_wait_fraction: float | None = None


@dataclass(frozen=True)
class VariantBenchmark:
    """One variant's benchmark (`benchmark.run_benchmark`)."""

    name: str
    runtime: str
    model_bytes: int
    peak_rss_bytes: int
    model_rss_bytes: int
    batches: list[BatchTiming] = field(default_factory=list)
    top_operators: list[dict[str, float | str]] = field(default_factory=list)
    rounds: Annotated[dict[int, list[Round]], Field(exclude=True)] = field(default_factory=dict)
    """Every timed round by batch size, index-aligned across the variants of one run. Not in
    report.json (it has their summary and the speed evidence): empty in a report read back."""

    def timing(self, batch_size: int) -> BatchTiming:
        return next(b for b in self.batches if b.batch_size == batch_size)


class MachineReport(BaseModel):
    cpu: str
    cpu_flags: list[str]
    logical_cpus: int
    """The machine's (the node's) logical CPUs."""
    affinity_cpus: int | None = None
    """CPUs in the job's affinity mask (a container's cpuset)."""
    quota_cpus: float | None = None
    """The job's cgroup CPU quota in CPUs (a container's CPU limit); None: unlimited."""
    usable_cpus: int | None = None
    """What the default thread count follows: the cpuset capped by the quota."""


class SpeedReport(BaseModel):
    """The paired speedup at the first batch size, and whether the rounds could carry a verdict."""

    batch_size: int
    ratios: list[float]
    """Baseline median / candidate median of each undisturbed pair."""
    pairs: int
    needed: int
    interval: list[float] | None
    """[low, high] of the median ratio's distribution-free interval."""
    coverage: float | None
    median_wait_fraction: float | None
    explanation: str = ""


class BenchmarkReport(BaseModel):
    threads: int
    batch_sizes: list[int]
    machine: MachineReport
    variants: list[VariantBenchmark]


class Report(BaseModel):
    schema_version: str = REPORT_SCHEMA
    model: str
    passed: bool
    reason: str = ""
    speedup_p50: float | None = None
    speed: SpeedReport | None = None
    size_ratio: float | None = None
    fidelity: Fidelity | None = None
    accuracy: AccuracyReport | None = None
    gates: list[Gate] = Field(default_factory=list)
    passes: list[PassReport] = Field(default_factory=list)
    benchmark: BenchmarkReport | None = None
    artifact: ArtifactRef | None = None
    validation_samples: int = 0
    seconds: float = 0.0
    generation: GenerationReport | None = None
    """Task text-generation: quality against the baseline, greedy agreement, flips, generation benchmark."""


def machine_report() -> MachineReport:
    cpu, flags = platform.processor() or platform.machine(), set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    allowance = cpu_allowance()
    return MachineReport(
        cpu=cpu,
        cpu_flags=[f for f in _INTERESTING_FLAGS if f in flags],
        logical_cpus=os.cpu_count() or 0,
        affinity_cpus=allowance.affinity_cpus,
        quota_cpus=allowance.quota_cpus,
        usable_cpus=allowance.usable,
    )


def write_json_atomically(path: Path, payload: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(payload)
    partial.replace(path)


def write_report(report: Report, out_dir: Path) -> Path:
    path = out_dir / "report.json"
    write_json_atomically(path, json.dumps(report.model_dump(mode="json"), indent=2))
    return path
