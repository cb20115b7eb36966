"""Fidelity metrics and gates: a gate without a finite measurement never passes."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from optiserve.api.spec import DEFAULT_SPEED_GATE, Task, ValidationSpec
from optiserve_jobs.report import Fidelity
from optiserve_jobs.stability import SpeedEvidence
from optiserve_jobs.validate import accuracy, evaluate_gates, fidelity


def test_cosine_of_identical_and_orthogonal_rows() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0], [1.0, 0.0]])
    found = fidelity(Task.EMBEDDING, a, b)
    assert found.metric == "cosine"
    assert found.mean == pytest.approx(0.5) and found.min == pytest.approx(0.0)
    assert found.max_abs_error == pytest.approx(2.0)


def test_top1_agreement_for_classifiers() -> None:
    base = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    cand = np.array([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.1, 0.9]])
    found = fidelity(Task.CLASSIFICATION, base, cand)
    assert (found.metric, found.mean, found.min) == ("top1_agreement", 0.75, 0.0)


def test_accuracy() -> None:
    assert accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])) == 0.5


def _spec(**extra: float) -> ValidationSpec:
    return ValidationSpec.model_validate({"datasetUri": "v", "maxDegradation": 0.01, **extra})


def _evidence(*ratios: float, needed: int = 3) -> SpeedEvidence:
    """Speed evidence whose clean pairs gave these baseline/candidate ratios."""
    return SpeedEvidence(1, tuple(ratios), len(ratios), needed, 0.9, 0.0)


PERFECT = Fidelity("cosine", 1.0, 1.0, 0.0)


def test_gates_pass_and_fail_with_values_and_thresholds() -> None:
    spec = _spec(minSpeedup=2.0, maxSizeRatio=0.3, minWorstFidelity=0.98)
    gates = evaluate_gates(spec, Fidelity("cosine", 0.995, 0.97, 0.1), (0.90, 0.885), _evidence(2.4, 2.5, 2.6), 0.26)
    by_name = {g.name: g for g in gates}
    assert by_name["fidelity_mean"].passed and by_name["fidelity_mean"].threshold == pytest.approx(0.99)
    assert not by_name["fidelity_worst"].passed and by_name["fidelity_worst"].value == 0.97
    assert not by_name["accuracy_drop"].passed and by_name["accuracy_drop"].value == pytest.approx(0.015)
    assert by_name["speedup_p50"].passed and by_name["speedup_p50"].value == pytest.approx(2.5)
    assert by_name["size_ratio"].passed


@pytest.mark.parametrize("bad", [math.nan, math.inf, None])
def test_missing_or_non_finite_speedup_fails_its_gate(bad: float | None) -> None:
    speed = None if bad is None else _evidence(bad, bad, bad)
    gates = evaluate_gates(_spec(minSpeedup=1.0), PERFECT, None, speed, 0.5)
    assert [(g.passed, g.inconclusive) for g in gates if g.name == "speedup_p50"] == [(False, False)]


def test_nan_fidelity_fails() -> None:
    gates = evaluate_gates(_spec(), Fidelity("cosine", math.nan, math.nan, math.nan), None, _evidence(2, 2, 2), 1.0)
    assert not gates[0].passed


def test_only_requested_gates_exist_and_speed_is_gated_by_default() -> None:
    gates = evaluate_gates(_spec(), PERFECT, None, _evidence(2, 2, 2), 1.0)
    assert [g.name for g in gates] == ["fidelity_mean", DEFAULT_SPEED_GATE]
    assert [g.name for g in evaluate_gates(_spec(minSpeedup=0), PERFECT, None, _evidence(0.5, 0.5, 0.5), 1.0)] == [
        "fidelity_mean"
    ], "minSpeedup 0: no speed gate"


@pytest.mark.parametrize(
    ("ratios", "passed"),
    [((1.30, 1.35, 1.32), True), ((0.70, 0.71, 0.72), False), ((0.97, 1.05, 1.02), False), ((1.01, 1.02, 1.03), True)],
)
def test_the_default_speed_gate_needs_faster_beyond_the_noise(ratios: tuple[float, ...], passed: bool) -> None:
    gate = next(g for g in evaluate_gates(_spec(), PERFECT, None, _evidence(*ratios), 1.0) if g.name == DEFAULT_SPEED_GATE)
    assert (gate.passed, gate.inconclusive) == (passed, False), "within the noise is a refusal, not a pass"
    assert gate.value == pytest.approx(statistics.median(ratios)) and "minSpeedup: 0" in gate.detail


def test_an_explicit_threshold_within_the_noise_is_inconclusive_and_outside_it_decided() -> None:
    spec = _spec(minSpeedup=2.0)
    decide = {ratios: evaluate_gates(spec, PERFECT, None, _evidence(*ratios), 1.0)[-1] for ratios in [
        (1.6, 2.0, 2.1, 2.2, 2.3), (2.1, 2.2, 2.3, 2.2, 2.1), (1.5, 1.6, 1.7, 1.6, 1.9)
    ]}  # fmt: skip
    within, above, below = decide.values()
    assert within.inconclusive and not within.passed and "interval 1.60x to 2.30x" in within.detail
    assert above.passed and not above.inconclusive
    assert not below.passed and not below.inconclusive


@pytest.mark.parametrize("min_speedup", [None, 2.0])
def test_a_busy_machine_makes_the_speed_gate_inconclusive(min_speedup: float | None) -> None:
    spec = _spec() if min_speedup is None else _spec(minSpeedup=min_speedup)
    for speed in (_evidence(0.8, needed=3), _evidence(needed=3)):
        gate = evaluate_gates(spec, PERFECT, None, speed, 1.0)[-1]
        assert gate.inconclusive and not gate.passed, gate
        assert "busy" in gate.detail


def test_validate_lists_the_gates_that_apply() -> None:
    assert any(line.startswith(DEFAULT_SPEED_GATE) for line in _spec().gates())
    assert "no speed gate (minSpeedup: 0)" in _spec(minSpeedup=0).gates()
    assert any(line.startswith("speedup_p50 >= 2") for line in _spec(minSpeedup=2).gates())
