"""TorchScript files and nn.Modules by import path: exported, checked against PyTorch, optimized."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from optiserve.cli import main
from tests.component.torch_factories import TinyClassifier
from tests.support.models import DIGITS_MODEL, FAST_BENCHMARK, NO_SPEED_GATE, manifest, tiny_dataset

INPUTS = [{"name": "x", "shape": [8], "dtype": "float32"}]


def _run(tmp_path: Path, model: dict[str, Any], passes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    tiny_dataset(tmp_path / "validation.npz", labels=True)
    tiny_dataset(tmp_path / "calibration.npz", seed=3)
    spec = {
        "model": {"task": "classification", "inputs": INPUTS, "outputs": ["logits"], **model},
        "optimization": {"passes": passes or [{"type": "quantize", "mode": "dynamic"}]},
        "validation": {"datasetUri": "validation.npz", "maxDegradation": 0.1, **NO_SPEED_GATE},
        "benchmark": FAST_BENCHMARK,
    }
    (tmp_path / "om.yaml").write_text(yaml.safe_dump(manifest(spec)))
    code = main(["optimize", "-f", str(tmp_path / "om.yaml"), "--out", str(tmp_path / "out")])
    report: dict[str, Any] = json.loads((tmp_path / "out/report.json").read_text())
    report["exit_code"] = code
    return report


def test_torchscript_source(tmp_path: Path) -> None:
    torch.jit.script(TinyClassifier().eval()).save(str(tmp_path / "model.pt"))  # type: ignore[no-untyped-call]
    report = _run(tmp_path, {"uri": "model.pt", "format": "torchscript"})
    assert report["exit_code"] == 0, report["reason"]
    export = report["passes"][0]
    assert export["name"] == "export" and export["status"] == "ok" and "checker ok" in export["detail"]
    assert report["benchmark"]["variants"][0]["runtime"] == "pytorch"
    assert report["fidelity"]["metric"] == "top1_agreement" and report["accuracy"] is not None


def test_module_by_import_path_with_weights(tmp_path: Path) -> None:
    torch.save(TinyClassifier().state_dict(), tmp_path / "weights.pt")
    report = _run(
        tmp_path,
        {"uri": "weights.pt", "format": "pytorch", "entrypoint": "tests.component.torch_factories:build"},
        passes=[
            {"type": "export", "atol": 1e-5},
            {"type": "quantize", "mode": "static", "calibration": {"datasetUri": "calibration.npz", "method": "entropy"}},
        ],
    )
    assert report["exit_code"] == 0, report["reason"]
    assert [p["status"] for p in report["passes"]] == ["ok", "ok"]
    assert "calibrated on 64 samples" in report["passes"][1]["detail"]


@pytest.mark.parametrize(
    ("entrypoint", "expected"),
    [
        ("tests.component.torch_factories:not_a_module", "factory returned dict, not a torch.nn.Module"),
        ("tests.component.no_such_module:build", "cannot import 'tests.component.no_such_module'"),
        ("tests.component.torch_factories", "must look like 'module:factory'"),
    ],
)
def test_bad_entrypoint_is_named(tmp_path: Path, entrypoint: str, expected: str) -> None:
    torch.save(TinyClassifier().state_dict(), tmp_path / "weights.pt")
    report = _run(tmp_path, {"uri": "weights.pt", "format": "pytorch", "entrypoint": entrypoint})
    assert report["exit_code"] == 1 and expected in report["reason"]
    assert not (tmp_path / "out/model_repository").exists()


def test_corrupt_torchscript_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not a zip archive")
    report = _run(tmp_path, {"uri": "model.pt", "format": "torchscript"})
    assert report["exit_code"] == 1 and "not a readable TorchScript file" in report["reason"]


def test_export_numerical_check_fails_beyond_tolerance(tmp_path: Path) -> None:
    """The digits CNN exports with a max abs error around 1e-6: a zero tolerance must fail the pass."""
    digits = Path(__file__).resolve().parents[2] / "examples/digits"
    spec = {
        "model": dict(DIGITS_MODEL),
        "optimization": {"passes": [{"type": "export", "atol": 0.0, "rtol": 0.0}]},
        "validation": {"datasetUri": str(digits / "artifacts/validation.npz"), **NO_SPEED_GATE},
        "benchmark": FAST_BENCHMARK,
    }
    (tmp_path / "om.yaml").write_text(yaml.safe_dump(manifest(spec)))
    assert main(["optimize", "-f", str(tmp_path / "om.yaml"), "--out", str(tmp_path / "out")]) == 1
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["passes"][0]["status"] == "failed"
    assert "numerical check failed: max abs error" in report["reason"]
    assert not (tmp_path / "out/model_repository").exists()
