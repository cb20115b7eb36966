"""Structured pruning and distillation on small real models: exact removal, targets, students, training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from optiserve.api.compression import DistillPass, PruneScope
from optiserve.api.spec import Task
from optiserve_jobs.compression import channels, heads, targets
from optiserve_jobs.compression.encoder import find_encoder
from optiserve_jobs.compression.training import Distiller, epoch_batches
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.errors import PassError
from optiserve_jobs.passes.distill import student_layers
from optiserve_jobs.torch_models import SentenceEmbedding

NAMES = ["input_ids", "attention_mask"]


def _tiny_bert(seed: int = 0) -> SentenceEmbedding:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"
    return SentenceEmbedding(BertModel(config), NAMES).eval()


def _tokens(count: int, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, size=(count, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    for row, length in enumerate(rng.integers(4, 13, size=count)):
        mask[row, length:] = 0
        ids[row, length:] = 0
    return Dataset({"input_ids": ids, "attention_mask": mask}, None)


def _embed(module: torch.nn.Module, data: Dataset) -> torch.Tensor:
    with torch.inference_mode():
        output: torch.Tensor = module(*(torch.from_numpy(data.inputs[n]) for n in NAMES))
    return output


def test_a_removed_head_equals_a_head_whose_output_is_zeroed() -> None:
    model = _tiny_bert()
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    layer = find_encoder(masked).bert_layers[1]  # type: ignore[union-attr]
    size = layer.attention.self.attention_head_size
    with torch.no_grad():
        layer.attention.output.dense.weight[:, 2 * size : 3 * size] = 0
    heads.keep_heads(find_encoder(removed).bert_layers[1], [0, 1, 3])  # type: ignore[union-attr]
    data = _tokens(6)
    assert torch.allclose(_embed(masked, data), _embed(removed, data), atol=1e-6)
    assert not torch.allclose(_embed(model, data), _embed(removed, data), atol=1e-4)
    assert find_encoder(removed).num_heads == [4, 3, 4]  # type: ignore[union-attr]


def test_removed_ffn_neurons_shrink_the_layers_and_keep_the_hidden_size() -> None:
    model = _tiny_bert()
    encoder = find_encoder(model)
    assert encoder is not None
    heads.keep_neurons(encoder.bert_layers[0], list(range(0, 64, 2)))
    assert encoder.ffn_sizes == [32, 64, 64]
    assert _embed(model, _tokens(3)).shape == (3, 32)


def test_activation_scores_rank_a_silenced_head_last() -> None:
    model = _tiny_bert()
    layer = find_encoder(model).bert_layers[0]  # type: ignore[union-attr]
    size = layer.attention.self.attention_head_size
    with torch.no_grad():
        layer.attention.self.value.weight[size : 2 * size] = 0
        layer.attention.self.value.bias[size : 2 * size] = 0
    scores = heads.activation_scores(model, find_encoder(model), _tokens(16), NAMES)  # type: ignore[arg-type]
    assert int(np.argmin(scores[0].heads)) == 1
    assert scores[0].heads[1] == pytest.approx(0.0, abs=1e-6)


def test_head_targets_refuse_more_heads_than_a_layer_has() -> None:
    with pytest.raises(PassError, match=r"optimization.passes\[0\].heads: keeps 5 heads in layer 0, which has 4"):
        targets.head_counts(5, [4, 4], "optimization.passes[0].heads")
    with pytest.raises(PassError, match="3 values for a model with 2 layers"):
        targets.head_counts([1, 2, 3], [4, 4], "heads")


def test_global_scope_keeps_the_total_and_at_least_one_unit_per_layer() -> None:
    scores = [np.array([0.1, 0.1, 0.1, 0.1]), np.array([10.0, 0.0, 0.0, 0.0]), np.array([4.0, 3.0, 2.0, 1.0])]
    chosen = targets.choose(scores, [2, 2, 2], PruneScope.GLOBAL)
    assert sum(len(c) for c in chosen) == 6
    assert all(len(c) >= 1 for c in chosen)
    assert chosen[1] == [0]  # one head carries that layer: it keeps only that one
    assert targets.choose(scores, [2, 2, 2], PruneScope.LAYER) == [[0, 1], [0, 1], [0, 1]]


def test_ffn_ratio_is_rounded_up_to_whole_blocks() -> None:
    assert targets.ratio_counts(0.5, [1536, 1536], "ffnRatio") == [768, 768]
    assert targets.ratio_counts([0.3, 1.0], [100, 100], "ffnRatio") == [32, 100]


def test_student_layers_spread_evenly_and_refuse_a_larger_student() -> None:
    assert student_layers(3, 6, "layers") == [0, 2, 5]
    assert student_layers(None, 4, "layers") == [0, 1, 2, 3]
    assert student_layers([1, 3], 6, "layers") == [1, 3]
    with pytest.raises(PassError, match="a student of 8 layers is larger than its teacher of 6"):
        student_layers(8, 6, "optimization.passes[1].layers")
    with pytest.raises(PassError, match="layer 6 does not exist"):
        student_layers([0, 6], 6, "optimization.passes[1].layers")


def test_epoch_batches_cover_every_sample_once_and_group_lengths() -> None:
    sizes = np.random.default_rng(0).integers(1, 100, size=1000)
    batches = epoch_batches(sizes, 10, np.random.default_rng(3))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([sizes[b].max() - sizes[b].min() for b in batches])
    assert spread < 10  # shuffled batches of random lengths would spread about 80


def _gap(teacher: torch.nn.Module, student: torch.nn.Module, data: Dataset) -> float:
    return float(((_embed(teacher, data) - _embed(student, data)) ** 2).sum(dim=-1).mean())


def _distill(seed: int, budget: int = 600) -> tuple[torch.nn.Module, float, float]:
    teacher = _tiny_bert(seed=0)
    student = copy.deepcopy(teacher)
    find_encoder(student).replace_layers([find_encoder(student).layers[0]])  # type: ignore[union-attr]
    before = _gap(teacher, student, _tokens(64, seed=5))
    config = DistillPass.model_validate(
        {
            "type": "distill",
            "datasetUri": "x",
            "maxTrainingSeconds": budget,
            "epochs": 4,
            "batchSize": 16,
            "learningRate": 3e-4,
            "minSamples": 1,
            "seed": seed,
        }
    )
    data = _tokens(128)
    result = Distiller(teacher, student, config, Task.EMBEDDING, NAMES).train(data, lambda _: None, None)
    assert result.steps == result.planned_steps == 32
    return student, before, _gap(teacher, student, _tokens(64, seed=5))


def test_distillation_lowers_the_loss_and_the_same_seed_makes_the_same_student() -> None:
    student, before, after = _distill(seed=7)
    again, _, _ = _distill(seed=7)
    other, _, _ = _distill(seed=8)
    assert after < before * 0.5  # closer to the teacher on samples it never trained on
    for a, b in zip(student.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), other.parameters(), strict=True))


class _Chain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))  # type: ignore[no-any-return]


def test_channel_pruning_slices_coupled_layers_and_keeps_the_output_shape() -> None:
    torch.manual_seed(0)
    model = _Chain().eval()
    example = (torch.randn(2, 1, 8, 8),)
    scores = channels.magnitude_scores(model)
    pruned = channels.prune_channels(model, example, {"features.0": 0.5, "features.3": 0.25}, scores)
    assert [(p.name, p.kept) for p in pruned] == [("features.0", 4), ("features.3", 4)]
    assert model.features[1].num_features == 4  # the BatchNorm after the first conv
    assert model.head[1].in_features == 4 * 4 * 4  # the Linear after the Flatten
    assert model(*example).shape == (2, 10)
