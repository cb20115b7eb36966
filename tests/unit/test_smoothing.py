"""SmoothQuant-style smoothing keeps the model's function and shrinks activation outliers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optiserve_jobs.datasets import Dataset
from optiserve_jobs.passes.smoothing import activation_channel_max, apply_smoothing, find_targets, smoothing_scales


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> Add(bias with an outlier channel) -> a; a feeds two MatMuls (shared) and a residual Add."""
    bias = np.zeros(8, dtype=np.float32)
    bias[3] = 40.0  # an outlier channel, as LayerNorm outputs in transformers have
    inits = [
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "wq"),
        numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "wk"),
    ]
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["a"]),
        helper.make_node("MatMul", ["a", "wq"], ["q"]),
        helper.make_node("MatMul", ["a", "wk"], ["k"]),
        helper.make_node("Add", ["q", "k"], ["y"]),
        helper.make_node("ReduceSum", ["a"], ["residual"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6]),
            helper.make_tensor_value_info("residual", TensorProto.FLOAT, ["n"]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, {"x": x})]


def test_smoothing_is_function_preserving_and_shrinks_the_outlier() -> None:
    rng = np.random.default_rng(0)
    model = _model(rng)
    x = rng.normal(size=(32, 8)).astype(np.float32)
    before = _run(model, x)
    targets = find_targets(model, set())
    assert [(t.activation, t.weights) for t in targets] == [("a", ("wq", "wk"))]
    maxima = activation_channel_max(model, ["a"], Dataset({"x": x}, None), threads=1)
    assert maxima["a"].argmax() == 3
    assert apply_smoothing(model, targets, maxima, alpha=0.75) == 1
    onnx.checker.check_model(model)
    after = _run(model, x)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(after[1], before[1], rtol=1e-6)  # the residual path keeps the raw activation
    smoothed = activation_channel_max(model, ["a_smoothed_0"], Dataset({"x": x}, None), threads=1)["a_smoothed_0"]
    spread_before = maxima["a"].max() / np.median(maxima["a"])
    spread_after = smoothed.max() / np.median(smoothed)
    assert spread_after < spread_before / 3


def test_scales_follow_alpha() -> None:
    act = np.array([1.0, 100.0], dtype=np.float32)
    weights = [np.ones((2, 3), dtype=np.float32)]
    assert np.allclose(smoothing_scales(act, weights, 0.0), [1.0, 1.0])
    assert np.allclose(smoothing_scales(act, weights, 1.0), [1.0, 100.0])
    assert np.allclose(smoothing_scales(act, weights, 0.5), [1.0, 10.0])


def test_shared_weights_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    model = _model(rng)
    model.graph.node[2].input[1] = "wq"  # both MatMuls now read the same initializer ...
    model.graph.node.append(helper.make_node("MatMul", ["x", "wq"], ["extra"]))  # ... and so does another node
    targets = find_targets(model, set())
    x = rng.normal(size=(4, 8)).astype(np.float32)
    maxima = activation_channel_max(model, [t.activation for t in targets], Dataset({"x": x}, None), threads=1)
    assert apply_smoothing(model, targets, maxima, 0.5) == 0


def test_only_activations_with_outliers_are_selected() -> None:
    from optiserve_jobs.passes.smoothing import SmoothingTarget, outlier_ratio, with_outliers

    flat = np.ones(8, dtype=np.float32)
    spiky = np.ones(8, dtype=np.float32)
    spiky[2] = 30.0
    assert outlier_ratio(flat) == 1.0 and outlier_ratio(spiky) == 30.0
    targets = [SmoothingTarget("flat", ("w1",), (0,)), SmoothingTarget("spiky", ("w2",), (1,))]
    maxima = {"flat": flat, "spiky": spiky}
    assert [t.activation for t in with_outliers(targets, maxima, 6.0)] == ["spiky"]
    assert len(with_outliers(targets, maxima, 0.0)) == 2
