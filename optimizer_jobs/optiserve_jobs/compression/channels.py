"""Output channels of convolutions: their importance on calibration data, and their removal.

Torch-Pruning's dependency graph finds every layer coupled to a convolution's output channels (the
next convolution's inputs, a BatchNorm, a Linear after a Flatten, the other branch of a residual
add), so removing a channel slices all of them and the network stays consistent and dense. A
channel's importance is the mean magnitude of its output on the calibration data (`activation`) or
the L2 norm of its filter (`magnitude`); coupled convolutions add their scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from optiserve.api.compression import Importance
from optiserve_jobs.compression.encoder import batches, tensors
from optiserve_jobs.datasets import Dataset

CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class PrunedConv:
    name: str
    channels: int
    kept: int


def _convs(model: nn.Module) -> dict[str, nn.Conv1d | nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Conv1d) and m.groups == 1}


def magnitude_scores(model: nn.Module) -> dict[str, np.ndarray]:
    return {n: m.weight.detach().flatten(1).norm(dim=1).numpy().astype(np.float64) for n, m in _convs(model).items()}


def activation_scores(model: nn.Module, data: Dataset, input_names: list[str]) -> dict[str, np.ndarray]:
    sums: dict[str, np.ndarray] = {}
    handles = []

    def recorder(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, __: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            per_channel = output.abs().transpose(0, 1).flatten(1).mean(dim=1).numpy().astype(np.float64)
            sums[name] = sums.get(name, 0) + per_channel

        return hook

    for name, conv in _convs(model).items():
        handles.append(conv.register_forward_hook(recorder(name)))
    try:
        with torch.inference_mode():
            for batch in batches(data, CALIBRATION_BATCH):
                model(*tensors(batch, input_names))
    finally:
        for handle in handles:
            handle.remove()
    return sums


def channel_scores(
    importance: Importance, model: nn.Module, data: Dataset | None, input_names: list[str]
) -> dict[str, np.ndarray]:
    if importance is Importance.MAGNITUDE or data is None:
        return magnitude_scores(model)
    return activation_scores(model, data, input_names)


def _coupled_convs(group: object, names: dict[nn.Module, str], dependency: object) -> list[str]:
    coupled = []
    for dep, _ in group:  # type: ignore[attr-defined]  # torch_pruning is untyped
        module = dep.target.module
        if module in names and dependency.is_out_channel_pruning_fn(dep.handler):  # type: ignore[attr-defined]
            coupled.append(names[module])
    return coupled


def prune_channels(
    model: nn.Module, example: tuple[torch.Tensor, ...], ratios: dict[str, float], scores: dict[str, np.ndarray]
) -> list[PrunedConv]:
    """Keep `ratios[name]` of each named convolution's channels, the highest-scoring ones, in place."""
    import torch_pruning as tp  # type: ignore[import-untyped]  # no type information shipped

    for parameter in model.parameters():
        parameter.requires_grad_(True)  # the dependency graph is traced through autograd
    dependency = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    names: dict[nn.Module, str] = {m: n for n, m in _convs(model).items()}
    pruned: list[PrunedConv] = []
    done: set[str] = set()
    for name, conv in _convs(model).items():
        if name in done or name not in ratios:
            continue
        channels = conv.out_channels
        group = dependency.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(channels)))
        coupled = _coupled_convs(group, names, dependency)
        score = sum((scores[c] for c in coupled if c in scores and len(scores[c]) == channels), np.zeros(channels))
        kept = max(1, min(channels, round(ratios[name] * channels)))
        drop = sorted(int(i) for i in np.argsort(score, kind="stable")[: channels - kept])
        if drop:
            group = dependency.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=drop)
            if not dependency.check_pruning_group(group):
                continue
            group.prune()
        done.update(coupled)
        pruned.append(PrunedConv(name, channels, kept))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return pruned
