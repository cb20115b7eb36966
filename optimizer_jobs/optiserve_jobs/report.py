"""The job's full report (report.json); its schema is documented in docs/report-schema.md."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from pydantic import BaseModel, Field

from optiserve.api.job import ArtifactRef
from optiserve_jobs.interference import cpu_allowance

REPORT_SCHEMA = "optiserve.io/report/v1"
_INTERESTING_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "avx512_bf16", "fma", "f16c",
)  # fmt: skip


class GateReport(BaseModel):
    name: str
    passed: bool
    value: float | None
    threshold: float
    comparison: str
    inconclusive: bool = False
    detail: str = ""


class PassReport(BaseModel):
    name: str
    status: str
    seconds: float
    detail: str


class FidelityReport(BaseModel):
    metric: str
    mean: float
    min: float
    max_abs_error: float


class AccuracyReport(BaseModel):
    baseline: float
    candidate: float


class BatchReport(BaseModel):
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_per_s: float
    samples: int
    rounds: int = 0
    disturbed_rounds: int = 0
    median_wait_fraction: float | None = None


class VariantReport(BaseModel):
    name: str
    runtime: str
    model_bytes: int
    peak_rss_bytes: int
    model_rss_bytes: int
    batches: list[BatchReport]
    top_operators: list[dict[str, float | str]] = Field(default_factory=list)


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
    variants: list[VariantReport]


class Report(BaseModel):
    schema_version: str = REPORT_SCHEMA
    model: str
    passed: bool
    reason: str = ""
    speedup_p50: float | None = None
    speed: SpeedReport | None = None
    size_ratio: float | None = None
    fidelity: FidelityReport | None = None
    accuracy: AccuracyReport | None = None
    gates: list[GateReport] = Field(default_factory=list)
    passes: list[PassReport] = Field(default_factory=list)
    benchmark: BenchmarkReport | None = None
    artifact: ArtifactRef | None = None
    validation_samples: int = 0
    seconds: float = 0.0


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
