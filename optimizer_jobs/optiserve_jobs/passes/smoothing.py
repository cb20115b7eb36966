"""SmoothQuant-style activation smoothing for INT8.

A MatMul `Y = X W` is unchanged by `Y = (X / s) (diag(s) W)`. Transformer activations carry a few
channels with large outliers, and per-tensor activation quantization then wastes its range on them.
Choosing `s_j = max|X_j|^alpha / max|W_j|^(1-alpha)` moves part of that range into the weights,
which are quantized per channel and absorb it well. `X / s` becomes one `Mul` per activation
(shared by all the MatMuls that read it); the residual paths keep the unscaled activation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from optiserve_jobs.datasets import Dataset

# Operators whose input 0 is an activation multiplied by the 2-D weight initializer in input 1.
_WEIGHTED_OPS = ("MatMul", "Attention")


@dataclass(frozen=True)
class SmoothingTarget:
    activation: str
    weights: tuple[str, ...]
    consumers: tuple[int, ...]  # node indexes


def find_targets(model: onnx.ModelProto, excluded_nodes: set[str]) -> list[SmoothingTarget]:
    initializers = {i.name: i for i in model.graph.initializer}
    by_activation: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(model.graph.node):
        if node.op_type not in _WEIGHTED_OPS or node.name in excluded_nodes or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or node.input[0] in initializers:
            continue
        by_activation[node.input[0]].append(index)
    return [
        SmoothingTarget(act, tuple(model.graph.node[i].input[1] for i in nodes), tuple(nodes))
        for act, nodes in by_activation.items()
    ]


def activation_channel_max(
    model: onnx.ModelProto, activations: list[str], data: Dataset, *, threads: int, batch_size: int = 16
) -> dict[str, np.ndarray]:
    """Largest |value| per last-axis channel of each activation, over the calibration data."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in activations:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed_names = [i.name for i in session.get_inputs()]
    maxima: dict[str, np.ndarray] = {}
    for batch in data.batches(batch_size):
        values = session.run(activations, {n: batch[n] for n in feed_names})
        for name, value in zip(activations, values, strict=True):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = channel_max if name not in maxima else np.maximum(maxima[name], channel_max)
    return maxima


def outlier_ratio(channel_max: np.ndarray) -> float:
    """How far the largest channel stands out: max / median of the per-channel maxima."""
    return float(channel_max.max() / max(float(np.median(channel_max)), 1e-12))


def with_outliers(targets: list[SmoothingTarget], maxima: dict[str, np.ndarray], min_ratio: float) -> list[SmoothingTarget]:
    return [t for t in targets if outlier_ratio(maxima[t.activation]) >= min_ratio]


def smoothing_scales(activation_max: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    scales = np.power(np.maximum(activation_max, 1e-5), alpha) / np.power(np.maximum(weight_max, 1e-5), 1 - alpha)
    return np.asarray(np.clip(scales, 1e-4, 1e4), dtype=np.float32)


def apply_smoothing(model: onnx.ModelProto, targets: list[SmoothingTarget], maxima: dict[str, np.ndarray], alpha: float) -> int:
    """Rewrite `model` in place; returns how many activations were smoothed."""
    initializers = {i.name: i for i in model.graph.initializer}
    use_count: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            use_count[name] += 1
    inserts: list[tuple[int, onnx.NodeProto]] = []
    for number, target in enumerate(targets):
        if any(use_count[w] != 1 for w in target.weights):
            continue  # a shared weight cannot be rescaled for one consumer only
        weights = [numpy_helper.to_array(initializers[w]) for w in target.weights]
        scales = smoothing_scales(maxima[target.activation], weights, alpha)
        for name, weight in zip(target.weights, weights, strict=True):
            initializers[name].CopyFrom(numpy_helper.from_array((weight * scales[:, None]).astype(weight.dtype), name))
        inverse_name = f"smooth_{number}_inverse_scale"
        smoothed = f"{target.activation}_smoothed_{number}"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scales).astype(np.float32), inverse_name))
        mul = onnx.helper.make_node("Mul", [target.activation, inverse_name], [smoothed], name=f"Smooth_{number}")
        for index in target.consumers:
            model.graph.node[index].input[0] = smoothed
        inserts.append((min(target.consumers), mul))
    for index, node in sorted(inserts, key=lambda item: item[0], reverse=True):
        model.graph.node.insert(index, node)
    return len(inserts)
