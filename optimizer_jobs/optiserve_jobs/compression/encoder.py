"""Find the BERT-style encoder inside a source module, and run a module on a data set's batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from optiserve_jobs.datasets import Dataset

MASK_INPUT = "attention_mask"


@dataclass(frozen=True)
class Encoder:
    """A Hugging Face BERT-style encoder: its model (holding the config) and its layers."""

    model: nn.Module
    layers: nn.ModuleList

    @property
    def bert_layers(self) -> list[Any]:
        """The layers, typed for duck access to their Hugging Face submodules (checked by find_encoder)."""
        return list(self.layers)

    @property
    def num_heads(self) -> list[int]:
        return [int(layer.attention.self.num_attention_heads) for layer in self.bert_layers]

    @property
    def ffn_sizes(self) -> list[int]:
        return [int(layer.intermediate.dense.out_features) for layer in self.bert_layers]

    def replace_layers(self, layers: list[nn.Module]) -> None:
        kept = nn.ModuleList(layers)
        self.model.encoder.layer = kept  # type: ignore[union-attr]  # checked by find_encoder
        object.__setattr__(self, "layers", kept)
        self.model.config.num_hidden_layers = len(kept)  # type: ignore[union-attr]
        for index, layer in enumerate(self.bert_layers):
            if hasattr(layer.attention.self, "layer_idx"):
                layer.attention.self.layer_idx = index


def _is_bert_layer(layer: Any) -> bool:
    attention = getattr(layer, "attention", None)
    return (
        attention is not None
        and all(isinstance(getattr(attention.self, n, None), nn.Linear) for n in ("query", "key", "value"))
        and isinstance(getattr(attention.output, "dense", None), nn.Linear)
        and isinstance(getattr(getattr(layer, "intermediate", None), "dense", None), nn.Linear)
        and isinstance(getattr(getattr(layer, "output", None), "dense", None), nn.Linear)
    )


def find_encoder(module: nn.Module) -> Encoder | None:
    """The first submodule with `encoder.layer` made of BERT-style layers and a `config`; None if there is none."""
    for candidate in module.modules():
        layers = getattr(getattr(candidate, "encoder", None), "layer", None)
        if (
            isinstance(layers, nn.ModuleList)
            and len(layers)
            and hasattr(candidate, "config")
            and all(_is_bert_layer(layer) for layer in layers)
        ):
            return Encoder(candidate, layers)
    return None


def trimmed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A padded text batch cut to its longest sequence: padding past it only costs time."""
    mask = batch.get(MASK_INPUT)
    if mask is None or mask.ndim != 2:
        return batch
    longest = max(int(mask.sum(axis=1).max()), 1)
    return {name: value[:, :longest] for name, value in batch.items()}


def tensors(batch: dict[str, np.ndarray], names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names)


def batches(data: Dataset, size: int, order: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `data` in `order` (default: as stored), each trimmed to its longest sequence."""
    index = np.arange(len(data)) if order is None else order
    for start in range(0, len(index), size):
        rows = index[start : start + size]
        yield trimmed({name: value[rows] for name, value in data.inputs.items()})
