"""The job's golden set: one request per validation sample, in the served model's dtypes, unpadded text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optiserve.api.spec import DType, TensorSpec
from optiserve.golden import load_golden, write_golden
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.errors import JobError
from optiserve_jobs.golden_set import golden_samples

TEXT_INPUTS = [TensorSpec(name=n, shape=[-1], dtype=DType.INT64) for n in ("input_ids", "token_type_ids", "attention_mask")]


def _text_dataset() -> Dataset:
    """Two sentences tokenized to 8 positions: 5 and 3 real tokens, the rest padding."""
    ids = np.array([[101, 7, 8, 9, 102, 0, 0, 0], [101, 5, 102, 0, 0, 0, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    return Dataset({"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}, None)


def test_text_samples_are_unpadded_requests_of_batch_one() -> None:
    samples = golden_samples(_text_dataset(), TEXT_INPUTS, text_inputs=True)
    assert [s.inputs["input_ids"].tolist() for s in samples] == [[[101, 7, 8, 9, 102]], [[101, 5, 102]]]
    assert all(
        s.inputs["attention_mask"].shape == s.inputs["token_type_ids"].shape == s.inputs["input_ids"].shape for s in samples
    )
    assert all(s.inputs["attention_mask"].all() and s.label is None for s in samples)


def test_tensor_samples_take_the_served_dtype_and_labels(tmp_path: Path) -> None:
    images = np.arange(3 * 4, dtype=np.float64).reshape(3, 4)
    data = Dataset({"image": images}, np.array([2, 0, 1]))
    samples = golden_samples(data, [TensorSpec(name="image", shape=[4], dtype=DType.FLOAT16)], text_inputs=False)
    assert [s.label for s in samples] == [2, 0, 1]
    assert all(s.inputs["image"].dtype == np.float16 and s.inputs["image"].shape == (1, 4) for s in samples)
    write_golden(tmp_path / "golden.jsonl", samples)
    loaded = load_golden(tmp_path / "golden.jsonl")
    np.testing.assert_array_equal(loaded[1].inputs["image"], images[1:2].astype(np.float16))
    assert loaded[1].inputs["image"].dtype == np.float16


def test_samples_are_bounded_by_count_and_by_values() -> None:
    data = Dataset({"x": np.zeros((50, 10), dtype=np.float32)}, None)
    spec = [TensorSpec(name="x", shape=[10])]
    assert len(golden_samples(data, spec, text_inputs=False, limit=20)) == 20
    assert len(golden_samples(data, spec, text_inputs=False, max_values=35)) == 3
    assert len(golden_samples(data, spec, text_inputs=False, max_values=5)) == 1  # one sample at least


def test_an_input_missing_from_the_data_is_named() -> None:
    data = Dataset({"x": np.zeros((2, 3), dtype=np.float32)}, None)
    with pytest.raises(JobError, match=r"golden set: .*\['pixels'\]"):
        golden_samples(data, [TensorSpec(name="pixels", shape=[3])], text_inputs=False)
