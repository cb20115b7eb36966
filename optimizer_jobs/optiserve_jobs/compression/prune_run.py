"""The prune pass's PyTorch work: structured pruning of the model (heads and FFN neurons, or conv channels)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from optiserve.api.compression import Importance, PrunePass
from optiserve_jobs.compression import channels, heads, targets
from optiserve_jobs.compression.encoder import Encoder, find_encoder, tensors
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.errors import PassError, SourceError
from optiserve_jobs.passes.base import PassContext, PassOutcome
from optiserve_jobs.passes.torch_stage import output_agreement, parameter_count, save_module, torch_model


class TorchPrune:
    name = "prune"

    def __init__(self, config: PrunePass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        field = f"optimization.passes[{index}]"
        module = torch_model(context, field)
        before = copy.deepcopy(module)
        encoder = find_encoder(module)
        self._check_family(module, encoder, field)
        data = self._calibration(context, field)
        names = [i.name for i in context.source.inputs]
        params = parameter_count(module)
        if encoder is not None:
            detail = self._prune_encoder(module, encoder, data, names, field)
        else:
            detail = self._prune_channels(module, data, names, context)
        agreement = output_agreement(before, module, context)
        context.torch_module = module
        output = save_module(module, context.output_path(index, self.name).with_suffix(".pt"))
        kept = parameter_count(module) / params
        return PassOutcome.ok(
            output,
            f"{detail}; {kept:.0%} of the parameters kept; {agreement} (before any recovery training)",
            parameters_kept=round(kept, 4),
        )

    def _check_family(self, module: nn.Module, encoder: Encoder | None, field: str) -> None:
        kind = type(module).__name__
        if encoder is None and (self.config.heads is not None or self.config.ffn_ratio is not None):
            raise PassError(
                f"{field}.heads/ffnRatio: the model ({kind}) has no BERT-style encoder whose heads and FFN neurons "
                "this pass can remove"
            )
        if encoder is not None and self.config.channel_ratio is not None:
            raise PassError(f"{field}.channelRatio: the model is a transformer encoder; prune it with heads and ffnRatio")
        if encoder is None and not channels.magnitude_scores(module):
            raise PassError(f"{field}.channelRatio: the model ({kind}) has no convolution whose output channels can be removed")

    def _calibration(self, context: PassContext, field: str) -> Dataset | None:
        if self.config.importance is Importance.MAGNITUDE or self.config.dataset_uri is None:
            return None
        try:
            return context.load_dataset(self.config.dataset_uri, self.config.samples)
        except SourceError as e:
            raise PassError(f"{field}.datasetUri: {e}") from e

    def _prune_encoder(self, module: nn.Module, encoder: Encoder, data: Dataset | None, names: list[str], field: str) -> str:
        scores = heads.unit_scores(self.config.importance, module, encoder, data, names)
        parts = []
        if self.config.heads is not None:
            counts = targets.head_counts(self.config.heads, encoder.num_heads, f"{field}.heads")
            parts.append("heads " + self._keep(encoder, [s.heads for s in scores], counts, heads.keep_heads))
        if self.config.ffn_ratio is not None:
            counts = targets.ratio_counts(self.config.ffn_ratio, encoder.ffn_sizes, f"{field}.ffnRatio")
            parts.append("FFN neurons " + self._keep(encoder, [s.neurons for s in scores], counts, heads.keep_neurons))
        how = "activation importance" if data is not None else "weight magnitude"
        return f"{', '.join(parts)} ({how}, scope {self.config.scope.value})"

    def _keep(self, encoder: Encoder, scores: list[np.ndarray], counts: list[int], keep: Callable[[Any, list[int]], None]) -> str:
        """Keep the chosen units of each layer; says how many each kept."""
        chosen = targets.choose(scores, counts, self.config.scope)
        for layer, kept in zip(encoder.bert_layers, chosen, strict=True):
            keep(layer, kept)
        return "kept per layer " + "/".join(str(len(k)) for k in chosen)

    def _prune_channels(self, module: nn.Module, data: Dataset | None, names: list[str], context: PassContext) -> str:
        assert self.config.channel_ratio is not None
        scores = channels.channel_scores(self.config.importance, module, data, names)
        convs = list(scores)
        ratios = targets.per_layer(self.config.channel_ratio, len(convs), "channelRatio")
        example = tensors(context.sample.take(2).inputs, names)
        with torch.no_grad():
            shape = tuple(module(*example).shape)
        pruned = channels.prune_channels(module, example, dict(zip(convs, ratios, strict=True)), scores)
        with torch.no_grad():
            after = tuple(module(*example).shape)
        if after != shape:
            raise PassError(f"channelRatio: pruning changed the model's output shape from {shape} to {after}")
        kept = ", ".join(f"{p.name} {p.kept}/{p.channels}" for p in pruned)
        return f"conv channels kept: {kept}"
