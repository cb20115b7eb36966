"""The comparator's pure parts: per-sample comparison, counting, the probe round with fake variants, flags."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from wsgiref.util import setup_testing_defaults

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from prometheus_client import generate_latest

from optiserve.api.spec import Task, ValidationSpec
from optiserve.cli import main
from optiserve.comparator.compare import (
    WORST_COSINE,
    AgreementRule,
    OutputMismatchError,
    agreement_threshold,
    compare_sample,
    cosine,
)
from optiserve.comparator.metrics import ComparatorMetrics
from optiserve.comparator.probe import GoldenCursor, ProbeLoop, ProbeSettings, probe_sample
from optiserve.comparator.service import Health, http_app
from optiserve.comparator.triton import split_url
from optiserve.golden import GoldenSample

CLASSIFIER = AgreementRule(Task.CLASSIFICATION)
EMBEDDING = AgreementRule(Task.EMBEDDING, threshold=0.95)


def _sample(index: int, label: int | None = None) -> GoldenSample:
    return GoldenSample(inputs={"x": np.full((1, 3), float(index), dtype=np.float32)}, label=label)


# -- comparison ---------------------------------------------------------------------------------


def test_cosine_of_equal_scaled_opposite_and_zero_outputs() -> None:
    a = np.array([[1.0, 2.0, 3.0]])
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, 5 * a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(a, np.zeros((1, 3))) == 0.0


def test_non_finite_outputs_score_worst_and_mismatched_sizes_are_errors() -> None:
    a = np.array([1.0, 2.0])
    assert cosine(a, np.array([np.nan, 1.0])) == WORST_COSINE
    assert cosine(np.array([np.inf, 1.0]), a) == WORST_COSINE
    with pytest.raises(OutputMismatchError, match="2 and 3 values"):
        cosine(a, np.ones(3))
    with pytest.raises(OutputMismatchError):
        cosine(np.array([]), np.array([]))


# No subnormals: scaling one underflows to a zero vector.
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=False, width=32)


@given(arrays(np.float32, 6, elements=finite), arrays(np.float32, 6, elements=finite), st.floats(0.01, 100))
def test_cosine_is_symmetric_bounded_and_scale_free(a: np.ndarray, b: np.ndarray, scale: float) -> None:
    value = cosine(a, b)
    assert -1.0 <= value <= 1.0
    assert cosine(b, a) == pytest.approx(value, abs=1e-9)
    if a.any() and b.any():
        assert cosine(a * np.float32(scale), b) == pytest.approx(value, abs=1e-5)


def test_classifier_agreement_is_top1_and_accuracy_follows_the_label() -> None:
    baseline = np.array([[0.1, 0.7, 0.2]])
    close = np.array([[0.0, 0.9, 0.1]])
    other = np.array([[0.8, 0.1, 0.1]])
    same = compare_sample(baseline, close, 1, CLASSIFIER)
    assert same.agrees and same.baseline_correct and same.candidate_correct
    wrong = compare_sample(baseline, other, 1, CLASSIFIER)
    assert not wrong.agrees and wrong.baseline_correct and wrong.candidate_correct is False
    unlabelled = compare_sample(baseline, close, None, CLASSIFIER)
    assert unlabelled.baseline_correct is None and unlabelled.candidate_correct is None


def test_a_nan_candidate_never_agrees_and_is_never_correct() -> None:
    baseline = np.array([0.0, 1.0, 0.0])
    result = compare_sample(baseline, np.array([np.nan, np.nan, np.nan]), 1, CLASSIFIER)
    assert not result.agrees and result.candidate_correct is False and result.cosine == WORST_COSINE


def test_embedding_agreement_is_cosine_at_or_above_the_threshold() -> None:
    baseline = np.array([1.0, 0.0])
    at = np.array([0.95, np.sqrt(1 - 0.95**2)])  # cosine exactly 0.95
    below = np.array([0.9, np.sqrt(1 - 0.9**2)])
    assert compare_sample(baseline, at, None, EMBEDDING).agrees
    assert not compare_sample(baseline, below, None, EMBEDDING).agrees


def test_threshold_defaults_from_the_validation_spec() -> None:
    assert agreement_threshold(None) == 0.99
    assert agreement_threshold(ValidationSpec(dataset_uri="v.npz", max_degradation=0.02)) == pytest.approx(0.98)
    spec = ValidationSpec(dataset_uri="v.npz", max_degradation=0.02, min_worst_fidelity=0.9)
    assert agreement_threshold(spec) == 0.9
    with pytest.raises(ValueError, match="threshold"):
        AgreementRule(Task.EMBEDDING, threshold=1.5)


# -- counting -----------------------------------------------------------------------------------


def test_series_the_judge_reads_exist_at_zero_from_the_start() -> None:
    text = generate_latest(ComparatorMetrics("digits", labelled=True).registry).decode()
    for metric in ("agreement", "accuracy"):
        assert f'optiserve_comparator_compared_total{{metric="{metric}",model="digits"}} 0.0' in text
        assert f'optiserve_comparator_agreeing_total{{metric="{metric}",model="digits"}} 0.0' in text
    assert 'optiserve_comparator_errors_total{model="digits",variant="candidate"} 0.0' in text


def test_without_labels_there_is_no_accuracy_series() -> None:
    text = generate_latest(ComparatorMetrics("minilm", labelled=False).registry).decode()
    assert 'metric="agreement"' in text and 'metric="accuracy"' not in text


# -- probing with fake variants -----------------------------------------------------------------


def _answers(table: dict[float, list[float]]) -> Callable[[GoldenSample], Awaitable[np.ndarray]]:
    async def infer(sample: GoldenSample) -> np.ndarray:
        return np.array([table[float(sample.inputs["x"][0, 0])]])

    return infer


def _run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_probe_counts_agreement_accuracy_and_correct_per_variant() -> None:
    metrics = ComparatorMetrics("m", labelled=True)
    baseline = _answers({0: [1, 0], 1: [0, 1], 2: [1, 0]})
    candidate = _answers({0: [1, 0], 1: [1, 0], 2: [0, 1]})
    for index, label in ((0, 0), (1, 1), (2, 1)):
        _run(probe_sample(_sample(index, label), baseline, candidate, CLASSIFIER, metrics, timeout_s=5))
    assert metrics.value("optiserve_comparator_compared_total", metric="agreement") == 3
    assert metrics.value("optiserve_comparator_agreeing_total", metric="agreement") == 1
    assert metrics.value("optiserve_comparator_compared_total", metric="accuracy") == 3
    assert metrics.value("optiserve_comparator_agreeing_total", metric="accuracy") == 2  # samples 0 and 2
    assert metrics.value("optiserve_comparator_correct_total", variant="baseline") == 2  # samples 0 and 1
    assert metrics.value("optiserve_comparator_cosine_count") == 3


def test_an_error_or_timeout_is_counted_against_its_side_and_not_compared() -> None:
    metrics = ComparatorMetrics("m", labelled=False)
    ok = _answers({0: [1.0, 0.0]})

    async def refused(_: GoldenSample) -> np.ndarray:
        raise ConnectionRefusedError("connection refused")

    async def silent(_: GoldenSample) -> np.ndarray:
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    assert _run(probe_sample(_sample(0), ok, refused, EMBEDDING, metrics, timeout_s=5)) is None
    assert _run(probe_sample(_sample(0), silent, ok, EMBEDDING, metrics, timeout_s=0.05)) is None
    assert _run(probe_sample(_sample(0), refused, refused, EMBEDDING, metrics, timeout_s=5)) is None
    assert metrics.value("optiserve_comparator_errors_total", variant="candidate") == 2
    assert metrics.value("optiserve_comparator_errors_total", variant="baseline") == 2
    assert metrics.value("optiserve_comparator_compared_total", metric="agreement") == 0
    assert metrics.value("optiserve_comparator_agreeing_total", metric="agreement") == 0


def test_a_candidate_output_of_another_shape_is_the_candidate_error() -> None:
    metrics = ComparatorMetrics("m", labelled=False)
    result = _run(probe_sample(_sample(0), _answers({0: [1, 0]}), _answers({0: [1, 0, 0]}), EMBEDDING, metrics, 5))
    assert result is None
    assert metrics.value("optiserve_comparator_errors_total", variant="candidate") == 1
    assert metrics.value("optiserve_comparator_compared_total", metric="agreement") == 0


def test_both_variants_are_asked_at_the_same_time() -> None:
    """Each fake answers only once the other side has been asked: a sequential probe times out."""
    metrics = ComparatorMetrics("m", labelled=False)

    async def scenario() -> object:
        asked = {"baseline": asyncio.Event(), "candidate": asyncio.Event()}

        def side(me: str, other: str) -> Callable[[GoldenSample], Awaitable[np.ndarray]]:
            async def infer(_: GoldenSample) -> np.ndarray:
                asked[me].set()
                await asked[other].wait()
                return np.array([1.0, 2.0])

            return infer

        return await probe_sample(_sample(0), side("baseline", "candidate"), side("candidate", "baseline"), EMBEDDING, metrics, 5)

    assert _run(scenario()) is not None
    assert metrics.value("optiserve_comparator_agreeing_total", metric="agreement") == 1


def test_rounds_go_round_robin_over_the_golden_set() -> None:
    cursor = GoldenCursor([_sample(i) for i in range(5)])
    taken = [[int(s.inputs["x"][0, 0]) for s in cursor.take(3)] for _ in range(3)]
    assert taken == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]
    assert len(GoldenCursor([_sample(0), _sample(1)]).take(10)) == 2  # each sample at most once a round


def test_a_probe_round_sends_sample_size_samples() -> None:
    seen: list[int] = []

    async def record(sample: GoldenSample) -> np.ndarray:
        seen.append(int(sample.inputs["x"][0, 0]))
        return np.array([1.0])

    metrics = ComparatorMetrics("m", labelled=False)
    loop = ProbeLoop([_sample(i) for i in range(10)], record, record, EMBEDDING, metrics, ProbeSettings(sample_size=4))
    _run(loop.run_round())
    _run(loop.run_round())
    assert sorted(seen) == sorted([0, 1, 2, 3] * 2 + [4, 5, 6, 7] * 2)
    assert loop.rounds == 2 and metrics.value("optiserve_comparator_rounds_total") == 2


def test_probe_settings_name_the_bad_field() -> None:
    with pytest.raises(ValueError, match="sample_size"):
        ProbeSettings(sample_size=0)
    with pytest.raises(ValueError, match="interval_s"):
        ProbeSettings(interval_s=0)


# -- HTTP endpoint and flags --------------------------------------------------------------------


def _get(app: Any, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers: status.append(s)))
    return status[0], body


def test_healthz_follows_the_probe_loop_and_metrics_are_served() -> None:
    metrics = ComparatorMetrics("digits", labelled=False)
    health = Health()
    app = http_app(metrics, health)
    assert _get(app, "/healthz")[0].startswith("503")
    health.running = True
    status, body = _get(app, "/healthz")
    assert status.startswith("200") and json.loads(body)["running"] is True
    status, body = _get(app, "/metrics")
    assert status.startswith("200") and b"optiserve_comparator_compared_total" in body
    assert _get(app, "/other")[0].startswith("404")


@pytest.mark.parametrize(
    ("url", "expected"),
    [("http://triton:8000", ("triton:8000", False)), ("127.0.0.1:9", ("127.0.0.1:9", False)), ("https://t", ("t:443", True))],
)
def test_triton_urls(url: str, expected: tuple[str, bool]) -> None:
    assert split_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://triton:8000", "http://triton:8000/v2", "http://:80", "http://t:port"])
def test_bad_triton_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        split_url(url)


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--baseline", "ftp://x:1"], "--baseline: expected"),
        (["--candidate", "http://x:1/path"], "--candidate: expected"),
        (["--interval", "soon"], "--interval: not a duration"),
        (["--interval", "0s"], "--interval: must be positive"),
        (["--sample-size", "0"], "--sample-size: must be at least 1"),
        (["--threshold", "2"], "--threshold: must be within [-1, 1]"),
        (["--port", "70000"], "--port: must be within"),
        (["--golden", "absent.jsonl"], "--golden: absent.jsonl: No such file"),
    ],
)
def test_bad_flags_exit_1_naming_the_flag(
    flags: list[str], error: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "golden.jsonl").write_text(json.dumps({"inputs": {"x": {"datatype": "FP32", "shape": [1], "data": [1]}}}))
    base = {"--baseline": "127.0.0.1:1", "--candidate": "127.0.0.1:2", "--model": "m", "--golden": "golden.jsonl"}
    base.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    assert main(["comparator", *[part for pair in base.items() for part in pair]]) == 1
    assert error in capsys.readouterr().err


def test_a_malformed_golden_set_is_refused_naming_the_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"inputs": {"x": {"datatype": "FP32", "shape": [1], "data": [1]}}}\n{"inputs": {}}\n')
    flags = ["--baseline", "127.0.0.1:1", "--candidate", "127.0.0.1:2", "--model", "m", "--golden", str(golden)]
    assert main(["comparator", *flags]) == 1
    assert "--golden: golden.jsonl line 2: inputs" in capsys.readouterr().err
