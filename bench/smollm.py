"""SmolLM2-135M-Instruct: every weight-only variant against the source, in one run, same threads.

Variants: the source on PyTorch (FP32 weights dequantized from the Q4_1 GGUF: the baseline), the
ONNX FP32 export, INT8 round-to-nearest, INT4 round-to-nearest (alone, and with the LM head kept
at 8 bits), INT4 k-quant with the LM head at 8 bits, and INT4 GPTQ (with --gptq; calibrated on
fortunes never used for validation). Quality of each against the baseline on held-out text (perplexity ratio, mean
KL, teacher-forced top-1), greedy agreement on the golden prompts, task flips, and whether the
default gates pass; then one generation benchmark of all of them (each in its own process,
alternating rounds): time to first token at 32/128/512-token prompts, inter-token latency, decode
tokens/s at batch 1 and 8, peak RSS, size.

    python bench/optimizer.py --model smollm --out bench/results
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from optiserve.api.calibration import Calibration
from optiserve.api.generation import GenerationGates, GenerationValidation, WeightOnlyAlgorithm, WeightOnlyPass
from optiserve.api.spec import ExportPass, ModelFormat, ModelSpec, Task
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.generative.bench import (
    GenerationBenchSettings,
    GenerationVariant,
    decode_speed_evidence,
    render_markdown,
    run_generation_benchmark,
)
from optiserve_jobs.generative.decoder import DecoderShape, OrtDecoder
from optiserve_jobs.generative.evaluation import (
    BaselineAnswers,
    PromptSettings,
    golden_answers,
    language_quality,
    read_tasks,
    read_texts,
    task_flips,
    token_windows,
)
from optiserve_jobs.generative.quality import LanguageQuality
from optiserve_jobs.generative.source import load_generative_source
from optiserve_jobs.generative.torch_decoder import TorchDecoder
from optiserve_jobs.passes import PassContext, build_pass
from optiserve_jobs.source_model import SourceModel

ROOT = Path(__file__).resolve().parents[1]
SMOLLM = ROOT / "examples/smollm"
BASELINE = "pytorch fp32 (source)"
FP32 = "onnx fp32"
INT8 = "int8 rtn"
LM_HEAD = "/lm_head/MatMul"
SPEC = GenerationValidation()


def _weight_only(bits: int, algorithm: WeightOnlyAlgorithm, **extra: Any) -> WeightOnlyPass:
    return WeightOnlyPass(type="weightonly", bits=bits, algorithm=algorithm, **extra)


CALIBRATION = Calibration(dataset_uri=str(SMOLLM / "data/calibration.txt"), samples=32)
QUANTIZED: dict[str, WeightOnlyPass] = {
    INT8: _weight_only(8, WeightOnlyAlgorithm.RTN),
    "int4 rtn": _weight_only(4, WeightOnlyAlgorithm.RTN),
    "int4 rtn, lm_head int8": _weight_only(4, WeightOnlyAlgorithm.RTN, keep_int8=[LM_HEAD]),
    "int4 k-quant, lm_head int8": _weight_only(4, WeightOnlyAlgorithm.KQUANT, keep_int8=[LM_HEAD]),
}
GPTQ = {"int4 gptq": _weight_only(4, WeightOnlyAlgorithm.GPTQ, calibration=CALIBRATION)}
"""Only with --gptq: ONNX Runtime's GPTQ runs the whole model once per calibration sample for every
MatMul it corrects, which takes long on 2 cores."""


class _BaselineLogits:
    """The source's teacher-forced logits, computed once per window for every variant's comparison."""

    def __init__(self, decoder: TorchDecoder) -> None:
        self.decoder = decoder
        self._cache: dict[bytes, np.ndarray] = {}

    def empty_cache(self, batch: int) -> Any:
        return self.decoder.empty_cache(batch)

    def forward(self, input_ids: np.ndarray, cache: Any) -> tuple[np.ndarray, Any]:
        return self.decoder.forward(input_ids, cache)

    def logits(self, token_ids: np.ndarray) -> np.ndarray:
        key = token_ids.tobytes()
        if key not in self._cache:
            self._cache[key] = self.decoder.logits(token_ids)
        return self._cache[key]


def _variants(
    work: Path, threads: int, windows: list[np.ndarray], gptq: bool
) -> tuple[Path, dict[str, Path], dict[str, dict[str, Any]]]:
    source = load_generative_source(SMOLLM / "model", work)
    spec = ModelSpec(uri=str(SMOLLM / "model"), format=ModelFormat.HUGGINGFACE, task=Task.TEXT_GENERATION)
    context = PassContext(
        work_dir=work,
        source=SourceModel(spec, source.hf_dir, [], ["logits"], source.hf_dir, None),
        base_dir=SMOLLM,
        threads=threads,
        sample=Dataset({"input_ids": np.stack(windows[:1])}, None),
        load_dataset=lambda uri, limit: Dataset({}, None),
        progress=lambda message: print(message, file=sys.stderr),
    )
    exported = build_pass(ExportPass(type="export", atol=1e-3, rtol=1e-3)).run(source.hf_dir, context, 0)
    assert exported.output is not None, exported.detail
    paths, passes = {FP32: exported.output}, {FP32: {"detail": exported.detail, "facts": exported.facts}}
    configs = QUANTIZED | (GPTQ if gptq else {})
    for index, (name, config) in enumerate(configs.items(), start=1):
        print(f"smollm: {name}", file=sys.stderr)
        outcome = build_pass(config).run(exported.output, context, index)
        passes[name] = {"status": outcome.status.value, "detail": outcome.detail, "facts": outcome.facts}
        if outcome.output is not None:
            paths[name] = outcome.output
    return source.hf_dir, paths, passes


def _quality(hf_dir: Path, paths: dict[str, Path], windows: list[np.ndarray], threads: int) -> dict[str, dict[str, Any]]:
    baseline = _BaselineLogits(TorchDecoder(hf_dir, threads))
    answers = BaselineAnswers(baseline)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    prompts = read_texts(SMOLLM / "data/golden_prompts.txt")
    tasks = read_tasks(SMOLLM / "data/tasks.jsonl")
    found = {}
    for name, path in paths.items():
        print(f"smollm: quality of {name}", file=sys.stderr)
        decoder = OrtDecoder(path, threads)
        shape = DecoderShape.read(path.parent)
        settings = PromptSettings(True, SPEC.max_new_tokens, shape.context_length, shape.eos_token_ids)
        quality = language_quality(baseline, decoder, windows, lambda _: None)
        greedy = golden_answers(answers, decoder, tokenizer, prompts, settings, "golden prompts")
        flips = task_flips(answers, decoder, tokenizer, tasks, settings)
        found[name] = {
            "quality": asdict(quality),
            "greedy_mean_agreeing_tokens": greedy.mean_agreeing_tokens,
            "greedy_identical": f"{greedy.identical}/{len(greedy.answers)}",
            "flips": asdict(flips),
            "passes_default_gates": _passes(quality, flips.right_to_wrong),
        }
    return found


def _passes(quality: LanguageQuality, flips: int, gates: GenerationGates = SPEC.gates) -> bool:
    """What the default gates decide (the speed gate aside)."""
    within = quality.perplexity_ratio <= gates.max_perplexity_ratio and quality.mean_kl <= gates.max_kl
    return within and quality.top1_agreement >= gates.min_top1 and flips <= gates.max_flips_to_wrong


def run(work: Path, threads: int, rounds: int, gptq: bool = False) -> tuple[dict[str, Any], str]:
    from transformers import AutoTokenizer

    source_texts = read_texts(SMOLLM / "data/validation.txt")
    work.mkdir(parents=True, exist_ok=True)
    hf_probe = load_generative_source(SMOLLM / "model", work / "probe")
    tokenizer = AutoTokenizer.from_pretrained(str(hf_probe.hf_dir), local_files_only=True)
    windows = token_windows(source_texts, tokenizer, SPEC.context_tokens, SPEC.windows, "validation")
    hf_dir, paths, passes = _variants(work / "variants", threads, windows, gptq)
    quality = _quality(hf_dir, paths, windows, threads)
    variants = [GenerationVariant(BASELINE, hf_dir=hf_dir)] + [GenerationVariant(n, onnx_path=p) for n, p in paths.items()]
    settings = GenerationBenchSettings(rounds=rounds, max_rounds=rounds * 2)
    bench = run_generation_benchmark(variants, threads, settings, lambda m: print(m, file=sys.stderr))
    fp32 = bench.variant(FP32)
    ratios = {
        name: {
            "decode_vs_onnx_fp32_batch1": round(bench.variant(name).decode_tokens_per_s[1] / fp32.decode_tokens_per_s[1], 3),
            "decode_vs_onnx_fp32_batch8": round(bench.variant(name).decode_tokens_per_s[8] / fp32.decode_tokens_per_s[8], 3),
            "paired_decode_speedup_vs_onnx_fp32": decode_speed_evidence(bench, FP32, name).median_ratio,
        }
        for name in paths
    }
    result = {"passes": passes, "quality": quality, "benchmark": bench.model_dump(mode="json"), "ratios": ratios}
    return result, render_markdown(bench) + "\n\n" + _quality_table(quality, ratios)


def _quality_table(quality: dict[str, dict[str, Any]], ratios: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| variant | perplexity ratio | mean KL | p99 KL | top-1 | greedy agreeing tokens | identical answers | "
        "right->wrong | wrong->right | default gates | decode vs ONNX FP32 (b1 / b8) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, found in quality.items():
        q, f, r = found["quality"], found["flips"], ratios[name]
        lines.append(
            f"| {name} | {q['perplexity_ratio']:.4f} | {q['mean_kl']:.4f} | {q['p99_kl']:.3f} | {q['top1_agreement']:.3f} | "
            f"{found['greedy_mean_agreeing_tokens']:.1f} | {found['greedy_identical']} | {f['right_to_wrong']} | "
            f"{f['wrong_to_right']} | {'pass' if found['passes_default_gates'] else 'refused'} | "
            f"{r['decode_vs_onnx_fp32_batch1']:.2f}x / {r['decode_vs_onnx_fp32_batch8']:.2f}x |"
        )
    return "\n".join(lines)


def quality_speed_chart(result: dict[str, Any], path: Path) -> None:
    """Every ONNX variant: decode tokens/s at batch 1 against mean KL from the source (log scale;
    right and down is better), the default gates' KL limit as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speeds = {v["name"]: v["decode_tokens_per_s"]["1"] for v in result["benchmark"]["variants"]}
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, found in result["quality"].items():
        kl = max(found["quality"]["mean_kl"], 1e-6)
        marker = "o" if found["passes_default_gates"] else "x"
        axes.scatter(speeds[name], kl, marker=marker)
        axes.annotate(name, (speeds[name], kl), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes.axhline(SPEC.gates.max_kl, linestyle="--", linewidth=1, label=f"default gate: KL <= {SPEC.gates.max_kl:g}")
    axes.set_yscale("log")
    axes.set_xlabel("decode tokens/s at batch 1 (2 threads)")
    axes.set_ylabel("mean KL from the source, nats per token")
    axes.set_title("SmolLM2-135M: weight-only variants, quality against speed (x: refused by the gates)")
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
