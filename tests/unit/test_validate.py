"""Fidelity metrics and gates: a gate without a finite measurement never passes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optiserve.api.spec import Task, ValidationSpec
from optiserve_jobs.validate import Fidelity, accuracy, evaluate_gates, fidelity


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


def test_gates_pass_and_fail_with_values_and_thresholds() -> None:
    spec = _spec(minSpeedup=2.0, maxSizeRatio=0.3, minWorstFidelity=0.98)
    gates = evaluate_gates(spec, Fidelity("cosine", 0.995, 0.97, 0.1), (0.90, 0.885), 2.5, 0.26)
    by_name = {g.name: g for g in gates}
    assert by_name["fidelity_mean"].passed and by_name["fidelity_mean"].threshold == pytest.approx(0.99)
    assert not by_name["fidelity_worst"].passed and by_name["fidelity_worst"].value == 0.97
    assert not by_name["accuracy_drop"].passed and by_name["accuracy_drop"].value == pytest.approx(0.015)
    assert by_name["speedup_p50"].passed and by_name["size_ratio"].passed


@pytest.mark.parametrize("bad", [math.nan, math.inf, None])
def test_missing_or_non_finite_speedup_fails_its_gate(bad: float | None) -> None:
    gates = evaluate_gates(_spec(minSpeedup=1.0), Fidelity("cosine", 1.0, 1.0, 0.0), None, bad, 0.5)
    assert [g.passed for g in gates if g.name == "speedup_p50"] == [False]


def test_nan_fidelity_fails() -> None:
    gates = evaluate_gates(_spec(), Fidelity("cosine", math.nan, math.nan, math.nan), None, 1.0, 1.0)
    assert not gates[0].passed


def test_only_requested_gates_exist() -> None:
    gates = evaluate_gates(_spec(), Fidelity("cosine", 1.0, 1.0, 0.0), None, 1.0, 1.0)
    assert [g.name for g in gates] == ["fidelity_mean"]
