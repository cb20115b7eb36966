"""Benchmark the optimization job's variants side by side, in one run, on the same threads.

MiniLM (batch 1 and 8, sequence 128): PyTorch FP32 eager, ONNX Runtime FP32, fused FP32, plain
dynamic INT8 (per-channel), OptiServe's pipeline (smoothing + dynamic INT8), and the compressed
variants: pruned (heads and FFN neurons) + recovery distillation + the same INT8, and a layer-dropped
student (3 of 6 layers) distilled + INT8; each in its own worker process, alternating rounds; plus
fidelity of each to the PyTorch embeddings on the validation sentences (never used for calibration
or training) and the Spearman correlation of their pairwise similarities with the teacher's.
Digits: PyTorch against static INT8, and channel-pruned + distilled + static INT8, with label
accuracy. `--training-seconds` sets each distillation's budget. Prints JSON and a markdown table;
`--out DIR` also writes results.json/results.md.

`--busy N` times every variant twice in the same run: as the machine is, then beside N processes
that only spin (a shared machine). Each row then says under which load it was measured, the paired
speedup over PyTorch on the rounds the kernel saw undisturbed, and where 1x lies against its
interval (`vs_1x`: above, below, within-noise, or too-few undisturbed pairs for any verdict).

    python bench/optimizer.py --out bench/results
    python bench/optimizer.py --busy 2
    python bench/optimizer.py --model smollm --out bench/results   (the language model: bench/smollm.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from optiserve.api.compression import DistillPass, PrunePass
from optiserve.api.spec import BenchmarkSpec, ExportPass, GraphPass, ModelSpec, QuantizePass, Task
from optiserve.local.processes import busy_processes
from optiserve_jobs.benchmark import evidence, run_benchmark
from optiserve_jobs.datasets import Dataset, load_dataset
from optiserve_jobs.passes import PassContext, build_pass
from optiserve_jobs.report import VariantBenchmark, machine_report
from optiserve_jobs.runners import OrtRunner, VariantSpec
from optiserve_jobs.source_model import SourceModel, load_source_model
from optiserve_jobs.validate import accuracy, fidelity, run_all

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT / "examples/minilm"
DIGITS = ROOT / "examples/digits"
OPTISERVE = "optiserve int8 (smoothed)"  # the pipeline of examples/minilm/optimizedmodel.yaml
PRUNED = "pruned + distilled + int8"
STUDENT = "3-layer student + int8"
DIGITS_PRUNED = "pruned + distilled + static int8"


def _context(work: Path, source: SourceModel, validation: Dataset, threads: int) -> PassContext:
    def load(uri: str, limit: int) -> Dataset:
        return load_dataset(Path(uri), source, limit=limit)

    return PassContext(work, source, source.path.parent, threads, validation.take(8), load)


PASS_LOG: list[dict[str, Any]] = []
"""Every pass the run made: variant, pass, detail and facts (training steps and seconds among them)."""


def _chain(context: PassContext, start: Path, configs: list[Any]) -> Path:
    current = start
    for index, config in enumerate(configs):
        outcome = build_pass(config).run(current, context, index + 10 * len(context.work_dir.name))
        if outcome.output is None:
            raise RuntimeError(f"{config.type}: {outcome.status.value}: {outcome.detail}")
        if config.type in ("prune", "distill"):
            print(f"  {context.work_dir.name}: {config.type}: {outcome.detail}", file=sys.stderr, flush=True)
        PASS_LOG.append({"variant": context.work_dir.name, "pass": config.type, "detail": outcome.detail, **outcome.facts})
        current = outcome.output
    return current


def _compressed(calibration: dict[str, Any], seconds: int, quantize: QuantizePass) -> dict[str, list[Any]]:
    train = {"datasetUri": str(MINILM / "data/train.txt"), "maxTrainingSeconds": seconds, "epochs": 3}
    prune = {"type": "prune", "heads": 8, "ffnRatio": 0.5, "datasetUri": calibration["datasetUri"]}
    return {
        PRUNED: [
            PrunePass.model_validate(prune),
            DistillPass.model_validate({"type": "distill", **train}),
            ExportPass(type="export"),
            quantize,
        ],
        STUDENT: [
            DistillPass.model_validate({"type": "distill", "layers": 3, "learningRate": 2e-4, **train}),
            ExportPass(type="export"),
            quantize,
        ],
    }


def _minilm_variants(work: Path, threads: int, seconds: int) -> tuple[SourceModel, Dataset, dict[str, Path]]:
    spec = ModelSpec.model_validate({"uri": str(MINILM / "model"), "format": "huggingface", "task": "embedding"})
    source = load_source_model(spec, base_dir=None, download_dir=work)
    validation = load_dataset(MINILM / "data/validation.txt", source, limit=200)
    calibration = {"datasetUri": str(MINILM / "data/calibration.txt"), "samples": 200}
    variants: dict[str, Path] = {}
    smoothed = QuantizePass.model_validate({"type": "quantize", "smoothing": {"alpha": 0.75}, "calibration": calibration})
    pipelines: dict[str, list[Any]] = {
        "onnxruntime fp32": [ExportPass(type="export")],
        "onnxruntime fp32 fused": [ExportPass(type="export"), GraphPass(type="graph")],
        "plain dynamic int8": [ExportPass(type="export"), QuantizePass(type="quantize")],
        "fused int8 (smoothed)": [
            ExportPass(type="export"),
            GraphPass(type="graph"),
            QuantizePass.model_validate({"type": "quantize", "smoothing": {"alpha": 0.75}, "calibration": calibration}),
        ],
        "int8 smoothed everywhere": [
            ExportPass(type="export"),
            QuantizePass.model_validate(
                {"type": "quantize", "smoothing": {"alpha": 0.75, "minOutlierRatio": 0}, "calibration": calibration}
            ),
        ],
        OPTISERVE: [ExportPass(type="export"), smoothed],
    }
    pipelines |= _compressed(calibration, seconds, smoothed)
    for name, configs in pipelines.items():
        variant_dir = work / "".join(c if c.isalnum() else "_" for c in name)
        variant_dir.mkdir()
        variants[name] = _chain(_context(variant_dir, source, validation, threads), source.path, configs)
    return source, validation, variants


def _digits_variants(work: Path, threads: int) -> tuple[SourceModel, Dataset, dict[str, Path]]:
    spec = ModelSpec.model_validate(
        {
            "uri": str(DIGITS / "artifacts/digits_cnn.pt"),
            "format": "pytorch",
            "entrypoint": str(DIGITS / "model.py") + ":build",
            "task": "classification",
            "inputs": [{"name": "image", "shape": [1, 8, 8]}],
            "outputs": ["logits"],
        }
    )
    source = load_source_model(spec, base_dir=None, download_dir=work)
    validation = load_dataset(DIGITS / "artifacts/validation.npz", source, limit=10_000)
    static = QuantizePass.model_validate(
        {"type": "quantize", "mode": "static", "calibration": {"datasetUri": str(DIGITS / "artifacts/calibration.npz")}}
    )
    context = _context(work, source, validation, threads)
    variants = {"static int8": _chain(context, source.path, [ExportPass(type="export"), GraphPass(type="graph"), static])}
    pruned_dir = work / "pruned"
    pruned_dir.mkdir()
    compress = [
        PrunePass.model_validate({"type": "prune", "channelRatio": 0.5, "datasetUri": str(DIGITS / "artifacts/calibration.npz")}),
        DistillPass.model_validate(
            {
                "type": "distill",
                "datasetUri": str(DIGITS / "artifacts/train.npz"),
                "maxTrainingSeconds": 120,
                "epochs": 100,
                "batchSize": 64,
                "learningRate": 0.002,
                "temperature": 4,
                "labelWeight": 0.2,
            }
        ),
    ]
    chain = [*compress, ExportPass(type="export"), GraphPass(type="graph"), static]
    variants[DIGITS_PRUNED] = _chain(_context(pruned_dir, source, validation, threads), source.path, chain)
    return source, validation, variants


def similarity_spearman(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Spearman correlation of the pairwise cosine similarities of the validation sentences: how well a
    variant keeps the teacher's ranking of which sentences are alike (a retrieval-quality proxy)."""
    from scipy.stats import spearmanr

    def similarities(embeddings: np.ndarray) -> np.ndarray:
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        pairs: np.ndarray = (unit @ unit.T)[np.triu_indices(len(unit), 1)]
        return pairs

    return float(spearmanr(similarities(reference), similarities(outputs)).statistic)


def _quality(source: SourceModel, validation: Dataset, variants: dict[str, Path], threads: int) -> dict[str, dict[str, float]]:
    reference = run_all(VariantSpec("pytorch", torch_source=source).build(threads), validation)
    quality: dict[str, dict[str, float]] = {}
    for name, path in {"pytorch fp32 eager": None, **variants}.items():
        outputs = reference if path is None else run_all(OrtRunner(path, threads=threads), validation)
        found = fidelity(source.spec.task, reference, outputs)
        row = {"fidelity_mean": found.mean, "fidelity_min": found.min, "max_abs_error": found.max_abs_error}
        if source.spec.task is Task.EMBEDDING:
            row["spearman"] = similarity_spearman(reference, outputs)
        if validation.labels is not None:
            row["accuracy"] = accuracy(outputs, validation.labels)
        quality[name] = row
    return quality


def _bench(source: SourceModel, validation: Dataset, variants: dict[str, Path], spec: BenchmarkSpec) -> list[VariantBenchmark]:
    specs = [(VariantSpec("pytorch fp32 eager", torch_source=source), "pytorch", source.path)]
    specs += [(VariantSpec(name, onnx_path=path), "onnxruntime", path) for name, path in variants.items()]
    return run_benchmark(
        specs,
        {b: validation.repeat_to(b) for b in spec.batch_sizes},
        spec,
        lambda message: print(f"  {message}", file=sys.stderr, flush=True),
    )


def _rows(
    model: str, results: list[VariantBenchmark], quality: dict[str, dict[str, float]], spec: BenchmarkSpec, busy: int
) -> list[dict[str, Any]]:
    torch_result = results[0]
    rows = []
    for result in results:
        for timing in result.batches:
            torch_timing = torch_result.timing(timing.batch_size)
            paired = evidence(torch_result, result, timing.batch_size, spec) if result is not torch_result else None
            rows.append(
                {
                    "model": model,
                    "busy": busy,
                    "variant": result.name,
                    "batch": timing.batch_size,
                    "p50_ms": round(timing.p50_ms, 3),
                    "p95_ms": round(timing.p95_ms, 3),
                    "p99_ms": round(timing.p99_ms, 3),
                    "throughput_per_s": round(timing.throughput_per_s, 1),
                    "speedup_vs_pytorch": round(torch_timing.p50_ms / timing.p50_ms, 3),
                    "paired_speedup": _rounded(paired.median_ratio if paired else None),
                    "vs_1x": paired.verdict(1.0, strict=True).value if paired else "",
                    "disturbed_rounds": f"{timing.disturbed_rounds}/{timing.rounds}",
                    "wait": _rounded(timing.median_wait_fraction),
                    "model_mb": round(result.model_bytes / 1e6, 2),
                    "peak_rss_mb": round(result.peak_rss_bytes / 1e6, 1),
                    **{k: round(v, 5) for k, v in quality[result.name].items()},
                }
            )
    return rows


def _rounded(value: float | None) -> float | str:
    return "" if value is None else round(value, 3)


def _markdown(rows: list[dict[str, Any]]) -> str:
    columns = [
        "model",
        "busy",
        "variant",
        "batch",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "throughput_per_s",
        "speedup_vs_pytorch",
        "paired_speedup",
        "vs_1x",
        "disturbed_rounds",
        "wait",
        "model_mb",
        "peak_rss_mb",
        "fidelity_mean",
        "fidelity_min",
        "spearman",
        "accuracy",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def pareto_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """MiniLM's variants at batch 1: p50 latency against mean cosine to PyTorch FP32 (up and left is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["model"] == "minilm" and r["batch"] == 1 and r["busy"] == 0]
    figure, axes = plt.subplots(figsize=(8, 5))
    for row in points:
        axes.scatter(row["p50_ms"], row["fidelity_mean"])
        axes.annotate(
            row["variant"], (row["p50_ms"], row["fidelity_mean"]), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
    axes.set_xlabel("p50 latency at batch 1, ms (2 threads)")
    axes.set_ylabel("mean cosine to PyTorch FP32 (validation sentences)")
    axes.set_title("MiniLM: speed against fidelity, one run")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--busy", type=int, default=0, help="also time everything beside N spinning processes")
    parser.add_argument("--training-seconds", type=int, default=420, help="budget of each MiniLM distillation")
    parser.add_argument(
        "--model",
        choices=["encoders", "smollm"],
        default="encoders",
        help="encoders: MiniLM and digits (default); smollm: the language model's weight-only variants",
    )
    parser.add_argument("--rounds", type=int, default=3, help="smollm: clean paired benchmark rounds")
    parser.add_argument("--gptq", action="store_true", help="smollm: also INT4 GPTQ (slow on a few cores)")
    args = parser.parse_args()
    if args.model == "smollm":
        _smollm(args)
        return
    loads = [0, args.busy] if args.busy else [0]
    spec = BenchmarkSpec(batch_sizes=[1, 8], threads=args.threads, warmup=10, iterations=args.iterations, repeats=args.repeats)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="optiserve-bench-") as tmp:
        print("MiniLM: building variants", file=sys.stderr)
        source, validation, variants = _minilm_variants(Path(tmp), args.threads, args.training_seconds)
        quality = _quality(source, validation, variants, args.threads)
        for busy in loads:
            with busy_processes(busy):
                rows += _rows("minilm", _bench(source, validation, variants, spec), quality, spec, busy)
        print("digits: building variants", file=sys.stderr)
        digits_dir = Path(tmp) / "digits"
        digits_dir.mkdir()
        source, validation, variants = _digits_variants(digits_dir, args.threads)
        digits_spec = spec.model_copy(update={"batch_sizes": [1, 32]})
        quality = _quality(source, validation, variants, args.threads)
        for busy in loads:
            with busy_processes(busy):
                rows += _rows("digits", _bench(source, validation, variants, digits_spec), quality, digits_spec, busy)
    minilm = {r["variant"]: r for r in rows if r["model"] == "minilm" and r["batch"] == 1 and r["busy"] == 0}
    ratios = {
        "optiserve_vs_plain_dynamic_int8_p50": round(minilm[OPTISERVE]["p50_ms"] / minilm["plain dynamic int8"]["p50_ms"], 3),
        "optiserve_speedup_vs_pytorch_batch1": minilm[OPTISERVE]["speedup_vs_pytorch"],
        "plain_dynamic_int8_speedup_vs_pytorch_batch1": minilm["plain dynamic int8"]["speedup_vs_pytorch"],
        "pruned_vs_optiserve_int8_p50_batch1": round(minilm[PRUNED]["p50_ms"] / minilm[OPTISERVE]["p50_ms"], 3),
        "student_speedup_vs_optiserve_int8_batch1": round(minilm[OPTISERVE]["p50_ms"] / minilm[STUDENT]["p50_ms"], 3),
        "student_speedup_vs_pytorch_batch1": minilm[STUDENT]["speedup_vs_pytorch"],
    }
    digits = {r["variant"]: r for r in rows if r["model"] == "digits" and r["batch"] == 32 and r["busy"] == 0}
    ratios["digits_pruned_vs_static_int8_p50_batch32"] = round(
        digits[DIGITS_PRUNED]["p50_ms"] / digits["static int8"]["p50_ms"], 3
    )
    result = {
        "machine": machine_report().model_dump(),
        "threads": args.threads,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "busy": args.busy,
        "ratios": ratios,
        "rows": rows,
        "passes": PASS_LOG,
    }
    table = _markdown(rows)
    print(json.dumps(result, indent=2))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "optimizer.json").write_text(json.dumps(result, indent=2))
        (args.out / "optimizer.md").write_text(table + "\n\n" + json.dumps(ratios, indent=2) + "\n")
        pareto_chart(rows, args.out / "pareto.png")


def _smollm(args: argparse.Namespace) -> None:
    from smollm import quality_speed_chart, run  # beside this script

    with tempfile.TemporaryDirectory(prefix="optiserve-bench-smollm-") as tmp:
        found, table = run(Path(tmp), args.threads, args.rounds, gptq=args.gptq)
    result = {"machine": machine_report().model_dump(), "threads": args.threads, **found}
    print(json.dumps(result, indent=2))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "smollm.json").write_text(json.dumps(result, indent=2))
        (args.out / "smollm.md").write_text(table + "\n")
        quality_speed_chart(result, args.out / "smollm.png")


if __name__ == "__main__":
    main()
