"""The candidate as local mode serves it when asked to regress (`optiserve run --inject ...`).

``latency=2x`` means the candidate answers about twice as slowly *as the baseline*: a regression
the canary must catch. The Python-backend model slows itself by a factor of its own compute time,
and an optimized candidate is usually several times faster than the baseline, so "2x its own time"
would still be faster than the baseline and rightly promoted. Both ONNX models are timed here,
in-process, on the golden set with the serving thread count, and the factor applied to the
candidate is the requested one times baseline/candidate (never less than the requested one).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from optiserve.artifact import verify_artifact
from optiserve.golden import GOLDEN_FILE, GoldenSample, load_golden
from optiserve.local.canary_servers import REPOSITORY
from optiserve.local.inject import Injection, inject_in_place, parse_injections

TIMING_SAMPLES = 16
TIMING_ROUNDS = 3

Progress = Callable[[str], None]


def onnx_latency_ms(model: Path, samples: Sequence[GoldenSample], threads: int) -> float:
    """Median latency (ms) of one request at a time, as the served model runs them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    feeds = [dict(sample.inputs) for sample in samples]
    session.run(None, feeds[0])  # warm-up
    timings = []
    for _ in range(TIMING_ROUNDS):
        for feed in feeds:
            started = time.perf_counter()
            session.run(None, feed)
            timings.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(timings)


def relative_latency_factor(requested: float, baseline_ms: float, candidate_ms: float) -> float:
    """The slowdown of the candidate's own compute that makes it ``requested`` times the baseline."""
    return requested * max(1.0, baseline_ms / candidate_ms)


def _onnx_file(artifact_dir: Path, model: str) -> Path:
    found = sorted((artifact_dir / REPOSITORY / model).glob("*/model.onnx"))
    if not found:
        raise FileNotFoundError(f"{artifact_dir / REPOSITORY / model}: no <version>/model.onnx to time")
    return found[-1]


@dataclass(frozen=True)
class VariantDirs:
    """One model's two artifact directories: what serves now, and the candidate on trial."""

    model: str
    baseline_dir: Path
    candidate_dir: Path


def calibrated(injection: Injection, variants: VariantDirs, threads: int, progress: Progress) -> Injection:
    if injection.latency_factor is None:
        return injection
    model = variants.model
    samples = load_golden(variants.candidate_dir / GOLDEN_FILE, limit=TIMING_SAMPLES)
    baseline_ms = onnx_latency_ms(_onnx_file(variants.baseline_dir, model), samples, threads)
    candidate_ms = onnx_latency_ms(_onnx_file(variants.candidate_dir, model), samples, threads)
    factor = relative_latency_factor(injection.latency_factor, baseline_ms, candidate_ms)
    progress(
        f"latency={injection.latency_factor:g}x of the baseline: baseline {baseline_ms:.2f} ms, candidate {candidate_ms:.2f} ms "
        f"per request; slowing the candidate's compute {factor:.2f}x"
    )
    return replace(injection, latency_factor=factor)


def served_candidate(options: Sequence[str], variants: VariantDirs, work_dir: Path, threads: int, progress: Progress) -> Path:
    """The candidate's artifact directory to serve: the published one, or an injected copy of it."""
    injection = parse_injections(options)  # InjectionError (a ValueError) names a bad value
    candidate_dir, model = variants.candidate_dir, variants.model
    if not injection.parameters():
        return candidate_dir
    injection = calibrated(injection, variants, threads, progress)
    from optiserve_jobs.repository import seal

    served = work_dir / "candidate-injected"
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(candidate_dir, served)
    verify_artifact(served)  # the copy is what was published...
    inject_in_place(served / REPOSITORY, injection)
    seal(served, model)  # ...and its manifest now covers the injected config.pbtxt, checked before serving
    progress(f"candidate made to regress on purpose: {injection}")
    return served
