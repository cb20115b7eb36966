"""The text-generation part of report.json: quality against the baseline, greedy agreement, task
flips, and the generation benchmark."""

from __future__ import annotations

from pydantic import BaseModel, Field

from optiserve_jobs.generative.bench import GenerationBenchmarkResult
from optiserve_jobs.generative.evaluation import GreedyAgreement
from optiserve_jobs.generative.quality import Flips, LanguageQuality


class GenerationSourceReport(BaseModel):
    gguf: str | None = None
    """The GGUF file the baseline was dequantized from."""
    gguf_tensor_types: list[str] = Field(default_factory=list)
    architecture: str = ""


class GenerationReport(BaseModel):
    source: GenerationSourceReport
    quality: LanguageQuality | None = None
    greedy: GreedyAgreement | None = None
    flips: Flips | None = None
    benchmark: GenerationBenchmarkResult | None = None
