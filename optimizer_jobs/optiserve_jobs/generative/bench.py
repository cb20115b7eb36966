"""Side-by-side generation benchmark of causal LM variants: time to first token, inter-token
latency and batched decode throughput.

As in the encoder benchmark (`optiserve_jobs.benchmark`), every variant runs in its own worker
process with the same thread count (ONNX Runtime's and PyTorch's thread pools must not compete in
one process), and the parent asks one worker at a time for a round (v0, v1, v2, v0, v1, v2, ...), so
drift of the machine falls evenly on every variant. A round measures the three things a chat
client feels: the prefill of prompts of several lengths, greedy decoding one token at a time at
batch 1, and decoding several sequences together. Each round also records how long the worker's
threads waited for a CPU: a round that waited too long measured the machine, so the parent asks
for more rounds, within a budget, until it has enough undisturbed pairs against the baseline (the
first variant), and the summaries rest on those pairs only (`optiserve_jobs.stability`).

Greedy decoding runs a fixed number of steps whatever the tokens are (an end-of-sequence token does
not stop it): every variant does the same work, which is what a latency comparison needs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from optiserve_jobs.generative.decoder import OrtDecoder
from optiserve_jobs.generative.torch_decoder import TorchDecoder
from optiserve_jobs.interference import benchmark_threads, run_queue_wait_ns
from optiserve_jobs.stability import Round, SpeedEvidence, clean_pairs, speed_evidence

DECODE_PROMPT_LENGTH = 128
"""The prompt the decode measurements start from (the smallest prompt length where the context is shorter)."""
WORKER_TIMEOUT_S = 1800.0
"""The longest a worker may take to load its model or to answer one request."""
_MB = 1_000_000
_IDS_LOW, _IDS_HIGH_MARGIN = 100, 1000
"""Prompt ids lie in [100, vocab - 1000): clear of the special tokens at either end of the vocabulary."""

TokenIds = npt.NDArray[np.int64]


class BenchmarkWorkerError(RuntimeError):
    """A variant's worker failed or went away; the message names the variant."""


class _Decoder(Protocol):
    """What `OrtDecoder` and `TorchDecoder` share: the benchmark drives both through it."""

    def empty_cache(self, batch: int) -> Any: ...

    def forward(self, input_ids: TokenIds, cache: Any) -> tuple[npt.NDArray[np.float32], Any]: ...


@dataclass(frozen=True)
class GenerationVariant:
    """A variant to time: an ONNX decoder (`onnx_path`) or a Hugging Face folder on PyTorch (`hf_dir`)."""

    name: str
    onnx_path: Path | None = None
    hf_dir: Path | None = None

    def __post_init__(self) -> None:
        if (self.onnx_path is None) == (self.hf_dir is None):
            raise ValueError(f"variant {self.name!r}: give exactly one of onnx_path and hf_dir")

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.onnx_path is not None else "pytorch"

    def size_bytes(self) -> int:
        """The weights on disk: the ONNX file and its external data, or the folder's weight files."""
        if self.onnx_path is not None:
            return _onnx_size_bytes(self.onnx_path)
        assert self.hf_dir is not None
        return _hf_weights_bytes(self.hf_dir)

    def load(self, threads: int) -> _Decoder:
        if self.onnx_path is not None:
            return OrtDecoder(self.onnx_path, threads)
        assert self.hf_dir is not None
        return TorchDecoder(self.hf_dir, threads)


def _onnx_size_bytes(model_path: Path) -> int:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    locations = {
        str(entry.value)
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return model_path.stat().st_size + sum((model_path.parent / location).stat().st_size for location in locations)


def _hf_weights_bytes(hf_dir: Path) -> int:
    """The safetensors files, or the PyTorch .bin files where there are none (a folder may hold both)."""
    files = [p for p in hf_dir.iterdir() if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"] or [p for p in files if p.suffix == ".bin"]
    return sum(p.stat().st_size for p in weights)


@dataclass(frozen=True)
class GenerationBenchSettings:
    prompt_lengths: tuple[int, ...] = (32, 128, 512)
    decode_tokens: int = 32
    batch_sizes: tuple[int, ...] = (1, 8)
    rounds: int = 3
    """Clean paired rounds wanted for every variant against the baseline."""
    max_rounds: int = 6
    """Rounds at most, while disturbed ones leave too few clean pairs."""
    max_wait_fraction: float = 0.05
    confidence: float = 0.9
    seed: int = 0
    warmup_rounds: int = 1
    """Untimed rounds per worker first: the first runs of each shape allocate and initialize."""

    def __post_init__(self) -> None:
        if not self.prompt_lengths or min(self.prompt_lengths) < 1:
            raise ValueError("prompt_lengths: at least one, each at least 1")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch_sizes: at least one, each at least 1")
        if self.decode_tokens < 1 or self.rounds < 1 or self.warmup_rounds < 0:
            raise ValueError("decode_tokens and rounds must be at least 1, warmup_rounds at least 0")
        if self.max_rounds < self.rounds:
            raise ValueError(f"max_rounds ({self.max_rounds}) must be at least rounds ({self.rounds})")


@dataclass(frozen=True)
class GenerationRound:
    """One round of one variant, in seconds."""

    ttft_s: dict[int, float]
    """Prompt length -> time from the prefill call to the first token."""
    step_s: dict[int, tuple[float, ...]]
    """Batch size -> each decode step's time; batch 1 always (the inter-token latency)."""
    wait_fraction: float | None
    """Run-queue wait of the worker's threads / (wall time x threads); None where not exposed."""
    wall_s: float

    @property
    def itl_s(self) -> tuple[float, ...]:
        return self.step_s[1]

    def tokens_per_s(self, batch: int) -> float:
        """Decode throughput at `batch`: every step makes one token of each sequence."""
        steps = self.step_s[batch]
        return batch * len(steps) / sum(steps)

    def decode_round(self) -> Round:
        """The batch-1 decode steps as a stability round: what paired speed verdicts compare."""
        return Round(self.itl_s, self.wait_fraction)


@dataclass(frozen=True)
class GenerationVariantResult:
    """One variant's figures, each a median or percentile over its clean rounds (over all of its
    rounds when none was clean: `clean_rounds` is then 0)."""

    name: str
    runtime: str
    size_bytes: int
    peak_rss_bytes: int
    """The worker's high-water mark of resident memory."""
    ttft_ms: dict[int, float]
    itl_ms_p50: float
    itl_ms_p90: float
    """Percentiles over every decode step at batch 1 of the clean rounds."""
    decode_tokens_per_s: dict[int, float]
    rounds_measured: int
    clean_rounds: int
    """Rounds paired with an undisturbed baseline round, neither of them disturbed."""
    median_wait_fraction: float | None
    rounds: Annotated[list[GenerationRound], Field(exclude=True)] = field(default_factory=list)
    """Every timed round, index-aligned across the variants of one run; not serialized."""


class GenerationBenchmarkResult(BaseModel):
    threads: int
    settings: GenerationBenchSettings
    baseline: str
    """The first variant: the one clean pairs are counted against."""
    variants: list[GenerationVariantResult]

    def variant(self, name: str) -> GenerationVariantResult:
        for result in self.variants:
            if result.name == name:
                return result
        raise KeyError(f"no variant {name!r} in the benchmark (have {', '.join(v.name for v in self.variants)})")


# The worker process.


def _peak_rss_bytes() -> int:
    """The worker's VmHWM. Not getrusage's ru_maxrss: that survives fork and exec, so a spawned
    worker would report its parent's peak where that is higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _model_limits(decoder: _Decoder) -> tuple[int, int]:
    """(vocabulary size, context length) of a loaded decoder."""
    if isinstance(decoder, OrtDecoder):
        return decoder.shape.vocab_size, decoder.shape.context_length
    if isinstance(decoder, TorchDecoder):
        config = decoder.model.config
        return int(config.vocab_size), int(config.max_position_embeddings)
    raise TypeError(f"not a decoder this benchmark knows: {type(decoder).__name__}")


@dataclass(frozen=True)
class _Plan:
    """The prompts one round runs: the same ids in every round and every variant."""

    ttft_prompts: dict[int, TokenIds]
    decode_prompts: dict[int, TokenIds]
    """Batch size -> [batch, decode prompt length]; batch 1 always."""
    decode_tokens: int


def _prompt_ids(seed: int, batch: int, length: int, vocab: int) -> TokenIds:
    low, high = _IDS_LOW, vocab - _IDS_HIGH_MARGIN
    if high <= low:  # a toy vocabulary
        low, high = 0, vocab
    return np.random.default_rng((seed, batch, length)).integers(low, high, size=(batch, length), dtype=np.int64)


def _plan(settings: GenerationBenchSettings, vocab: int, context: int) -> _Plan:
    too_long = [length for length in settings.prompt_lengths if length > context]
    if too_long:
        raise ValueError(f"prompt lengths {too_long} exceed the model's context of {context} tokens")
    decode_length = DECODE_PROMPT_LENGTH
    if decode_length + settings.decode_tokens > context:
        decode_length = min(settings.prompt_lengths)
    if decode_length + settings.decode_tokens > context:
        raise ValueError(f"a {decode_length}-token prompt and {settings.decode_tokens} decoded tokens exceed the context")
    batches = sorted({1, *settings.batch_sizes})
    return _Plan(
        ttft_prompts={length: _prompt_ids(settings.seed, 1, length, vocab) for length in settings.prompt_lengths},
        decode_prompts={batch: _prompt_ids(settings.seed, batch, decode_length, vocab) for batch in batches},
        decode_tokens=settings.decode_tokens,
    )


def _greedy(logits: npt.NDArray[np.float32]) -> TokenIds:
    """The next token of every sequence, [batch, 1], from the last position's logits."""
    ids: TokenIds = np.argmax(logits[:, -1, :], axis=-1).astype(np.int64)[:, None]
    return ids


def _time_to_first_token(decoder: _Decoder, ids: TokenIds) -> float:
    start = time.perf_counter()
    logits, _ = decoder.forward(ids, decoder.empty_cache(ids.shape[0]))
    _greedy(logits)
    return time.perf_counter() - start


def _decode_step_times(decoder: _Decoder, ids: TokenIds, steps: int) -> tuple[float, ...]:
    """Prefill `ids` [batch, length] (untimed), then time `steps` greedy steps of [batch, 1] each:
    from handing over the last tokens to having the next ones."""
    logits, cache = decoder.forward(ids, decoder.empty_cache(ids.shape[0]))
    next_ids, times = _greedy(logits), []
    for _ in range(steps):
        start = time.perf_counter()
        logits, cache = decoder.forward(next_ids, cache)
        next_ids = _greedy(logits)
        times.append(time.perf_counter() - start)
    return tuple(times)


def _measure_round(decoder: _Decoder, plan: _Plan, threads: int) -> GenerationRound:
    waited_before, started = run_queue_wait_ns(), time.perf_counter()
    ttft = {length: _time_to_first_token(decoder, ids) for length, ids in plan.ttft_prompts.items()}
    steps = {batch: _decode_step_times(decoder, ids, plan.decode_tokens) for batch, ids in plan.decode_prompts.items()}
    wall_s = time.perf_counter() - started
    waited_after = run_queue_wait_ns()
    wait = None
    if waited_before is not None and waited_after is not None and wall_s > 0:
        wait = (waited_after - waited_before) / (wall_s * 1e9 * max(1, threads))
    return GenerationRound(ttft_s=ttft, step_s=steps, wait_fraction=wait, wall_s=wall_s)


def _worker(conn: Connection, variant: GenerationVariant, threads: int, settings: GenerationBenchSettings) -> None:
    """Runs in the child: load the decoder once, then answer requests until told to stop."""
    try:
        decoder = variant.load(threads)
        plan = _plan(settings, *_model_limits(decoder))
        conn.send(("ready", None))
        while True:
            command = conn.recv()
            if command == "stop":
                break
            if command == "round":
                conn.send(("round", _measure_round(decoder, plan, threads)))
            elif command == "rss":
                conn.send(("rss", _peak_rss_bytes()))
    except Exception as e:  # report to the parent instead of dying silently
        with contextlib.suppress(OSError):  # the parent may be gone
            conn.send(("error", f"{type(e).__name__}: {e}"))


# The parent.


class _Worker:
    def __init__(self, variant: GenerationVariant, threads: int, settings: GenerationBenchSettings) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = variant.name
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, variant, threads, settings), daemon=True)
        self.process.start()
        child.close()  # the parent's copy: without it, the worker's death would not end a recv
        try:
            self._expect("ready")
        except BaseException:
            self.close()
            raise

    def _fail(self, why: str) -> BenchmarkWorkerError:
        return BenchmarkWorkerError(f"generation benchmark of variant {self.name!r}: {why}")

    def _expect(self, kind: str) -> Any:
        try:
            if not self.conn.poll(WORKER_TIMEOUT_S):
                raise self._fail(f"the worker did not answer within {WORKER_TIMEOUT_S:.0f} s")
            answer, payload = self.conn.recv()
        except (EOFError, OSError) as e:
            self.process.join(timeout=5)
            raise self._fail(f"the worker exited (code {self.process.exitcode})") from e
        if answer == "error":
            raise self._fail(f"the worker failed: {payload}")
        if answer != kind:
            raise self._fail(f"the worker answered {answer}, expected {kind}")
        return payload

    def ask(self, command: str) -> Any:
        try:
            self.conn.send(command)
        except OSError as e:
            raise self._fail(f"the worker exited (code {self.process.exitcode})") from e
        return self._expect(command)

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # the worker may already be going away
                self.conn.send("stop")
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _clean_indices(rounds: list[list[GenerationRound]], index: int, max_wait_fraction: float) -> list[int]:
    """The rounds of variant `index` whose pair with the baseline's round is undisturbed (for the
    baseline itself: its undisturbed rounds)."""
    return clean_pairs([[r.decode_round() for r in rounds[0]], [r.decode_round() for r in rounds[index]]], max_wait_fraction)


def _enough(rounds: list[list[GenerationRound]], settings: GenerationBenchSettings) -> bool:
    return all(len(_clean_indices(rounds, index, settings.max_wait_fraction)) >= settings.rounds for index in range(len(rounds)))


def _alternate(
    workers: list[_Worker], settings: GenerationBenchSettings, progress: Callable[[str], None]
) -> list[list[GenerationRound]]:
    """Rounds v0, v1, ..., v0, v1, ...: `settings.rounds` of them, more while disturbed ones leave
    too few clean pairs, `settings.max_rounds` at most."""
    for number in range(settings.warmup_rounds):
        progress(f"warm-up round {number + 1}/{settings.warmup_rounds}")
        for worker in workers:
            worker.ask("round")
    rounds: list[list[GenerationRound]] = [[] for _ in workers]
    for number in range(settings.max_rounds):
        extra = "" if number < settings.rounds else " (re-measuring: disturbed rounds)"
        progress(f"round {number + 1}/{settings.rounds}{extra}")
        for index, worker in enumerate(workers):
            rounds[index].append(worker.ask("round"))
        if _enough(rounds, settings):
            break
    return rounds


def _summarize(
    variant: GenerationVariant,
    peak_rss_bytes: int,
    mine: list[GenerationRound],
    clean: list[int],
    settings: GenerationBenchSettings,
) -> GenerationVariantResult:
    judged = [mine[i] for i in clean] or mine
    itl_ms = np.asarray([t for r in judged for t in r.itl_s]) * 1000.0
    waits = [r.wait_fraction for r in mine if r.wait_fraction is not None]
    return GenerationVariantResult(
        name=variant.name,
        runtime=variant.runtime,
        size_bytes=variant.size_bytes(),
        peak_rss_bytes=peak_rss_bytes,
        ttft_ms={length: statistics.median(r.ttft_s[length] for r in judged) * 1000.0 for length in settings.prompt_lengths},
        itl_ms_p50=float(np.percentile(itl_ms, 50)),
        itl_ms_p90=float(np.percentile(itl_ms, 90)),
        decode_tokens_per_s={batch: statistics.median(r.tokens_per_s(batch) for r in judged) for batch in settings.batch_sizes},
        rounds_measured=len(mine),
        clean_rounds=len(clean),
        median_wait_fraction=statistics.median(waits) if waits else None,
        rounds=mine,
    )


def run_generation_benchmark(
    variants: Sequence[GenerationVariant],
    threads: int | None,
    settings: GenerationBenchSettings,
    progress: Callable[[str], None] = lambda _: None,
) -> GenerationBenchmarkResult:
    """Time every variant with `threads` threads (None: the CPUs this container may use); the first
    variant is the baseline the clean pairs are counted against."""
    if not variants:
        raise ValueError("no variants to benchmark")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must differ: {names}")
    threads = benchmark_threads(threads)
    workers: list[_Worker] = []
    try:
        for variant in variants:
            progress(f"loading {variant.name}")
            workers.append(_Worker(variant, threads, settings))
        rounds = _alternate(workers, settings, progress)
        results = [
            _summarize(
                variant,
                int(worker.ask("rss")),
                rounds[index],
                _clean_indices(rounds, index, settings.max_wait_fraction),
                settings,
            )
            for index, (variant, worker) in enumerate(zip(variants, workers, strict=True))
        ]
    finally:
        for worker in workers:
            worker.close()
    return GenerationBenchmarkResult(threads=threads, settings=settings, baseline=variants[0].name, variants=results)


def decode_speed_evidence(result: GenerationBenchmarkResult, baseline_name: str, candidate_name: str) -> SpeedEvidence:
    """The paired decode speedup of `candidate_name` over `baseline_name` at batch 1: baseline
    inter-token latency / candidate's, round by round, which is candidate tokens/s over baseline's."""
    baseline, candidate = result.variant(baseline_name), result.variant(candidate_name)
    if not baseline.rounds or not candidate.rounds:
        raise ValueError("the benchmark's rounds are gone (a result read back from JSON keeps only the summaries)")
    return speed_evidence(
        [r.decode_round() for r in baseline.rounds],
        [r.decode_round() for r in candidate.rounds],
        1,
        needed=result.settings.rounds,
        max_wait_fraction=result.settings.max_wait_fraction,
        confidence=result.settings.confidence,
    )


def render_markdown(result: GenerationBenchmarkResult) -> str:
    """The results as a markdown table, one row per variant (MB: 10^6 bytes)."""
    settings = result.settings
    header = [
        "Variant",
        "Size MB",
        *(f"TTFT@{length} ms" for length in settings.prompt_lengths),
        "ITL p50 ms",
        "ITL p90 ms",
        *(f"tok/s @{batch}" for batch in settings.batch_sizes),
        "Peak RSS MB",
        "Clean rounds",
    ]
    rows = [header, ["---"] * len(header)]
    for v in result.variants:
        rows.append(
            [
                v.name,
                f"{v.size_bytes / _MB:.1f}",
                *(f"{v.ttft_ms[length]:.2f}" for length in settings.prompt_lengths),
                f"{v.itl_ms_p50:.2f}",
                f"{v.itl_ms_p90:.2f}",
                *(f"{v.decode_tokens_per_s[batch]:.1f}" for batch in settings.batch_sizes),
                f"{v.peak_rss_bytes / _MB:.0f}",
                f"{v.clean_rounds}/{v.rounds_measured}",
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"
