"""Attention heads and FFN neurons of a BERT-style encoder: how much each matters, and removing them.

Importance is a unit's contribution to its layer's output. For a head that is the norm of its
context vectors after the output projection (`ctx_h @ W_o[:, h]`); for an FFN neuron, its
activation times the norm of its output weights. `activation` averages these over the real tokens
of the calibration data; `magnitude` uses the weights alone. Removal slices the Linear layers, so
the pruned encoder is a smaller dense model; the hidden size never changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from optiserve.api.compression import Importance
from optiserve_jobs.compression.encoder import MASK_INPUT, Encoder, batches, tensors
from optiserve_jobs.datasets import Dataset

CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class LayerScores:
    heads: np.ndarray
    """One score per attention head."""
    neurons: np.ndarray
    """One score per FFN neuron."""


def _head_weights(layer: Any) -> tuple[torch.Tensor, int]:
    attention = layer.attention.self
    return layer.attention.output.dense.weight, int(attention.attention_head_size)


def magnitude_scores(encoder: Encoder) -> list[LayerScores]:
    scores = []
    for layer in encoder.bert_layers:
        weight, size = _head_weights(layer)
        value = layer.attention.self.value.weight
        heads = [
            float(weight[:, h * size : (h + 1) * size].norm() * value[h * size : (h + 1) * size].norm())
            for h in range(weight.shape[1] // size)
        ]
        neurons = layer.intermediate.dense.weight.norm(dim=1) * layer.output.dense.weight.norm(dim=0)
        scores.append(LayerScores(np.asarray(heads), neurons.detach().numpy().astype(np.float64)))
    return scores


class _Recorder:
    """Forward pre-hooks on each layer's two output projections that sum the units' contributions."""

    def __init__(self, encoder: Encoder) -> None:
        self.heads = [np.zeros(n) for n in encoder.num_heads]
        self.neurons = [np.zeros(n) for n in encoder.ffn_sizes]
        self.tokens = 0.0
        self.mask: torch.Tensor | None = None
        self.handles: list[Any] = []
        for index, layer in enumerate(encoder.bert_layers):
            self.handles.append(layer.attention.output.dense.register_forward_pre_hook(self._on_context(index, layer)))
            self.handles.append(layer.output.dense.register_forward_pre_hook(self._on_ffn(index, layer)))

    def _weights(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.mask is None or tuple(self.mask.shape) != shape[:2]:
            return torch.ones(shape[:2])
        return self.mask.to(torch.float32)

    def _on_context(self, index: int, layer: Any) -> Callable[..., None]:
        weight, size = _head_weights(layer)

        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            context = inputs[0]
            tokens = self._weights(tuple(context.shape))
            for h in range(context.shape[-1] // size):
                part = context[..., h * size : (h + 1) * size] @ weight[:, h * size : (h + 1) * size].T
                self.heads[index][h] += float((part.norm(dim=-1) * tokens).sum())

        return hook

    def _on_ffn(self, index: int, layer: Any) -> Callable[..., None]:
        out_norm = layer.output.dense.weight.norm(dim=0)

        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            activation = inputs[0]
            tokens = self._weights(tuple(activation.shape))
            contribution = (activation.abs() * tokens.unsqueeze(-1)).sum(dim=(0, 1)) * out_norm
            self.neurons[index] += contribution.numpy().astype(np.float64)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def activation_scores(module: nn.Module, encoder: Encoder, data: Dataset, input_names: list[str]) -> list[LayerScores]:
    recorder = _Recorder(encoder)
    try:
        with torch.inference_mode():
            for batch in batches(data, CALIBRATION_BATCH):
                recorder.mask = torch.from_numpy(batch[MASK_INPUT]) if MASK_INPUT in batch else None
                module(*tensors(batch, input_names))
    finally:
        recorder.close()
    return [LayerScores(h, n) for h, n in zip(recorder.heads, recorder.neurons, strict=True)]


def unit_scores(
    importance: Importance, module: nn.Module, encoder: Encoder, data: Dataset | None, input_names: list[str]
) -> list[LayerScores]:
    if importance is Importance.MAGNITUDE or data is None:
        return magnitude_scores(encoder)
    return activation_scores(module, encoder, data, input_names)


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    linear.out_features = len(rows)


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[:, columns].clone())
    linear.in_features = len(columns)


def keep_heads(layer: Any, heads: list[int]) -> None:
    """Keep these heads of the layer (indices, increasing); the others' weights are removed."""
    attention = layer.attention.self
    size = int(attention.attention_head_size)
    columns = torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads])
    for projection in (attention.query, attention.key, attention.value):
        _keep_rows(projection, columns)
    _keep_columns(layer.attention.output.dense, columns)
    attention.num_attention_heads = len(heads)
    attention.all_head_size = len(heads) * size


def keep_neurons(layer: Any, neurons: list[int]) -> None:
    index = torch.as_tensor(neurons, dtype=torch.long)
    _keep_rows(layer.intermediate.dense, index)
    _keep_columns(layer.output.dense, index)
