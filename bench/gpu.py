"""The GPU paths, measured on MiniLM (sentence embeddings, sequence 128, batch 1 and 8) on one CUDA device.

Against PyTorch FP32 eager on the same device, in the same run:

- PyTorch FP16 eager (`model.half()`), and `torch.compile` of FP32 and FP16 (default mode, and
  FP16 with `mode="reduce-overhead"`, which replays CUDA graphs);
- the job's own passes: the export pass's FP32 ONNX model and the fp16 pass's model, on ONNX
  Runtime's CUDA execution provider when this ONNX Runtime has it. The CPU build has none: then
  both are checked for fidelity on the CPU provider and their GPU latency is reported as not measured;
- the tensorrt pass: its outcome on this machine (an engine, or skipped with the reason).

Fidelity: cosine of each variant's sentence embeddings to the FP32 eager ones, per validation
sentence (mean and worst), and the largest absolute difference.
Latency: each call takes NumPy inputs and returns a NumPy output, as a server does (the copies to
and from the device are included, for every variant alike); `torch.cuda.synchronize()` before and
after each call; a warm-up, then `--repeats` rounds of `--iterations` calls per variant, variants
alternating round by round; p50 is the median of the per-round medians. Matmuls in FP32 use
PyTorch's default precision (no TF32).

    python bench/gpu.py [--model DIR] [--out DIR]

Without a CUDA device it says so and exits 0; `--device cpu` runs the same steps on the CPU, as a
smoke test of this script (those figures say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optiserve.api.spec import ExportPass, Fp16Pass, ModelSpec, TensorRTPass
from optiserve_jobs.datasets import Dataset, load_dataset
from optiserve_jobs.passes import PassContext, PassOutcome, build_pass
from optiserve_jobs.runners import OrtRunner, Runner, session_feed
from optiserve_jobs.source_model import SourceModel, load_source_model
from optiserve_jobs.torch_models import load_torch_module
from optiserve_jobs.validate import fidelity, run_all

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT / "examples/minilm"
BASELINE = "pytorch fp32 eager"
BATCH_SIZES = (1, 8)
FIDELITY_BATCH = 8  # one batch shape besides the timed ones, so torch.compile compiles few graphs
CUDA_PROVIDER = "CUDAExecutionProvider"


class TorchDeviceRunner:
    """A PyTorch module on `device`: NumPy in, NumPy out."""

    def __init__(self, module: torch.nn.Module, input_names: list[str], device: torch.device) -> None:
        self.module = module
        self.input_names = input_names
        self.device = device

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            output = self.module(*(torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names))
        return np.asarray(output.float().cpu().numpy())


class OrtCudaRunner:
    """An ONNX model on ONNX Runtime's CUDA execution provider; refuses a silent fallback to the CPU."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=[CUDA_PROVIDER, "CPUExecutionProvider"])
        if self.session.get_providers()[0] != CUDA_PROVIDER:
            raise RuntimeError(f"{path.name}: ONNX Runtime fell back to {self.session.get_providers()} (CUDA libraries?)")

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(None, session_feed(self.session, inputs))[0], dtype=np.float32)


@dataclass(frozen=True)
class Variant:
    name: str
    runtime: str
    runner: Runner


@dataclass(frozen=True)
class Settings:
    device: torch.device
    samples: int
    warmup: int
    iterations: int
    repeats: int
    cpu_threads: int


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _torch_variants(source: SourceModel, device: torch.device) -> list[Variant]:
    names = [i.name for i in source.inputs]

    def module(half: bool) -> torch.nn.Module:
        loaded = load_torch_module(source, None).to(device)
        return loaded.half() if half else loaded

    def compiled(half: bool, mode: str | None = None) -> torch.nn.Module:
        return torch.compile(module(half), mode=mode, dynamic=False)  # type: ignore[return-value]

    return [
        Variant(BASELINE, "pytorch", TorchDeviceRunner(module(half=False), names, device)),
        Variant("pytorch fp16 eager", "pytorch", TorchDeviceRunner(module(half=True), names, device)),
        Variant("torch.compile fp32", "pytorch", TorchDeviceRunner(compiled(half=False), names, device)),
        Variant("torch.compile fp16", "pytorch", TorchDeviceRunner(compiled(half=True), names, device)),
        Variant(
            "torch.compile fp16 reduce-overhead",
            "pytorch",
            TorchDeviceRunner(compiled(half=True, mode="reduce-overhead"), names, device),
        ),
    ]


def _run_pass(config: Any, model: Path, context: PassContext, index: int) -> PassOutcome:
    outcome = build_pass(config).run(model, context, index)
    print(f"pass {config.type}: {outcome.status.value}: {outcome.detail}", file=sys.stderr, flush=True)
    return outcome


def _job_passes(
    work: Path, source: SourceModel, validation: Dataset, threads: int
) -> tuple[dict[str, Path], list[dict[str, str]]]:
    """Run the job's export, fp16 and tensorrt passes; the ONNX models they made, and every outcome."""
    context = PassContext(
        work, source, None, threads, validation.take(8), lambda uri, limit: load_dataset(Path(uri), source, limit=limit)
    )
    exported = _run_pass(ExportPass(type="export"), source.path, context, 0)
    if exported.output is None:
        raise RuntimeError(f"export pass {exported.status.value}: {exported.detail}")
    fp16 = _run_pass(Fp16Pass(type="fp16"), exported.output, context, 1)
    tensorrt = _run_pass(TensorRTPass(type="tensorrt", precision="fp16", max_batch_size=8), exported.output, context, 2)
    outcomes = [
        {"pass": name, "status": o.status.value, "detail": o.detail}
        for name, o in (("export", exported), ("fp16", fp16), ("tensorrt", tensorrt))
    ]
    models = {"onnx fp32 (export pass)": exported.output}
    if fp16.output is not None:
        models["onnx fp16 (fp16 pass)"] = fp16.output
    return models, outcomes


def _onnx_variants(models: dict[str, Path], device: torch.device, threads: int) -> tuple[list[Variant], list[Variant]]:
    """(variants timed on the GPU, variants checked for fidelity only, on the CPU provider)."""
    import onnxruntime as ort

    if device.type == "cuda" and CUDA_PROVIDER in ort.get_available_providers():
        return [Variant(name, "onnxruntime cuda", OrtCudaRunner(path)) for name, path in models.items()], []
    return [], [
        Variant(name, "onnxruntime cpu (fidelity only)", OrtRunner(path, threads=threads)) for name, path in models.items()
    ]


def _time_round(runner: Runner, inputs: dict[str, np.ndarray], calls: int, synchronize: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(calls):
        synchronize()
        start = time.perf_counter()
        runner.run(inputs)
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def _latency(variants: list[Variant], validation: Dataset, settings: Settings) -> dict[tuple[str, int], dict[str, float]]:
    """p50 (median of round medians) and p95 (pooled) in ms per (variant, batch), variants alternating."""
    synchronize = _synchronizer(settings.device)
    results = {}
    for batch in BATCH_SIZES:
        inputs = validation.repeat_to(batch)
        for variant in variants:
            _time_round(variant.runner, inputs, settings.warmup, synchronize)
        rounds: dict[str, list[list[float]]] = {v.name: [] for v in variants}
        for _ in range(settings.repeats):
            for variant in variants:
                rounds[variant.name].append(_time_round(variant.runner, inputs, settings.iterations, synchronize))
        for name, timed in rounds.items():
            pooled = np.asarray([t for r in timed for t in r]) * 1000.0
            p50 = statistics.median(float(np.median(r)) * 1000.0 for r in timed)
            results[(name, batch)] = {"p50_ms": p50, "p95_ms": float(np.percentile(pooled, 95))}
    return results


def _fidelity(
    variants: list[Variant], validation: Dataset, reference: np.ndarray, source: SourceModel
) -> dict[str, dict[str, float]]:
    found = {}
    for variant in variants:
        result = fidelity(source.spec.task, reference, run_all(variant.runner, validation, FIDELITY_BATCH))
        found[variant.name] = {"fidelity_mean": result.mean, "fidelity_min": result.min, "max_abs_error": result.max_abs_error}
    return found


def _quality_columns(quality: dict[str, float]) -> dict[str, float]:
    return {
        "fidelity_mean": round(quality["fidelity_mean"], 7),
        "fidelity_min": round(quality["fidelity_min"], 7),
        "max_abs_error": float(f"{quality['max_abs_error']:.3g}"),
    }


def _rows(
    variants: list[Variant],
    latency: dict[tuple[str, int], dict[str, float]],
    quality: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """One row per timed variant and batch; one row (batch "-") per variant checked for fidelity only."""
    rows = []
    for variant in variants:
        first: dict[str, Any] = {"variant": variant.name, "runtime": variant.runtime}
        if (variant.name, BATCH_SIZES[0]) not in latency:
            rows.append(first | {"batch": "-"} | _quality_columns(quality[variant.name]))
            continue
        for batch in BATCH_SIZES:
            timing, base = latency[(variant.name, batch)], latency[(BASELINE, batch)]["p50_ms"]
            row = first | {
                "batch": batch,
                "p50_ms": round(timing["p50_ms"], 3),
                "p95_ms": round(timing["p95_ms"], 3),
                "sentences_per_s": round(batch * 1000.0 / timing["p50_ms"], 1),
                "speedup_vs_fp32_eager": round(base / timing["p50_ms"], 2),
            }
            rows.append(row | _quality_columns(quality[variant.name]))
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    columns = ["variant", "runtime", "batch", "p50_ms", "p95_ms", "sentences_per_s", "speedup_vs_fp32_eager"]
    columns += ["fidelity_mean", "fidelity_min", "max_abs_error"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "not measured")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _machine(device: torch.device) -> dict[str, Any]:
    import onnxruntime as ort

    machine: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
    }
    return machine


def measure(model_dir: Path, work: Path, settings: Settings) -> dict[str, Any]:
    spec = ModelSpec.model_validate({"uri": str(model_dir), "format": "huggingface", "task": "embedding"})
    source = load_source_model(spec, base_dir=None, download_dir=work)
    validation = load_dataset(MINILM / "data/validation.txt", source, limit=settings.samples)
    torch_variants = _torch_variants(source, settings.device)
    models, passes = _job_passes(work, source, validation, settings.cpu_threads)
    timed_onnx, cpu_onnx = _onnx_variants(models, settings.device, settings.cpu_threads)
    timed = torch_variants + timed_onnx
    print("fidelity on the validation sentences", file=sys.stderr, flush=True)
    reference = run_all(torch_variants[0].runner, validation, FIDELITY_BATCH)
    quality = _fidelity(timed + cpu_onnx, validation, reference, source)
    print("latency", file=sys.stderr, flush=True)
    latency = _latency(timed, validation, settings)
    settings_report = asdict(settings) | {"device": str(settings.device), "batch_sizes": list(BATCH_SIZES)}
    return {
        "machine": _machine(settings.device),
        "settings": settings_report | {"validation_sentences": len(validation), "sequence_length": source.spec.sequence_length},
        "passes": passes,
        "rows": _rows(timed + cpu_onnx, latency, quality),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MINILM / "model", help="MiniLM Hugging Face directory")
    parser.add_argument("--out", type=Path, help="also write gpu.json and gpu.md here")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--samples", type=int, default=200, help="validation sentences for fidelity")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--cpu-threads", type=int, default=8, help="ONNX Runtime CPU threads (export check, CPU fidelity)")
    return parser.parse_args()


def main() -> int:
    args = _parse()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False; bench/gpu.py measures GPU paths only", file=sys.stderr)
        return 0
    if not (args.model / "config.json").is_file():
        print(f"--model: {args.model} is not a Hugging Face model directory (run examples/minilm/prepare.py)", file=sys.stderr)
        return 2
    settings = Settings(torch.device(args.device), args.samples, args.warmup, args.iterations, args.repeats, args.cpu_threads)
    with tempfile.TemporaryDirectory(prefix="optiserve-gpu-") as tmp:
        result = measure(args.model, Path(tmp), settings)
    table = _markdown(result["rows"])
    print(json.dumps(result, indent=2))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(result, indent=2))
        (args.out / "gpu.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
