"""Least-squares refit of a pruned encoder's output projections, layer by layer, before any training.

Removing heads or FFN neurons drops their share of each layer's output. The units that stay are
correlated with the removed ones, so much of that share can be rebuilt by re-weighting them: for
each layer in order, the attention and FFN output projections (`attention.output.dense`,
`output.dense`) are solved by ridge regression so that, on the calibration tokens, the pruned
layer's projection of its *own* inputs (what the layers before it, already refitted, now give it)
matches what the source model's projection gave. Only weights and biases change; shapes do not.
The post-training pruning literature (Kwon et al. 2022, FLAP 2024) compensates the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from optiserve_jobs.compression.encoder import MASK_INPUT, Encoder, batches, find_encoder, tensors
from optiserve_jobs.datasets import Dataset

RIDGE = 0.01
"""Ridge strength, relative to the mean diagonal of the inputs' Gram matrix (the bias is not shrunk)."""
BATCH = 50

Projection = Callable[[Any], nn.Linear]
PROJECTIONS: tuple[Projection, ...] = (
    lambda layer: layer.attention.output.dense,
    lambda layer: layer.output.dense,
)


@dataclass(frozen=True)
class RefitResult:
    projections: int
    tokens: int


def _token_rows(batch: dict[str, np.ndarray], values: torch.Tensor) -> torch.Tensor:
    """The rows of [batch, sequence, features] that are real tokens (all of them without a mask)."""
    mask = batch.get(MASK_INPUT)
    if mask is None or values.dim() != 3:
        return values.reshape(-1, values.shape[-1])
    return values[torch.from_numpy(mask).bool()]


class _Captured:
    """The input a Linear received in the last forward pass, over the real tokens, in float64."""

    def __init__(self, linear: nn.Linear) -> None:
        self.rows: torch.Tensor | None = None
        self.batch: dict[str, np.ndarray] = {}
        self.handle = linear.register_forward_pre_hook(self._keep)

    def _keep(self, _: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.rows = _token_rows(self.batch, inputs[0]).to(torch.float64)

    def take(self) -> torch.Tensor:
        assert self.rows is not None, "the projection was not called"
        rows, self.rows = self.rows, None
        return rows


@dataclass
class _Normal:
    """The normal equations of a ridge regression with a bias, summed batch by batch (memory stays bounded)."""

    gram: torch.Tensor
    cross: torch.Tensor
    tokens: int = 0

    def add(self, inputs: torch.Tensor, target: torch.Tensor) -> None:
        design = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)
        self.gram += design.T @ design
        self.cross += design.T @ target
        self.tokens += len(inputs)

    def solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [out, in], bias [out]); the bias is not shrunk."""
        ridge = RIDGE * torch.diagonal(self.gram)[:-1].mean() * torch.eye(len(self.gram), dtype=self.gram.dtype)
        ridge[-1, -1] = 0.0
        solution = torch.linalg.solve(self.gram + ridge, self.cross)
        return solution[:-1].T, solution[-1]


@dataclass(frozen=True)
class _Pair:
    """Two models run side by side on the same data."""

    source: nn.Module
    pruned: nn.Module
    data: Dataset
    names: list[str]


def _normal_equations(pair: _Pair, reference: nn.Linear, linear: nn.Linear) -> _Normal:
    """The pruned projection's own inputs against what the source projection gave, over the data's tokens."""
    source_in, own_in = _Captured(reference), _Captured(linear)
    weight = reference.weight.to(torch.float64)
    bias = None if reference.bias is None else reference.bias.to(torch.float64)
    normal = _Normal(
        torch.zeros(linear.in_features + 1, linear.in_features + 1, dtype=torch.float64),
        torch.zeros(linear.in_features + 1, linear.out_features, dtype=torch.float64),
    )
    try:
        with torch.inference_mode():
            for batch in batches(pair.data, BATCH):  # each trimmed to its longest sequence
                source_in.batch = own_in.batch = batch
                pair.source(*tensors(batch, pair.names))
                pair.pruned(*tensors(batch, pair.names))
                normal.add(own_in.take(), nn.functional.linear(source_in.take(), weight, bias))
    finally:
        source_in.handle.remove()
        own_in.handle.remove()
    return normal


def refit_projections(source: Encoder, pruned: Encoder, pair: _Pair) -> RefitResult:
    """Refit every output projection of `pruned` towards `source` on the pair's data, first layer first."""
    tokens = 0
    for source_layer, pruned_layer in zip(source.bert_layers, pruned.bert_layers, strict=True):
        for projection in PROJECTIONS:
            linear = projection(pruned_layer)
            normal = _normal_equations(pair, projection(source_layer), linear)
            weight, bias = normal.solve()
            with torch.no_grad():
                linear.weight.copy_(weight.to(linear.weight.dtype))
                if linear.bias is not None:
                    linear.bias.copy_(bias.to(linear.bias.dtype))
            tokens = normal.tokens
    return RefitResult(projections=2 * len(pruned.bert_layers), tokens=tokens)


def refit_encoder(source: nn.Module, pruned: nn.Module, data: Dataset, names: list[str]) -> RefitResult:
    """Refit a pruned encoder towards its source (both must be BERT-style encoders of as many layers)."""
    source_encoder, pruned_encoder = find_encoder(source), find_encoder(pruned)
    if source_encoder is None or pruned_encoder is None:
        raise ValueError("refit: both models need a BERT-style encoder")
    return refit_projections(source_encoder, pruned_encoder, _Pair(source, pruned, data, names))
