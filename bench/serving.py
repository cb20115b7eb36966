"""Serving performance: the optimized MiniLM on the real tritonserver, dynamic batching on and off.

Two Triton servers (CPU, the Python-backend model running ONNX Runtime) serve the same model from
two repositories that differ only in ``dynamic_batching``; the load is OptiServe's own bounded
async gRPC generator (``optiserve.local.load``) at a fixed concurrency, sending the job's golden
set round-robin (the validation sentences, one per request, padded to 128 tokens as the job's
benchmark pads them; ``--sequence-length 0`` sends them as they are). The reference is the same
ONNX file in an ONNX Runtime session called in-process at batch 8 and batch 1, with the same
intra-op threads and the job benchmark's session options, in a worker process of its own: once
with the threads spinning (ONNX Runtime's default), once sleeping at once; the faster one at
batch 8 is the reference. Every round runs each in turn, the order rotated; the figures are
medians over rounds; each ratio is taken within a round, and its median over rounds is reported.

    python bench/serving.py --model-dir out/minilm --out bench/results
    python bench/serving.py --out bench/results          # optimizes MiniLM first (about a minute)

``--compare-spin -1 200`` also serves both with ONNX Runtime's own thread spinning and with a
200 us spin (the served model's threads sleep at once by default). Prints JSON and a markdown table;
``--busy 2`` keeps two processes spinning while it measures, as other work on a shared machine.
``--out DIR`` also writes serving.json and serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from optiserve.api.spec import TritonBackend
from optiserve.artifact import verify_artifact
from optiserve.golden import GOLDEN_FILE, GoldenSample, load_golden
from optiserve.local.load import LoadConfig, run_load
from optiserve.local.load_clients import LoadTarget
from optiserve.local.processes import busy_processes
from optiserve.local.triton import TritonServer, find_triton_install
from optiserve.resources.triton_config import parse_model_config, render_model_config
from optiserve_jobs import triton_python_model
from optiserve_jobs.report import machine_report
from optiserve_jobs.repository import REPOSITORIES
from optiserve_jobs.runners import ort_session

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples/minilm/optimizedmodel.yaml"
PYTHON_REPOSITORY = REPOSITORIES[TritonBackend.PYTHON]
MODEL = "minilm"
SEQUENCE_LENGTH = 128
DYNAMIC, STATIC = "triton, dynamic batching", "triton, no dynamic batching"
IN_PROCESS = "in-process ONNX Runtime, batch {}"
SLEEPING = ", threads sleeping"


Rows = dict[str, dict[str, float]]
"""Measured figures per row of the table."""


@dataclass(frozen=True)
class ServingSettings:
    threads: int
    instances: int | None
    max_queue_delay_us: int | None
    preferred_batch_sizes: list[int] | None


# -- inputs ----------------------------------------------------------------------------------


def optimized_model_dir(model_dir: Path | None, work: Path) -> Path:
    """An `optiserve optimize` output: the given one (checked against its manifest) or a new one."""
    if model_dir is None:
        model_dir = work / "optimized"
        print(f"optimizing {EXAMPLE.relative_to(ROOT)} into {model_dir}", file=sys.stderr)
        command = [str(Path(sys.executable).with_name("optiserve")), "optimize", "-f", str(EXAMPLE), "--out", str(model_dir)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    verify_artifact(model_dir)
    return model_dir


def golden_samples(model_dir: Path, count: int, sequence_length: int) -> list[GoldenSample]:
    """The job's golden set (the validation sentences as requests), right-padded with zeros to
    ``sequence_length`` tokens as the job's own benchmark does (0: each sentence at its own length).

    Without a golden set (an output from before it existed) the sentences are tokenized here.
    """
    golden = model_dir / GOLDEN_FILE
    samples = load_golden(golden, limit=count) if golden.is_file() else _tokenized_validation(count)
    return [_padded(sample, sequence_length) for sample in samples] if sequence_length else samples


def _padded(sample: GoldenSample, length: int) -> GoldenSample:
    inputs = {}
    for name, array in sample.inputs.items():
        tokens = np.asarray(array)[:, :length]
        inputs[name] = np.pad(tokens, ((0, 0), (0, length - tokens.shape[1])))  # pad id, type and mask are all 0
    return GoldenSample(inputs=inputs, label=sample.label)


def _tokenized_validation(count: int) -> list[GoldenSample]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ROOT / "examples/minilm/model"), local_files_only=True)
    lines = (ROOT / "examples/minilm/data/validation.txt").read_text().splitlines()
    texts = [line.strip() for line in lines if line.strip()][:count]
    names = ("input_ids", "token_type_ids", "attention_mask")
    samples = []
    for text in texts:
        encoded = tokenizer([text], truncation=True, max_length=SEQUENCE_LENGTH, return_tensors="np")
        samples.append(GoldenSample(inputs={n: np.asarray(encoded[n], dtype=np.int64) for n in names}))
    return samples


@dataclass(frozen=True)
class ServerVariant:
    name: str
    dynamic: bool
    spin_us: int | None = None
    """The model's ``intra_op_spin_us`` (None: its default)."""
    preferred: tuple[int, ...] | None = None
    """``preferred_batch_size`` (None: as published, or ``--preferred``)."""

    @property
    def directory(self) -> str:
        spin = "" if self.spin_us is None else f"-spin{self.spin_us}".replace("-1", "default")
        preferred = "" if self.preferred is None else "-preferred" + "-".join(map(str, self.preferred))
        return ("dynamic" if self.dynamic else "static") + spin + preferred


def spin_label(spin_us: int) -> str:
    if spin_us < 0:
        return "ONNX Runtime's own spinning"
    return "threads sleeping at once" if spin_us == 0 else f"threads spin {spin_us} us"


def server_variants(compare_spin: list[int], compare_preferred: list[tuple[int, ...]]) -> list[ServerVariant]:
    variants = [ServerVariant(DYNAMIC, dynamic=True), ServerVariant(STATIC, dynamic=False)]
    for preferred in compare_preferred:
        label = "preferred batch " + ", ".join(map(str, preferred))
        variants.append(ServerVariant(f"{DYNAMIC}, {label}", True, preferred=preferred))
    for spin_us in compare_spin:
        label = spin_label(spin_us)
        variants += [ServerVariant(f"{DYNAMIC}, {label}", True, spin_us), ServerVariant(f"{STATIC}, {label}", False, spin_us)]
    return variants


def batch_sizes(text: str) -> tuple[int, ...]:
    """``8,16`` as (8, 16), for ``--compare-preferred``."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 8,16, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return sizes


def serving_repository(model_dir: Path, destination: Path, settings: ServingSettings, variant: ServerVariant) -> Path:
    """A copy of the published Python-backend repository, with this checkout's model.py.

    The copies differ only in ``dynamic_batching`` (and ``intra_op_spin_us`` or the preferred
    batch sizes where asked);
    instances and threads are set alike on all.
    """
    shutil.copytree(model_dir / PYTHON_REPOSITORY, destination)
    model = destination / MODEL
    shutil.copyfile(triton_python_model.__file__, model / "1" / "model.py")
    config = parse_model_config((model / "config.pbtxt").read_text())
    config.parameters["intra_op_threads"].string_value = str(settings.threads)
    if settings.instances is not None:
        config.instance_group[0].count = settings.instances
    if settings.max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    preferred = variant.preferred if variant.preferred is not None else settings.preferred_batch_sizes
    if preferred is not None:
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(preferred)
    if variant.spin_us is not None:
        config.parameters["intra_op_spin_us"].string_value = str(variant.spin_us)
    if not variant.dynamic:
        config.ClearField("dynamic_batching")
    (model / "config.pbtxt").write_text(render_model_config(config))
    return destination


# -- measurements ----------------------------------------------------------------------------


def model_counters(server: TritonServer) -> dict[str, float]:
    """Triton's cumulative counters for the model (executions, requests, queue and compute time)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:  # loopback URL of our own server
        text = response.read().decode()
    wanted = {
        "nv_inference_exec_count": "executions",
        "nv_inference_request_success": "requests",
        "nv_inference_queue_duration_us": "queue_us",
        "nv_inference_compute_infer_duration_us": "compute_us",
        triton_python_model.RUN_TIME_METRIC: "onnxruntime_us",
    }
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):  # counter families drop the _total their samples carry
        for sample in family.samples:
            if family.name in wanted and sample.labels.get("model") == MODEL:
                counters[wanted[family.name]] = sample.value
    return counters


def settled_counters(server: TritonServer, requests_at_least: float) -> dict[str, float]:
    """Counters once Triton has recorded every answered request (statistics lag the answers)."""
    deadline = time.monotonic() + 10
    counters = model_counters(server)
    while counters.get("requests", 0) < requests_at_least and time.monotonic() < deadline:
        time.sleep(0.1)
        counters = model_counters(server)
    return counters


def serve_round(server: TritonServer, samples: list[GoldenSample], config: LoadConfig) -> dict[str, float]:
    """One timed load on one server: throughput, latency percentiles and how Triton batched it."""
    target = LoadTarget(server.grpc_url, MODEL)
    asyncio.run(run_load(target, samples, LoadConfig(concurrency=config.concurrency, max_duration_s=1.0)))  # settle
    before = settled_counters(server, 0)
    result = asyncio.run(run_load(target, samples, config))
    summary = result.summary()
    if summary.failed or summary.p50_ms is None or summary.p95_ms is None:
        errors = {r.error for r in result.records if not r.ok}
        raise RuntimeError(f"{summary.failed} of {summary.requests} requests failed: {sorted(e or '' for e in errors)[:3]}")
    after = settled_counters(server, before.get("requests", 0) + summary.requests)
    executions = after["executions"] - before["executions"]
    requests = after["requests"] - before["requests"]
    return {
        "sentences_per_s": summary.throughput_per_s,
        "p50_ms": summary.p50_ms,
        "p95_ms": summary.p95_ms,
        "mean_batch": requests / executions if executions else 0.0,
        "queue_ms_per_request": (after["queue_us"] - before["queue_us"]) / 1000.0 / requests if requests else 0.0,
        # Triton adds a batch's compute time to each of its requests.
        "compute_ms_per_batch": (after["compute_us"] - before["compute_us"]) / 1000.0 / requests if requests else 0.0,
        # The model counts its ONNX Runtime time once per execution.
        "onnxruntime_ms_per_batch": (after["onnxruntime_us"] - before["onnxruntime_us"]) / 1000.0 / executions
        if executions
        else 0.0,
    }


def serve_variant(name: str, server: TritonServer, samples: list[GoldenSample], config: LoadConfig) -> Rows:
    return {name: serve_round(server, samples, config)}


def _time_in_process(
    onnx_path: str, batches: dict[int, dict[str, np.ndarray]], threads: int, spinning: bool, iterations: int
) -> dict[int, list[float]]:
    """In a fresh worker process: one session, a warm-up, then timed runs per batch size (seconds)."""
    session = ort_session(Path(onnx_path), threads=threads, spinning=spinning)
    times: dict[int, list[float]] = {}
    for batch, feed in batches.items():
        for _ in range(5):
            session.run(None, feed)
        runs = []
        for _ in range(iterations * (8 // batch)):  # about the same time at each batch size
            started = time.perf_counter()
            session.run(None, feed)
            runs.append(time.perf_counter() - started)
        times[batch] = runs
    return times


def in_process_round(onnx_path: Path, samples: list[GoldenSample], threads: int, iterations: int, *, spinning: bool) -> Rows:
    """The same ONNX file in-process at batch 8 and 1, with the job benchmark's session options."""
    batches = {8: _stack(samples[:8]), 1: _stack(samples[:1])}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        times = pool.submit(_time_in_process, str(onnx_path), batches, threads, spinning, iterations).result(timeout=600)
    rows: Rows = {}
    for batch, runs in times.items():
        p50, p95 = (float(v) * 1000.0 for v in np.percentile(runs, [50, 95]))
        name = IN_PROCESS.format(batch) + ("" if spinning else SLEEPING)
        rows[name] = {"sentences_per_s": batch * 1000.0 / p50, "p50_ms": p50, "p95_ms": p95}
    return rows


def _stack(samples: list[GoldenSample]) -> dict[str, np.ndarray]:
    """One batch, right-padded to its longest sentence as the served model pads a batch."""
    longest = max(int(np.asarray(s.inputs[name]).shape[1]) for s in samples for name in s.inputs)
    return {name: np.concatenate([_padded(s, longest).inputs[name] for s in samples]) for name in samples[0].inputs}


# -- the run -----------------------------------------------------------------------------------


@contextmanager
def started(repository: Path, log_path: Path) -> Iterator[TritonServer]:
    with TritonServer(repository, install=find_triton_install(), log_path=log_path, summary_latencies=False) as server:
        server.wait_model_ready(MODEL, timeout_s=180)
        yield server


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_rounds(
    rounds: int, measure: dict[str, Callable[[], Rows]], on_progress: Callable[[str], None]
) -> dict[str, list[dict[str, float]]]:
    """Every measurement once per round, in turn, the order rotated each round; each gives one or more rows."""
    names = list(measure)
    results: dict[str, list[dict[str, float]]] = {}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            on_progress(f"round {index + 1}/{rounds}: {name}")
            for row, values in measure[name]().items():
                results.setdefault(row, []).append(values)
    return results


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


RatioSpread = dict[str, float]
"""The median of one ratio over rounds, with its lowest and highest round."""


def round_ratios(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """The target ratios from one round's rows (measured minutes apart at most)."""
    dynamic, static = rows[DYNAMIC], rows[STATIC]
    same_session = rows[IN_PROCESS.format(8) + SLEEPING]  # the served model's threads sleep too
    faster = max(rows[IN_PROCESS.format(8)], same_session, key=lambda r: r["sentences_per_s"])
    return {
        "dynamic_vs_static_throughput": dynamic["sentences_per_s"] / static["sentences_per_s"],
        "dynamic_vs_static_p95": dynamic["p95_ms"] / static["p95_ms"],
        "dynamic_vs_in_process_batch8_same_session": dynamic["sentences_per_s"] / same_session["sentences_per_s"],
        "dynamic_vs_in_process_batch8_faster": dynamic["sentences_per_s"] / faster["sentences_per_s"],
        # What the model and the backend stub add to ONNX Runtime's own time, per batch.
        "dynamic_model_overhead": dynamic["compute_ms_per_batch"] / dynamic["onnxruntime_ms_per_batch"] - 1.0,
    }


def ratios(per_round: dict[str, list[dict[str, float]]]) -> dict[str, RatioSpread]:
    """Each ratio taken within a round, then the median over rounds.

    The machine's speed drifts between runs by more than the effects measured here (the
    in-process batch-1 rate moved 40 % between two runs on one day); two measurements of one
    round are seconds apart, so a ratio within a round cancels most of that drift.
    """
    count = min(len(rounds) for rounds in per_round.values())
    each = [round_ratios({row: rounds[index] for row, rounds in per_round.items()}) for index in range(count)]
    return {
        key: {
            "median": statistics.median(r[key] for r in each),
            "lowest": min(r[key] for r in each),
            "highest": max(r[key] for r in each),
        }
        for key in each[0]
    }


def markdown(by_variant: dict[str, dict[str, float]], ratio: dict[str, RatioSpread]) -> str:
    lines = [
        "| variant | sentences/s | p50 ms | p95 ms | mean batch | queue ms/request | compute ms/batch | of it ONNX Runtime ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    server_columns = ("mean_batch", "queue_ms_per_request", "compute_ms_per_batch", "onnxruntime_ms_per_batch")
    for name, row in by_variant.items():
        cells = [f"{row['sentences_per_s']:.1f}", f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}"]
        cells += [f"{row[k]:.2f}" if k in row else "" for k in server_columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios taken within each round; median (lowest-highest round):",
        "",
        "| target | measured | |",
        "|---|---|---|",
        _target_row("dynamic batching >= 1.3x throughput", ratio["dynamic_vs_static_throughput"], "{:.2f}x", 1.3),
        _target_row("dynamic batching p95 no worse than without", ratio["dynamic_vs_static_p95"], "{:.2f}x", None),
        _target_row(
            ">= 90 % of in-process batch 8, same session options (threads sleep)",
            ratio["dynamic_vs_in_process_batch8_same_session"],
            "{:.0%}",
            0.9,
        ),
        _target_row(
            "the Python-backend model adds little: Triton's compute time over ONNX Runtime's, per batch",
            ratio["dynamic_model_overhead"],
            "+{:.1%}",
            None,
            limit=0.05,
        ),
        _target_row(
            ">= 90 % of the faster in-process batch 8 (threads spinning or sleeping)",
            ratio["dynamic_vs_in_process_batch8_faster"],
            "{:.0%}",
            0.9,
        ),
    ]
    return "\n".join(lines)


def _target_row(target: str, spread: RatioSpread, form: str, at_least: float | None, *, limit: float = 1.0) -> str:
    """``at_least`` None: the ratio must be at most ``limit`` (a latency no worse, an overhead)."""
    median = spread["median"]
    met = median >= at_least if at_least is not None else median <= limit
    measured = f"{form.format(median)} ({form.format(spread['lowest'])}-{form.format(spread['highest'])})"
    return f"| {target} | {measured} | {'met' if met else 'missed'} |"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="an `optiserve optimize` output (default: optimize MiniLM first)")
    parser.add_argument("--out", type=Path, help="write serving.json and serving.md here")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="load per round and server")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--samples", type=int, default=200, help="validation sentences sent round-robin")
    parser.add_argument(
        "--sequence-length",
        type=int,
        default=SEQUENCE_LENGTH,
        help=f"pad every sentence to this many tokens (default {SEQUENCE_LENGTH}, as the job's benchmark); 0: as they are",
    )
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads per served instance")
    parser.add_argument("--reference-threads", type=int, default=2, help="ONNX Runtime intra-op threads in-process")
    parser.add_argument("--busy", type=int, default=0, help="processes that only spin while measuring (a shared machine)")
    parser.add_argument("--iterations", type=int, default=40, help="in-process runs at batch 8 per round (8x that at batch 1)")
    parser.add_argument("--instances", type=int, help="override the repository's instance count (both servers)")
    parser.add_argument("--max-queue-delay-us", type=int, help="override max_queue_delay_microseconds")
    parser.add_argument("--preferred", type=int, nargs="*", help="override preferred_batch_size")
    parser.add_argument(
        "--compare-spin",
        type=int,
        nargs="*",
        default=[],
        metavar="US",
        help="also serve both with the model's intra_op_spin_us at these values (-1: ONNX Runtime's own spinning, 0: none)",
    )
    parser.add_argument(
        "--compare-preferred",
        type=batch_sizes,
        nargs="*",
        default=[],
        metavar="SIZES",
        help="also serve with dynamic batching and these preferred batch sizes (e.g. 8,16)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    settings = ServingSettings(args.threads, args.instances, args.max_queue_delay_us, args.preferred)
    load = LoadConfig(concurrency=args.concurrency, max_duration_s=args.seconds)
    progress: Callable[[str], None] = lambda message: print(message, file=sys.stderr)  # noqa: E731
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="optiserve-serving-") as tmp, ExitStack() as servers:
        work = Path(tmp)
        model_dir = optimized_model_dir(args.model_dir, work)
        samples = golden_samples(model_dir, args.samples, args.sequence_length)
        onnx_path = model_dir / PYTHON_REPOSITORY / MODEL / "1" / "model.onnx"
        variants = server_variants(args.compare_spin, args.compare_preferred)
        repositories = {v.name: serving_repository(model_dir, work / v.directory, settings, v) for v in variants}
        config_text = {name: (repo / MODEL / "config.pbtxt").read_text() for name, repo in repositories.items()}
        running = {v.name: servers.enter_context(started(repositories[v.name], work / f"{v.directory}.log")) for v in variants}

        measure: dict[str, Callable[[], Rows]] = {
            "in-process": functools.partial(
                in_process_round, onnx_path, samples, args.reference_threads, args.iterations, spinning=True
            ),
            "in-process, sleeping": functools.partial(
                in_process_round, onnx_path, samples, args.reference_threads, args.iterations, spinning=False
            ),
        }
        for variant in variants:
            measure[variant.name] = functools.partial(serve_variant, variant.name, running[variant.name], samples, load)
        with busy_processes(args.busy):
            per_round = run_rounds(args.rounds, measure, progress)
    by_variant = {name: medians(rounds) for name, rounds in per_round.items()}
    ratio = ratios(per_round)
    result: dict[str, Any] = {
        "machine": machine_report().model_dump(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": asdict(settings)
        | {
            "reference_threads": args.reference_threads,
            "busy_processes": args.busy,
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "rounds": args.rounds,
        },
        "samples": len(samples),
        "sequence_length": args.sequence_length or "as sent (golden set)",
        "medians": by_variant,
        "ratios": ratio,
        "rounds": per_round,
        "config_pbtxt": config_text,
    }
    table = markdown(by_variant, ratio)
    print(json.dumps(result, indent=2))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "serving.json").write_text(json.dumps(result, indent=2))
        (args.out / "serving.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
