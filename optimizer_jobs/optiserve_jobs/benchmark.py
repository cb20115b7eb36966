"""Side-by-side latency benchmark: every variant in its own process, alternating, same threads.

Two ONNX Runtime sessions in one process with thread spinning on slow each other down, and
PyTorch's OpenMP pool competes with ONNX Runtime's; so each variant runs in its own worker
process, and the parent asks one worker at a time for a round of timed runs (A, B, A, B, ...),
which also spreads any drift of the machine evenly over the variants.

Each round also records how long the worker's threads waited for a CPU (the kernel's run-queue
delay): a round that waited too long measured the machine, not the model, and the parent measures
again, within the spec's budget, until it has enough undisturbed pairs and their speedup's interval
decides the speed gate (`optiserve_jobs.stability`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from optiserve.api.spec import BenchmarkSpec
from optiserve_jobs.interference import benchmark_threads, run_queue_wait_ns
from optiserve_jobs.profiling import profile_operators
from optiserve_jobs.report import BatchTiming, VariantBenchmark
from optiserve_jobs.runners import VariantSpec
from optiserve_jobs.stability import Round, SpeedEvidence, SpeedVerdict, clean_pairs, speed_evidence


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss_bytes() -> int:
    """The worker's high-water mark of resident memory (VmHWM).

    Not getrusage's ru_maxrss: that survives fork and exec, so a worker would report its
    parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return _rss_bytes()


def _timed_round(
    run: Callable[[dict[str, np.ndarray]], Any], feed: dict[str, np.ndarray], iterations: int, threads: int
) -> Round:
    waited_before, started = run_queue_wait_ns(), time.perf_counter()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    wall_ns = (time.perf_counter() - started) * 1e9
    waited_after = run_queue_wait_ns()
    wait = None
    if waited_before is not None and waited_after is not None and wall_ns > 0:
        wait = (waited_after - waited_before) / (wall_ns * max(1, threads))
    return Round(tuple(times), wait)


def _worker(conn: Connection, variant: VariantSpec, threads: int, inputs: dict[int, dict[str, np.ndarray]]) -> None:
    """Runs in the child: build the runner once, then answer timing requests until told to stop."""
    try:
        before = _rss_bytes()
        runner = variant.build(threads)
        conn.send(("ready", _rss_bytes() - before))
        while True:
            command, *args = conn.recv()
            if command == "stop":
                break
            if command == "time":
                batch, warmup, iterations = args
                for _ in range(warmup):
                    runner.run(inputs[batch])
                conn.send(("times", _timed_round(runner.run, inputs[batch], iterations, threads)))
            elif command == "profile":
                conn.send(("profile", profile_operators(variant.onnx_path, threads, inputs[args[0]], args[1])))
            elif command == "rss":
                conn.send(("rss", _peak_rss_bytes()))
    except Exception as e:  # report to the parent instead of dying silently
        conn.send(("error", f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, variant: VariantSpec, threads: int, inputs: dict[int, dict[str, np.ndarray]]) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, variant, threads, inputs), daemon=True)
        self.process.start()
        self.model_rss_bytes = int(self._expect("ready"))

    def _expect(self, kind: str) -> Any:
        try:
            if not self.conn.poll(600):
                raise RuntimeError("benchmark worker did not answer within 600 s")
            answer, payload = self.conn.recv()
        except (EOFError, OSError) as e:
            raise RuntimeError(f"benchmark worker exited (code {self.process.exitcode})") from e
        if answer == "error":
            raise RuntimeError(f"benchmark worker failed: {payload}")
        if answer != kind:
            raise RuntimeError(f"benchmark worker answered {answer}, expected {kind}")
        return payload

    def ask(self, kind: str, *args: Any) -> Any:
        try:
            self.conn.send((kind, *args))
        except OSError as e:
            raise RuntimeError(f"benchmark worker exited (code {self.process.exitcode})") from e
        return self._expect({"time": "times"}.get(kind, kind))

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # the worker may already be going away
                self.conn.send(("stop",))
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _summarize(batch: int, rounds: list[Round], clean: list[int], max_wait_fraction: float) -> BatchTiming:
    """Percentiles over the undisturbed pairs' rounds (every round when none was undisturbed)."""
    judged = [rounds[i] for i in clean] or rounds
    pooled = np.asarray([t for r in judged for t in r.times_s]) * 1000.0
    p50 = statistics.median(r.median_s * 1000.0 for r in judged)
    waits = [r.wait_fraction for r in rounds if r.wait_fraction is not None]
    return BatchTiming(
        batch_size=batch,
        p50_ms=p50,
        p95_ms=float(np.percentile(pooled, 95)),
        p99_ms=float(np.percentile(pooled, 99)),
        throughput_per_s=batch * 1000.0 / p50,
        samples=len(pooled),
        rounds=len(rounds),
        disturbed_rounds=sum(r.disturbed(max_wait_fraction) for r in rounds),
        median_wait_fraction=statistics.median(waits) if waits else None,
    )


def evidence(baseline: VariantBenchmark, candidate: VariantBenchmark, batch: int, spec: BenchmarkSpec) -> SpeedEvidence:
    """The paired speedup of `candidate` over `baseline` at `batch`, from one run's rounds."""
    return _evidence(baseline.rounds[batch], candidate.rounds[batch], batch, spec)


def _evidence(baseline: list[Round], candidate: list[Round], batch: int, spec: BenchmarkSpec) -> SpeedEvidence:
    return speed_evidence(
        baseline,
        candidate,
        batch,
        needed=spec.repeats,
        max_wait_fraction=spec.stability.max_wait_fraction,
        confidence=spec.stability.confidence,
    )


def _settled(rounds: list[list[Round]], batch: int, spec: BenchmarkSpec, threshold: float | None) -> bool:
    """Enough undisturbed pairs, and every variant's paired speedup over the first one decided
    against `threshold` (None: no threshold to decide)."""
    if len(clean_pairs(rounds, spec.stability.max_wait_fraction)) < spec.repeats:
        return False
    undecided = (SpeedVerdict.TOO_FEW, SpeedVerdict.WITHIN_NOISE)
    return threshold is None or all(
        _evidence(rounds[0], other, batch, spec).verdict(threshold) not in undecided for other in rounds[1:]
    )


def _time_batch(
    workers: list[_Worker], batch: int, spec: BenchmarkSpec, threshold: float | None, on_progress: Callable[[str], None]
) -> list[list[Round]]:
    """Paired rounds at one batch size: `repeats` of them, then more while they are disturbed or
    leave `threshold` within their noise, up to `repeats x stability.budget`."""
    for worker in workers:
        worker.ask("time", batch, spec.warmup, 1)  # warm-up round per batch size
    rounds: list[list[Round]] = [[] for _ in workers]
    limit = spec.repeats * spec.stability.budget
    for pair in range(limit):
        if pair >= spec.repeats and _settled(rounds, batch, spec, threshold if batch == spec.batch_sizes[0] else None):
            break
        extra = "" if pair < spec.repeats else " (re-measuring: disturbed rounds, or the gate within the noise)"
        on_progress(f"batch {batch}: round {pair + 1}/{spec.repeats}{extra}")
        for index, worker in enumerate(workers):
            rounds[index].append(worker.ask("time", batch, 0, spec.iterations))
    return rounds


def run_benchmark(
    variants: list[tuple[VariantSpec, str, Path]],
    inputs: dict[int, dict[str, np.ndarray]],
    spec: BenchmarkSpec,
    on_progress: Callable[[str], None] = lambda _: None,
    threshold: float | None = None,
) -> list[VariantBenchmark]:
    """Time each (variant, runtime, model file) at each batch size; alternate variants every round.
    `threshold`: the speed gate's, which the first batch size's rounds must decide if they can."""
    threads = benchmark_threads(spec.threads)
    workers = []
    try:
        for variant, _, _ in variants:
            on_progress(f"loading {variant.name}")
            workers.append(_Worker(variant, threads, inputs))
        by_batch = {batch: _time_batch(workers, batch, spec, threshold, on_progress) for batch in spec.batch_sizes}
        clean = {batch: clean_pairs(rounds, spec.stability.max_wait_fraction) for batch, rounds in by_batch.items()}
        results = []
        for index, ((variant, runtime, model_file), worker) in enumerate(zip(variants, workers, strict=True)):
            mine = {batch: rounds[index] for batch, rounds in by_batch.items()}
            peak_rss_bytes = int(worker.ask("rss"))
            top_operators: list[dict[str, float | str]] = []
            if spec.profile and variant.onnx_path is not None:
                on_progress(f"profiling {variant.name}")
                top_operators = worker.ask("profile", spec.batch_sizes[0], spec.iterations)
            result = VariantBenchmark(
                name=variant.name,
                runtime=runtime,
                model_bytes=model_file.stat().st_size if model_file.is_file() else _dir_size(model_file),
                peak_rss_bytes=peak_rss_bytes,
                model_rss_bytes=worker.model_rss_bytes,
                batches=[_summarize(b, mine[b], clean[b], spec.stability.max_wait_fraction) for b in spec.batch_sizes],
                top_operators=top_operators,
                rounds=mine,
            )
            results.append(result)
        return results
    finally:
        for worker in workers:
            worker.close()


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
