"""Benchmark the optimization job's variants side by side, in one run, on the same threads.

MiniLM (batch 1 and 8, sequence 128): PyTorch FP32 eager, ONNX Runtime FP32, fused FP32, plain
dynamic INT8 (per-channel), and OptiServe's pipeline (fusion + smoothing + dynamic INT8), each in
its own worker process, alternating rounds; plus fidelity of each to the PyTorch embeddings on the
validation sentences (never used for calibration). Digits: PyTorch against static INT8, with
label accuracy. Prints JSON and a markdown table; `--out DIR` also writes results.json/results.md.

`--busy N` times every variant twice in the same run: as the machine is, then beside N processes
that only spin (a shared machine). Each row then says under which load it was measured, the paired
speedup over PyTorch on the rounds the kernel saw undisturbed, and where 1x lies against its
interval (`vs_1x`: above, below, within-noise, or too-few undisturbed pairs for any verdict).

    python bench/optimizer.py --out bench/results
    python bench/optimizer.py --busy 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from optiserve.api.spec import BenchmarkSpec, ExportPass, GraphPass, ModelSpec, QuantizePass
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


def _context(work: Path, source: SourceModel, validation: Dataset, threads: int) -> PassContext:
    def load(uri: str, limit: int) -> Dataset:
        return load_dataset(Path(uri), source, limit=limit)

    return PassContext(work, source, source.path.parent, threads, validation.take(8), load)


def _chain(context: PassContext, start: Path, configs: list[Any]) -> Path:
    current = start
    for index, config in enumerate(configs):
        outcome = build_pass(config).run(current, context, index + 10 * len(context.work_dir.name))
        if outcome.output is None:
            raise RuntimeError(f"{config.type}: {outcome.status.value}: {outcome.detail}")
        current = outcome.output
    return current


def _minilm_variants(work: Path, threads: int) -> tuple[SourceModel, Dataset, dict[str, Path]]:
    spec = ModelSpec.model_validate({"uri": str(MINILM / "model"), "format": "huggingface", "task": "embedding"})
    source = load_source_model(spec, base_dir=None, download_dir=work)
    validation = load_dataset(MINILM / "data/validation.txt", source, limit=200)
    calibration = {"datasetUri": str(MINILM / "data/calibration.txt"), "samples": 200}
    variants: dict[str, Path] = {}
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
        OPTISERVE: [
            ExportPass(type="export"),
            QuantizePass.model_validate({"type": "quantize", "smoothing": {"alpha": 0.75}, "calibration": calibration}),
        ],
    }
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
    return (
        source,
        validation,
        {"static int8": _chain(context, source.path, [ExportPass(type="export"), GraphPass(type="graph"), static])},
    )


def _quality(source: SourceModel, validation: Dataset, variants: dict[str, Path], threads: int) -> dict[str, dict[str, float]]:
    reference = run_all(VariantSpec("pytorch", torch_source=source).build(threads), validation)
    quality: dict[str, dict[str, float]] = {}
    for name, path in {"pytorch fp32 eager": None, **variants}.items():
        outputs = reference if path is None else run_all(OrtRunner(path, threads=threads), validation)
        found = fidelity(source.spec.task, reference, outputs)
        row = {"fidelity_mean": found.mean, "fidelity_min": found.min, "max_abs_error": found.max_abs_error}
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
        "accuracy",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--busy", type=int, default=0, help="also time everything beside N spinning processes")
    args = parser.parse_args()
    loads = [0, args.busy] if args.busy else [0]
    spec = BenchmarkSpec(batch_sizes=[1, 8], threads=args.threads, warmup=10, iterations=args.iterations, repeats=args.repeats)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="optiserve-bench-") as tmp:
        print("MiniLM: building variants", file=sys.stderr)
        source, validation, variants = _minilm_variants(Path(tmp), args.threads)
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
    }
    result = {
        "machine": machine_report().model_dump(),
        "threads": args.threads,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "busy": args.busy,
        "ratios": ratios,
        "rows": rows,
    }
    table = _markdown(rows)
    print(json.dumps(result, indent=2))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "optimizer.json").write_text(json.dumps(result, indent=2))
        (args.out / "optimizer.md").write_text(table + "\n\n" + json.dumps(ratios, indent=2) + "\n")


if __name__ == "__main__":
    main()
