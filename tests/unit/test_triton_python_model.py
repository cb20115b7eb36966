"""Batching helpers of the Triton Python-backend model, without Triton."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from optiserve_jobs import triton_python_model as tpm


def test_imports_without_triton() -> None:
    assert "triton_python_backend_utils" not in sys.modules
    assert tpm.TritonPythonModel is not None


def test_parse_pad_inputs() -> None:
    assert tpm.parse_pad_inputs(None) == frozenset()
    assert tpm.parse_pad_inputs("") == frozenset()
    assert tpm.parse_pad_inputs(" input_ids, attention_mask ,") == {"input_ids", "attention_mask"}


def test_request_batch_size() -> None:
    assert tpm.request_batch_size({"a": np.zeros((3, 2)), "b": np.zeros((3,))}) == 3
    with pytest.raises(tpm.BadRequestError, match="disagree"):
        tpm.request_batch_size({"a": np.zeros((3, 2)), "b": np.zeros((2, 2))})
    with pytest.raises(tpm.BadRequestError, match="batch dimension"):
        tpm.request_batch_size({"a": np.zeros(())})
    with pytest.raises(tpm.BadRequestError, match="axis 1"):
        tpm.request_batch_size({"ids": np.zeros((2,))}, pad_inputs={"ids"})
    with pytest.raises(tpm.BadRequestError, match="no inputs"):
        tpm.request_batch_size({})


def test_group_requests_by_trailing_shape_and_dtype() -> None:
    requests: list[dict[str, np.ndarray]] = [
        {"x": np.zeros((1, 4), np.float32)},
        {"x": np.zeros((2, 5), np.float32)},
        {"x": np.zeros((3, 4), np.float32)},
        {"x": np.zeros((1, 4), np.float64)},
        {"x": np.zeros((1, 5), np.float32)},
    ]
    assert tpm.group_requests(requests) == [[0, 2], [1, 4], [3]]


def test_padded_inputs_group_across_lengths() -> None:
    requests: list[dict[str, np.ndarray]] = [
        {"ids": np.ones((1, 3), np.int64), "extra": np.zeros((1, 2), np.float32)},
        {"ids": np.ones((2, 7), np.int64), "extra": np.zeros((2, 2), np.float32)},
        {"ids": np.ones((1, 5), np.int64), "extra": np.zeros((1, 9), np.float32)},
    ]
    # Without padding every length is its own group; with it only "extra" splits them.
    assert tpm.group_requests(requests) == [[0], [1], [2]]
    assert tpm.group_requests(requests, {"ids"}) == [[0, 1], [2]]


def test_merge_pads_and_concatenates() -> None:
    a: dict[str, np.ndarray] = {"ids": np.array([[1, 2]], np.int64), "x": np.array([[1.0]], np.float32)}
    b: dict[str, np.ndarray] = {"ids": np.array([[3, 4, 5], [6, 7, 8]], np.int64), "x": np.array([[2.0], [3.0]], np.float32)}
    merged = tpm.merge_inputs([a, b], {"ids"})
    np.testing.assert_array_equal(merged["ids"], [[1, 2, 0], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(merged["x"], [[1.0], [2.0], [3.0]])
    assert merged["ids"].dtype == np.int64 and merged["x"].dtype == np.float32


def test_merge_pads_higher_rank_inputs() -> None:
    a = {"emb": np.ones((1, 1, 2), np.float32)}
    b = {"emb": np.full((1, 3, 2), 2.0, np.float32)}
    merged = tpm.merge_inputs([a, b], {"emb"})["emb"]
    assert merged.shape == (2, 3, 2)
    np.testing.assert_array_equal(merged[0], [[1, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(merged[1], np.full((3, 2), 2.0))


def test_merge_single_request_is_not_copied() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.ones((2, 4), np.int64)
    merged = tpm.merge_inputs([{"x": x, "ids": ids}], {"ids"})
    assert merged["x"] is x
    assert merged["ids"] is ids


def test_merge_rejects_empty_group() -> None:
    with pytest.raises(ValueError):
        tpm.merge_inputs([])


def test_split_outputs_returns_views_per_request() -> None:
    y = np.arange(12, dtype=np.float32).reshape(6, 2)
    z = np.arange(6, dtype=np.int64)
    parts = tpm.split_outputs([y, z], [1, 3, 2])
    assert [p[0].shape for p in parts] == [(1, 2), (3, 2), (2, 2)]
    np.testing.assert_array_equal(parts[1][0], y[1:4])
    np.testing.assert_array_equal(parts[2][1], [4, 5])
    assert all(np.shares_memory(p[0], y) and p[0].flags.c_contiguous for p in parts)


def test_split_outputs_checks_the_batch() -> None:
    with pytest.raises(ValueError, match="merged batch"):
        tpm.split_outputs([np.zeros((4, 2))], [2, 3])
    with pytest.raises(ValueError, match="merged batch"):
        tpm.split_outputs([np.zeros(())], [1])


def test_merge_then_split_round_trip() -> None:
    rng = np.random.default_rng(0)
    requests = [{"x": rng.standard_normal((n, 4)).astype(np.float32)} for n in (1, 3, 2, 1)]
    groups = tpm.group_requests(requests)
    assert groups == [[0, 1, 2, 3]]
    merged = tpm.merge_inputs(requests)
    doubled = merged["x"] * 2
    parts = tpm.split_outputs([doubled], [r["x"].shape[0] for r in requests])
    for request, (out,) in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(out, request["x"] * 2)


def test_parameter_reads_string_values() -> None:
    config = json.loads('{"parameters": {"pad_inputs": {"string_value": "ids"}, "empty": {"string_value": ""}}}')
    assert tpm._parameter(config, "pad_inputs", "") == "ids"
    assert tpm._parameter(config, "empty", "model.onnx") == "model.onnx"
    assert tpm._parameter(config, "missing", "0") == "0"
    assert tpm._parameter({}, "missing", "x") == "x"


def test_output_dtypes() -> None:
    assert tpm._triton_dtype_to_numpy("TYPE_FP32") == np.float32
    assert tpm._triton_dtype_to_numpy("TYPE_INT64") == np.int64
    assert tpm._triton_dtype_to_numpy("TYPE_STRING") == np.object_
    with pytest.raises(ValueError, match="unsupported"):
        tpm._triton_dtype_to_numpy("TYPE_BF16")
