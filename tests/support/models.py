"""Tiny real ONNX models, datasets and manifests built in code, for every tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_mlp(path: Path, *, seed: int = 0, input_name: str = "x") -> Path:
    """x[N,8] -> MatMul -> Relu -> MatMul -> y[N,4]: a real model ONNX Runtime can run and quantize."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiny_dataset(path: Path, *, rows: int = 64, name: str = "x", labels: bool = False, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {name: rng.normal(size=(rows, 8)).astype(np.float32)}
    if labels:
        arrays["labels"] = rng.integers(0, 4, size=rows)
    np.savez(path, **arrays)
    return path


def manifest(spec: dict[str, Any], name: str = "tiny") -> dict[str, Any]:
    return {"apiVersion": "optiserve.io/v1alpha1", "kind": "OptimizedModel", "metadata": {"name": name}, "spec": spec}


def optimize_spec(tmp_path: Path, spec: dict[str, Any]) -> tuple[int, dict[str, Any], Path]:
    """`optiserve optimize` on `spec` written as a manifest in `tmp_path`: exit code, report.json
    ({} when none was written) and the output directory."""
    import json

    from optiserve.cli import main

    path = tmp_path / "om.yaml"
    path.write_text(yaml.safe_dump(manifest(spec)))
    out = tmp_path / "out"
    code = main(["optimize", "-f", str(path), "--out", str(out)])
    report_path = out / "report.json"
    return code, json.loads(report_path.read_text()) if report_path.exists() else {}, out


DIGITS = REPO_ROOT / "examples/digits"
DIGITS_MODEL = {
    "uri": str(DIGITS / "artifacts/digits_cnn.pt"),
    "format": "pytorch",
    "entrypoint": f"{DIGITS / 'model.py'}:build",
    "task": "classification",
    "inputs": [{"name": "image", "shape": [1, 8, 8]}],
    "outputs": ["logits"],
}
"""The digits example's CNN as a `spec.model`: a PyTorch module from its factory, labelled classes."""
FAST_BENCHMARK = {"batchSizes": [1, 4], "threads": 2, "warmup": 2, "iterations": 3, "repeats": 2, "profile": True}
NO_SPEED_GATE = {"minSpeedup": 0}
"""For jobs in tests that are not about speed: their verdict must not hang on this machine's load."""


def example_without_speed_gate(example: Path, root: Path) -> Path:
    """A copy of an example's manifest with no speed gate, beside links to the example's files
    (relative paths in it resolve against its own directory), for tests of what follows the job."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in example.parent.iterdir():
        if entry.suffix not in (".yaml", ".yml") and not (root / entry.name).exists():
            (root / entry.name).symlink_to(entry)
    document = yaml.safe_load(example.read_text())
    document["spec"].setdefault("validation", {}).update(NO_SPEED_GATE)
    copy = root / example.name
    copy.write_text(yaml.safe_dump(document, sort_keys=False))
    return copy
