"""Compression passes that change the network itself: structured pruning and distillation.

They run on the PyTorch form of the model, before the export pass, and hand the changed module
to it. What a field can be checked against without the model (ranges, a head count of zero, a
budget of zero seconds) is refused here; what needs the model (more heads kept than a layer has,
a student deeper than its teacher) is refused by the job, naming the same field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from optiserve.api.base import ApiModel

TRAINING_PASS_TYPES = ("distill",)


class Importance(StrEnum):
    ACTIVATION = "activation"
    MAGNITUDE = "magnitude"


class PruneScope(StrEnum):
    LAYER = "layer"
    GLOBAL = "global"


Number = TypeVar("Number", int, float)


def _each(value: Number | list[Number] | None) -> list[tuple[str, Number]]:
    """A one-for-every-layer or per-layer value as (where, value) pairs: where is "" for the single
    value and "[i]: " for a list item, so an error names the item (a message that starts with a field
    path is located there). An empty list is refused: it sets no target for any layer."""
    if value is None:
        return []
    if not isinstance(value, list):
        return [("", value)]
    if not value:
        raise ValueError("an empty list keeps nothing; give one value for every layer, or one per layer")
    return [(f"[{index}]: ", item) for index, item in enumerate(value)]


class PrunePass(ApiModel):
    type: Literal["prune"] = Field(
        description=(
            "Structured pruning: remove whole attention heads and FFN neurons (transformer encoders) or "
            "convolution output channels (CNNs), physically, so the network is smaller and dense."
        )
    )
    heads: int | list[int] | None = Field(
        default=None,
        description=(
            "Attention heads each encoder layer keeps: one number for every layer, or one per layer. "
            "With scope global, the total is kept and the importance score chooses the layers."
        ),
    )
    ffn_ratio: float | list[float] | None = Field(
        default=None,
        description="Share of each layer's FFN (intermediate) neurons kept, in (0, 1]: one for all layers or one per layer.",
    )
    channel_ratio: float | list[float] | None = Field(
        default=None,
        description=(
            "Share of output channels kept in each prunable convolution (one whose outputs feed only "
            "element-wise ops, pooling and the next convolution or linear layer), in (0, 1]."
        ),
    )
    scope: PruneScope = Field(
        default=PruneScope.LAYER,
        description=(
            "layer: every layer keeps its own target; global: the same total is kept and the least important "
            "units go first, whichever layer they are in (at least one head per layer stays)."
        ),
    )
    importance: Importance = Field(
        default=Importance.ACTIVATION,
        description=(
            "activation: mean magnitude of each unit's contribution to its layer's output on the calibration "
            "data; magnitude: the norm of its weights alone (no data)."
        ),
    )
    dataset_uri: str | None = Field(
        default=None, description="Calibration data for the activation importance score; never the validation set."
    )
    samples: int = Field(default=256, ge=8, le=100_000, description="Calibration samples scored at most.")

    @field_validator("heads")
    @classmethod
    def _heads_positive(cls, value: int | list[int] | None) -> int | list[int] | None:
        for where, kept in _each(value):
            if kept < 1:
                raise ValueError(f"{where}{kept} keeps no attention head; a layer keeps at least 1")
        return value

    @field_validator("ffn_ratio", "channel_ratio")
    @classmethod
    def _ratio_in_range(cls, value: float | list[float] | None) -> float | list[float] | None:
        for where, ratio in _each(value):
            if not 0 < ratio <= 1:
                raise ValueError(f"{where}{ratio:g} is not a share of units kept in (0, 1]")
        return value

    @model_validator(mode="after")
    def _check_target(self) -> PrunePass:
        if self.heads is None and self.ffn_ratio is None and self.channel_ratio is None:
            raise ValueError("heads, ffnRatio or channelRatio: set at least one pruning target")
        if self.importance is Importance.ACTIVATION and self.dataset_uri is None:
            raise ValueError("datasetUri: required for importance activation (or set importance: magnitude)")
        return self


class DistillPass(ApiModel):
    type: Literal["distill"] = Field(
        description=(
            "Knowledge distillation: train a student on the teacher's outputs over unlabeled data. The student "
            "is the model so far (recovery training after prune) or a subset of its encoder layers (layers)."
        )
    )
    layers: int | list[int] | None = Field(
        default=None,
        description=(
            "The student's encoder layers, taken from the teacher: a count (spread evenly, first and last kept) "
            "or the teacher's layer indices in order. Unset: every layer (recovery training)."
        ),
    )
    dataset_uri: str = Field(
        description="Unlabeled training data (.txt one sentence per line, .jsonl or .npz); never the validation set."
    )
    samples: int = Field(default=20_000, ge=1, le=1_000_000, description="Training samples used at most.")
    min_samples: int = Field(
        default=1000,
        ge=1,
        description="Fewer training samples than this are refused: a student trained on so few learns them by heart.",
    )
    max_training_seconds: int = Field(
        description=(
            "Wall-clock budget of the training loop in seconds, at least 1; training stops when it is spent. "
            "It counts into the Job's deadline (optimization.deadlineSeconds)."
        ),
        # The bound is checked by `_budget_positive` (its message says why); the schema carries it for the API server.
        json_schema_extra={"minimum": 1},
    )
    epochs: float = Field(default=3.0, gt=0, le=1000, description="Passes over the training data, unless the budget ends first.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Training batch size.")
    learning_rate: float = Field(default=1e-4, gt=0, le=1, description="AdamW learning rate (linear warm-up and decay).")
    seed: int = Field(
        default=0, ge=0, description="Seed of the data order and of every random choice: the same inputs make the same student."
    )
    temperature: float = Field(default=2.0, gt=0, le=100, description="Softmax temperature of the KL loss (classification).")
    label_weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Classification with labels: the share of the loss taken by cross-entropy on the labels (the rest is KL).",
    )
    hidden_weight: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Weight of an MSE between the student's encoder layer outputs and the teacher layers they came from (0: off)."
        ),
    )
    sequence_length: int = Field(default=128, ge=8, le=8192, description="Longest training sequence in tokens (text models).")

    @field_validator("max_training_seconds")
    @classmethod
    def _budget_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value} s leaves no time to train; give the training loop a budget of at least 1 s")
        return value

    @field_validator("layers")
    @classmethod
    def _layers_valid(cls, value: int | list[int] | None) -> int | list[int] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{value} keeps no encoder layer; a student keeps at least 1")
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list keeps no encoder layer; a student keeps at least 1")
            if any(index < 0 for index in value) or sorted(set(value)) != value:
                raise ValueError(f"{value} are not teacher layer indices, each at most once, in increasing order")
        return value

    @model_validator(mode="after")
    def _check_samples(self) -> DistillPass:
        if self.samples < self.min_samples:
            raise ValueError(f"samples: {self.samples} is below minSamples {self.min_samples}")
        return self
