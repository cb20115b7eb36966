"""Prune and distill inside the optimization job, on the real examples: a smaller dense model, and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import numpy_helper

from optiserve_jobs import repository
from tests.support.models import DIGITS_MODEL, FAST_BENCHMARK, NO_SPEED_GATE, optimize_spec

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples/digits"
MINILM = ROOT / "examples/minilm"
TORCH_FACTORIES = Path(__file__).with_name("torch_factories.py")


def _digits_spec(passes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": dict(DIGITS_MODEL),
        "optimization": {"passes": passes},
        "validation": {"datasetUri": str(DIGITS / "artifacts/validation.npz"), "maxDegradation": 0.03, **NO_SPEED_GATE},
        "benchmark": FAST_BENCHMARK | {"batchSizes": [1, 32]},
    }


def _minilm_spec(passes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": {"uri": str(MINILM / "model"), "format": "huggingface", "task": "embedding", "sequenceLength": 32},
        "optimization": {"passes": passes},
        "validation": {"datasetUri": str(MINILM / "data/validation.txt"), "samples": 16, **NO_SPEED_GATE},
        "benchmark": FAST_BENCHMARK,
    }


def _conv_output_channels(model: Path) -> list[int]:
    graph = onnx.load(str(model)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [int(weights[n.input[1]].shape[0]) for n in graph.node if n.op_type == "Conv" and n.input[1] in weights]


def test_a_pruned_and_distilled_cnn_is_served_with_half_its_channels(tmp_path: Path) -> None:
    passes = [
        {"type": "prune", "channelRatio": 0.5, "datasetUri": str(DIGITS / "artifacts/calibration.npz")},
        {
            "type": "distill",
            "datasetUri": str(DIGITS / "artifacts/train.npz"),
            "maxTrainingSeconds": 120,
            "epochs": 20,
            "batchSize": 64,
            "learningRate": 0.002,
            "temperature": 4,
            "labelWeight": 0.2,
        },
    ]
    code, report, out = optimize_spec(tmp_path, _digits_spec(passes))
    assert code == 0, report["reason"]
    assert [p["name"] for p in report["passes"]] == ["prune", "distill", "export"]
    assert "features.0 16/32, features.2 32/64" in report["passes"][0]["detail"]
    assert "steps of 64 on 1257 samples" in report["passes"][1]["detail"]
    assert report["accuracy"]["baseline"] - report["accuracy"]["candidate"] <= 0.03
    served = next((out / "model_repository").rglob("model.onnx"))
    assert _conv_output_channels(served) == [16, 32]


def _refused(tmp_path: Path, spec: dict[str, Any]) -> str:
    code, report, out = optimize_spec(tmp_path, spec)
    assert code == 1
    assert not report["passed"]
    assert not (out / "model_repository").exists() and not (out / repository.MANIFEST).exists()
    return str(report["reason"])


def test_a_cnn_has_no_heads_to_prune(tmp_path: Path) -> None:
    reason = _refused(tmp_path, _digits_spec([{"type": "prune", "heads": 2, "importance": "magnitude"}]))
    assert "optimization.passes[0].heads/ffnRatio: the model (DigitsCNN) has no BERT-style encoder" in reason


def test_a_model_without_convolutions_or_encoder_cannot_be_pruned(tmp_path: Path) -> None:
    spec = _digits_spec([{"type": "prune", "channelRatio": 0.5, "importance": "magnitude"}])
    import torch

    from tests.component.torch_factories import build

    torch.save(build(None).state_dict(), tmp_path / "weights.pt")
    spec["model"] = {
        "uri": str(tmp_path / "weights.pt"),
        "format": "pytorch",
        "entrypoint": f"{TORCH_FACTORIES}:build",
        "inputs": [{"name": "x", "shape": [8]}],
    }
    spec["validation"]["datasetUri"] = str(_tiny_npz(tmp_path))
    reason = _refused(tmp_path, spec)
    assert "optimization.passes[0].channelRatio: the model (TinyClassifier) has no convolution" in reason


def _tiny_npz(tmp_path: Path) -> Path:
    import numpy as np

    path = tmp_path / "x.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    return path


@pytest.mark.parametrize(
    ("passes", "expected"),
    [
        (
            [{"type": "prune", "heads": [12, 12, 12, 12, 12, 13], "importance": "magnitude"}],
            "optimization.passes[0].heads: keeps 13 heads in layer 5, which has 12",
        ),
        (
            [{"type": "distill", "layers": 8, "datasetUri": str(MINILM / "data/train.txt"), "maxTrainingSeconds": 60}],
            "optimization.passes[0].layers: a student of 8 layers is larger than its teacher of 6",
        ),
        (
            [{"type": "distill", "datasetUri": str(MINILM / "data/calibration.txt"), "maxTrainingSeconds": 60}],
            "optimization.passes[0].datasetUri: 200 training samples, fewer than 1000",
        ),
        (
            [{"type": "prune", "channelRatio": 0.5, "importance": "magnitude"}],
            "optimization.passes[0].channelRatio: the model is a transformer encoder",
        ),
    ],
    ids=["all-heads-plus-one", "student-larger-than-teacher", "corpus-too-small", "channels-on-an-encoder"],
)
def test_minilm_refusals_name_the_field_and_publish_nothing(tmp_path: Path, passes: list[dict[str, Any]], expected: str) -> None:
    assert expected in _refused(tmp_path, _minilm_spec(passes))


def test_an_empty_corpus_is_refused_naming_the_field(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    passes = [{"type": "distill", "datasetUri": str(empty), "maxTrainingSeconds": 60}]
    reason = _refused(tmp_path, _minilm_spec(passes))
    assert "optimization.passes[0].datasetUri: empty.txt: contains no samples" in reason
