"""The Python-backend model's regressions on purpose, without Triton: parameters, error schedule, noise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optiserve_jobs import triton_python_model as tpm


def config(**parameters: str) -> dict[str, object]:
    return {"parameters": {key: {"string_value": value} for key, value in parameters.items()}}


def test_injection_is_off_by_default() -> None:
    injection = tpm.parse_injection({})
    assert injection == tpm.Injection(latency_factor=1.0, error_fraction=0.0, output_noise=0.0)
    assert not injection.active


def test_injection_parameters_are_read() -> None:
    injection = tpm.parse_injection(
        config(inject_latency_factor="2", inject_error_fraction="0.05", inject_output_noise="1.5", intra_op_threads="2")
    )
    assert injection == tpm.Injection(latency_factor=2.0, error_fraction=0.05, output_noise=1.5)
    assert injection.active


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("inject_latency_factor", "0.5", r"parameters.inject_latency_factor: 0.5 is outside \[1, 1000\]"),
        ("inject_latency_factor", "slow", r"parameters.inject_latency_factor: expected a number, got 'slow'"),
        ("inject_error_fraction", "1.5", r"parameters.inject_error_fraction: 1.5 is outside \[0, 1\]"),
        ("inject_error_fraction", "nan", r"parameters.inject_error_fraction: nan is outside"),
        ("inject_output_noise", "-0.1", r"parameters.inject_output_noise: -0.1 is outside"),
    ],
)
def test_bad_injection_parameters_name_the_parameter(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tpm.parse_injection(config(**{key: value}))


def test_error_schedule_every_twentieth_for_five_percent() -> None:
    schedule = tpm.ErrorSchedule(0.05)
    failing = [n for n in range(100) if schedule.next_fails()]
    assert failing == [19, 39, 59, 79, 99]


@pytest.mark.parametrize("start", [0, 7, 29, 30, 99, 12345])
def test_error_schedule_any_window_is_exact(start: int) -> None:
    schedule = tpm.ErrorSchedule(0.1)
    for _ in range(start):
        schedule.next_fails()
    assert sum(schedule.next_fails() for _ in range(100)) == 10


def test_error_schedule_extremes() -> None:
    never, always = tpm.ErrorSchedule(0.0), tpm.ErrorSchedule(1.0)
    assert not any(never.next_fails() for _ in range(50))
    assert all(always.next_fails() for _ in range(50))


@given(st.floats(min_value=0.0, max_value=1.0), st.integers(min_value=1, max_value=2000))
def test_error_schedule_fails_that_fraction_of_any_prefix(fraction: float, count: int) -> None:
    schedule = tpm.ErrorSchedule(fraction)
    failed = sum(schedule.next_fails() for _ in range(count))
    assert abs(failed - fraction * count) < 1.0 + 1e-9


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def test_noise_is_relative_to_each_row() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, 384)).astype(np.float32) * rng.uniform(0.01, 100, size=(64, 1)).astype(np.float32)
    noisy = tpm.add_relative_noise(rows, 1.0, np.random.default_rng(tpm.NOISE_SEED))
    assert noisy.shape == rows.shape and noisy.dtype == np.float32
    relative = np.linalg.norm(noisy - rows, axis=1) / np.linalg.norm(rows, axis=1)
    np.testing.assert_allclose(relative, 1.0, rtol=1e-4)
    # In 384 dimensions the noise is nearly orthogonal: cosine about 1/sqrt(2), far below any agreement threshold.
    assert np.all(cosines(rows, noisy) < 0.85)
    assert np.all(cosines(rows, noisy) > 0.55)


def test_noise_is_deterministic_for_a_seed() -> None:
    rows = np.ones((3, 8), dtype=np.float32)
    first = tpm.add_relative_noise(rows, 0.5, np.random.default_rng(7))
    second = tpm.add_relative_noise(rows, 0.5, np.random.default_rng(7))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, rows)


def test_noise_leaves_other_outputs_alone() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(6, dtype=np.int64).reshape(3, 2)
    assert tpm.add_relative_noise(labels, 1.0, rng) is labels
    scalar = np.array(1.0, dtype=np.float32)
    assert tpm.add_relative_noise(scalar, 1.0, rng) is scalar
    rows = np.ones((2, 3), dtype=np.float32)
    assert tpm.add_relative_noise(rows, 0.0, rng) is rows
    higher = tpm.add_relative_noise(np.ones((2, 3, 4), dtype=np.float32), 0.5, rng)
    assert higher.shape == (2, 3, 4)
