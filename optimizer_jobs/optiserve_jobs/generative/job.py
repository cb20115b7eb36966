"""The optimization job for a text-generation model: source, passes, LLM gates, benchmark.

Its shape is the encoder job's (passes in order, every gate against the source, publish only
when all passed), with what a causal language model needs instead: a GGUF source dequantized
first, a decoder exported with its KV cache, quality judged on next-token distributions over
held-out text, and a benchmark of time to first token and decode speed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optiserve.api.generation import GenerationValidation
from optiserve.api.job import JobRequest
from optiserve.api.spec import ExportPass
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.errors import JobError
from optiserve_jobs.generative.bench import (
    GenerationBenchSettings,
    GenerationVariant,
    decode_speed_evidence,
    run_generation_benchmark,
)
from optiserve_jobs.generative.builder import architecture, check_supported
from optiserve_jobs.generative.decoder import DecoderShape, OrtDecoder
from optiserve_jobs.generative.evaluation import (
    PromptSettings,
    golden_answers,
    language_quality,
    read_tasks,
    read_texts,
    task_flips,
    token_windows,
)
from optiserve_jobs.generative.report import GenerationReport, GenerationSourceReport
from optiserve_jobs.generative.source import GenerativeSource, load_generative_source
from optiserve_jobs.generative.torch_decoder import TorchDecoder
from optiserve_jobs.pass_runner import run_pass
from optiserve_jobs.passes import PassContext
from optiserve_jobs.report import Gate, Report
from optiserve_jobs.source_model import SourceModel
from optiserve_jobs.sources import resolve_uri
from optiserve_jobs.validate import at_least, at_most, speed_gate

Progress = Callable[[str], None]
BASELINE = "baseline"
EXPORTED = "onnx-fp32"
CANDIDATE = "candidate"


@dataclass
class GenerativeRun:
    request: JobRequest
    out_dir: Path
    work_dir: Path
    threads: int
    report: Report
    progress: Progress

    @property
    def base_dir(self) -> Path | None:
        return Path(self.request.base_dir) if self.request.base_dir else None

    @property
    def spec(self) -> GenerationValidation:
        return self.request.validation.generation_or_default

    def resolve(self, uri: str) -> Path:
        return resolve_uri(uri, base_dir=self.base_dir, download_dir=self.work_dir / "downloads")


@dataclass(frozen=True)
class Candidate:
    model: Path
    exported: Path
    """The FP32 export, before any quantization (benchmarked beside the candidate)."""
    source: GenerativeSource
    tokenizer: Any


def run_generative_job(run: GenerativeRun) -> Candidate:
    """The candidate decoder that passed every gate; raises JobError with the reason otherwise."""
    run.progress("loading the source model")
    source = load_generative_source(run.resolve(run.request.model.uri), run.work_dir)
    check_supported(source.hf_dir)  # before any work: a family the export cannot take is refused at once
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.hf_dir), local_files_only=True)
    texts = read_texts(run.resolve(run.request.validation.dataset_uri))
    windows = token_windows(texts, tokenizer, run.spec.context_tokens, run.spec.windows, "validation.datasetUri")
    run.report.validation_samples = len(windows)
    model, exported = _run_passes(run, source, windows)
    candidate = Candidate(model, exported, source, tokenizer)
    generation = GenerationReport(
        source=GenerationSourceReport(
            gguf=source.gguf.name if source.gguf else None,
            gguf_tensor_types=list(source.gguf_types),
            architecture=architecture(source.hf_dir),
        )
    )
    run.report.generation = generation
    gates = _judge_quality(run, candidate, windows, generation)
    gates += _benchmark(run, candidate, generation)
    run.report.gates = gates
    return candidate


def _source_model(run: GenerativeRun, source: GenerativeSource) -> SourceModel:
    return SourceModel(run.request.model, source.hf_dir, [], ["logits"], source.hf_dir, None)


def _run_passes(run: GenerativeRun, source: GenerativeSource, windows: list[np.ndarray]) -> tuple[Path, Path]:
    configs = list(run.request.passes)
    if not any(isinstance(c, ExportPass) for c in configs):
        configs.insert(0, ExportPass(type="export"))
    context = PassContext(
        work_dir=run.work_dir,
        source=_source_model(run, source),
        base_dir=run.base_dir,
        threads=run.threads,
        sample=Dataset({"input_ids": np.stack(windows[:1])}, None),
        load_dataset=_no_tensor_datasets,
        log_dir=run.out_dir / "logs",
        progress=run.progress,
    )
    current, exported = source.hf_dir, None
    for index, config in enumerate(configs):
        outcome = run_pass(config, current, context, index, len(configs), run.report.passes)
        if outcome.output is not None:
            current = outcome.output
            exported = exported or outcome.output
    if exported is None or current.suffix != ".onnx":
        raise JobError(f"{run.request.model.uri}: no decoder to serve (the export pass did not run)")
    return current, exported


def _no_tensor_datasets(uri: str, limit: int) -> Dataset:
    raise JobError(f"{uri}: a text-generation pass reads its calibration text itself, not as a tensor data set")


def _judge_quality(
    run: GenerativeRun, candidate: Candidate, windows: list[np.ndarray], generation: GenerationReport
) -> list[Gate]:
    spec = run.spec
    run.progress(f"validating on {len(windows)} windows of {spec.context_tokens} tokens")
    baseline = TorchDecoder(candidate.source.hf_dir, run.threads)
    decoder = OrtDecoder(candidate.model, run.threads)
    quality = language_quality(baseline, decoder, windows, run.progress)
    generation.quality = quality
    shape = DecoderShape.read(candidate.model.parent)
    settings = PromptSettings(spec.chat_template, spec.max_new_tokens, shape.context_length, shape.eos_token_ids)
    if spec.golden_prompts_uri:
        run.progress("greedy answers to the golden prompts")
        prompts = read_texts(run.resolve(spec.golden_prompts_uri), key="prompt")
        generation.greedy = golden_answers(
            baseline, decoder, candidate.tokenizer, prompts, settings, "validation.generation.goldenPromptsUri"
        )
    gates = [
        at_most("perplexity_ratio", quality.perplexity_ratio, spec.gates.max_perplexity_ratio),
        at_most("kl_mean", quality.mean_kl, spec.gates.max_kl),
        at_least("top1_agreement", quality.top1_agreement, spec.gates.min_top1),
    ]
    if spec.tasks_uri:
        run.progress("answering the task set")
        flips = task_flips(baseline, decoder, candidate.tokenizer, read_tasks(run.resolve(spec.tasks_uri)), settings)
        generation.flips = flips
        gates.append(at_most("flips_right_to_wrong", flips.right_to_wrong, spec.gates.max_flips_to_wrong))
    return gates


def _benchmark(run: GenerativeRun, candidate: Candidate, generation: GenerationReport) -> list[Gate]:
    variants = [GenerationVariant(BASELINE, hf_dir=candidate.source.hf_dir)]
    if candidate.exported != candidate.model:
        variants.append(GenerationVariant(EXPORTED, onnx_path=candidate.exported))
    variants.append(GenerationVariant(CANDIDATE, onnx_path=candidate.model))
    bench = run.request.benchmark
    settings = GenerationBenchSettings(
        rounds=bench.repeats,
        max_rounds=bench.repeats * bench.stability.budget,
        max_wait_fraction=bench.stability.max_wait_fraction,
        confidence=bench.stability.confidence,
    )
    run.progress(f"benchmarking {len(variants)} variants with {run.threads} threads")
    result = run_generation_benchmark(variants, run.threads, settings, run.progress)
    generation.benchmark = result
    run.report.size_ratio = round(result.variant(CANDIDATE).size_bytes / max(1, result.variant(BASELINE).size_bytes), 4)
    speed = decode_speed_evidence(result, BASELINE, CANDIDATE)
    run.report.speedup_p50 = speed.median_ratio
    gate = speed_gate(run.request.validation, speed)
    return [] if gate is None else [gate]
