"""The generation benchmark on the tiny Llama: its ONNX decoder against its PyTorch folder."""

from __future__ import annotations

import json
import multiprocessing
import statistics
from pathlib import Path

import psutil
import pytest

from optiserve_jobs.generative.bench import (
    BenchmarkWorkerError,
    GenerationBenchmarkResult,
    GenerationBenchSettings,
    GenerationRound,
    GenerationVariant,
    GenerationVariantResult,
    decode_speed_evidence,
    render_markdown,
    run_generation_benchmark,
)
from tests.support.tiny_llm import tiny_decoder_onnx

SETTINGS = GenerationBenchSettings(prompt_lengths=(8, 32), decode_tokens=4, batch_sizes=(1, 2), rounds=1, max_rounds=1)
"""One round exactly (max_rounds 1), so every summary is that round's figures."""


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> list[GenerationVariant]:
    root = tmp_path_factory.mktemp("tiny-llm")
    onnx_path = tiny_decoder_onnx(root)
    return [GenerationVariant("pytorch", hf_dir=root / "hf"), GenerationVariant("onnx-fp32", onnx_path=onnx_path)]


@pytest.fixture(scope="module")
def result(variants: list[GenerationVariant]) -> GenerationBenchmarkResult:
    return run_generation_benchmark(variants, 1, SETTINGS)


def _benchmark_workers() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_every_variant_has_the_figures_asked_for(result: GenerationBenchmarkResult) -> None:
    assert result.baseline == "pytorch"
    assert result.threads == 1
    assert [v.name for v in result.variants] == ["pytorch", "onnx-fp32"]
    for v in result.variants:
        assert set(v.ttft_ms) == {8, 32}
        assert all(ms > 0 for ms in v.ttft_ms.values())
        assert set(v.decode_tokens_per_s) == {1, 2}
        assert all(rate > 0 for rate in v.decode_tokens_per_s.values())
        assert 0 < v.itl_ms_p50 <= v.itl_ms_p90
        assert v.size_bytes > 10_000_000  # the tiny model's weights: about 13 MB
        assert v.peak_rss_bytes > v.size_bytes
        assert v.rounds_measured == len(v.rounds) == 1
        assert v.clean_rounds in (0, 1)


def test_the_summaries_follow_from_the_measured_steps(result: GenerationBenchmarkResult) -> None:
    for v in result.variants:
        (measured,) = v.rounds
        assert set(measured.step_s) == {1, 2}
        assert all(len(steps) == SETTINGS.decode_tokens for steps in measured.step_s.values())
        # each step at batch 2 makes two tokens
        assert v.decode_tokens_per_s[2] == pytest.approx(2 * SETTINGS.decode_tokens / sum(measured.step_s[2]))
        assert v.decode_tokens_per_s[1] == pytest.approx(SETTINGS.decode_tokens / sum(measured.itl_s))
        assert v.itl_ms_p50 == pytest.approx(statistics.median(measured.itl_s) * 1000.0)
        assert v.ttft_ms[32] == pytest.approx(measured.ttft_s[32] * 1000.0)
        assert measured.wall_s >= sum(measured.ttft_s.values()) + sum(map(sum, measured.step_s.values()))


def test_the_decode_evidence_pairs_the_rounds(result: GenerationBenchmarkResult) -> None:
    evidence = decode_speed_evidence(result, "pytorch", "onnx-fp32")
    assert evidence.batch_size == 1
    assert evidence.pairs == 1
    baseline, candidate = result.variant("pytorch").rounds[0], result.variant("onnx-fp32").rounds[0]
    for ratio in evidence.ratios:  # none when the round was disturbed
        assert ratio == pytest.approx(statistics.median(baseline.itl_s) / statistics.median(candidate.itl_s))


def test_the_result_serializes_without_its_rounds(result: GenerationBenchmarkResult) -> None:
    dumped = json.loads(result.model_dump_json())
    assert set(dumped["variants"][0]) >= {"ttft_ms", "itl_ms_p50", "itl_ms_p90", "decode_tokens_per_s", "peak_rss_bytes"}
    assert "rounds" not in dumped["variants"][0]
    assert set(dumped["variants"][0]["ttft_ms"]) == {"8", "32"}
    assert _benchmark_workers() == []


def test_a_variant_that_cannot_load_is_named_and_no_worker_survives(variants: list[GenerationVariant], tmp_path: Path) -> None:
    missing = GenerationVariant("int4-missing", onnx_path=tmp_path / "nowhere" / "model.onnx")
    with pytest.raises(BenchmarkWorkerError, match="int4-missing"):
        run_generation_benchmark([variants[1], missing], 1, SETTINGS)
    assert multiprocessing.active_children() == []
    assert _benchmark_workers() == []


def test_a_variant_needs_exactly_one_model() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        GenerationVariant("both", onnx_path=Path("a.onnx"), hf_dir=Path("hf"))
    with pytest.raises(ValueError, match="exactly one"):
        GenerationVariant("neither")
    with pytest.raises(ValueError, match="max_rounds"):
        GenerationBenchSettings(rounds=3, max_rounds=2)


def _hand_built(
    name: str, ttft: tuple[float, float], itl: tuple[float, float], rates: tuple[float, float]
) -> GenerationVariantResult:
    return GenerationVariantResult(
        name=name,
        runtime="onnxruntime",
        size_bytes=134_500_000,
        peak_rss_bytes=612_300_000,
        ttft_ms={8: ttft[0], 32: ttft[1]},
        itl_ms_p50=itl[0],
        itl_ms_p90=itl[1],
        decode_tokens_per_s={1: rates[0], 2: rates[1]},
        rounds_measured=4,
        clean_rounds=3,
        median_wait_fraction=0.01,
        rounds=[GenerationRound({8: 0.01, 32: 0.02}, {1: (0.005,), 2: (0.006,)}, 0.01, 0.1)],
    )


def test_the_markdown_table_has_a_column_per_prompt_length_and_batch() -> None:
    result = GenerationBenchmarkResult(
        threads=4,
        settings=SETTINGS,
        baseline="pytorch",
        variants=[
            _hand_built("pytorch", (12.345, 40.0), (5.5, 6.25), (180.0, 300.04)),
            _hand_built("int8", (3.0, 9.5), (1.25, 1.5), (800.0, 1400.0)),
        ],
    )
    lines = render_markdown(result).splitlines()
    assert lines[0] == (
        "| Variant | Size MB | TTFT@8 ms | TTFT@32 ms | ITL p50 ms | ITL p90 ms "
        "| tok/s @1 | tok/s @2 | Peak RSS MB | Clean rounds |"
    )
    assert lines[1] == "| " + " | ".join(["---"] * 10) + " |"
    assert lines[2] == "| pytorch | 134.5 | 12.35 | 40.00 | 5.50 | 6.25 | 180.0 | 300.0 | 612 | 3/4 |"
    assert lines[3] == "| int8 | 134.5 | 3.00 | 9.50 | 1.25 | 1.50 | 800.0 | 1400.0 | 612 | 3/4 |"
    assert len(lines) == 4
