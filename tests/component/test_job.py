"""The optimization job end to end on a tiny real model: publishes, reports, and refuses bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from optiserve.api.job import JobRequest, JobResult, RunningPass, running_pass
from optiserve.artifact import verify_artifact
from optiserve.golden import GOLDEN_FILE, load_golden
from optiserve_jobs import repository
from optiserve_jobs.runners import OrtRunner
from tests.support.models import manifest, optimize_spec, tiny_dataset

REPORT_KEYS = {"passed", "speedup_p50", "speed", "size_ratio", "fidelity", "accuracy", "gates", "passes", "benchmark"}
NOISE_TOLERATED = {"stability": {"maxWaitFraction": 1.0}}
"""For a speed gate no noise can reach (1000x): every round counts, and the verdict stands on any machine."""


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "om.yaml"
    path.write_text(yaml.safe_dump(manifest(spec)))
    return path


def test_tiny_model_is_optimized_published_and_reported(tmp_path: Path, tiny_onnx_spec: dict[str, Any]) -> None:
    code, report, out = optimize_spec(tmp_path, tiny_onnx_spec)
    assert code == 0, report.get("reason")
    assert set(report) >= REPORT_KEYS
    assert report["passed"] and report["accuracy"] is None
    assert [p["status"] for p in report["passes"]] == ["ok", "ok"]
    assert report["fidelity"]["metric"] == "cosine" and report["fidelity"]["mean"] > 0.9
    variants = report["benchmark"]["variants"]
    assert [v["name"] for v in variants] == ["baseline", "candidate"]
    assert [b["batch_size"] for b in variants[1]["batches"]] == [1, 4]
    assert variants[1]["top_operators"], "the candidate's operator profile is empty"
    assert any("Quantize" in str(op["op_type"]) for op in variants[1]["top_operators"])
    assert not any("Quantize" in str(op["op_type"]) for op in variants[0]["top_operators"])
    assert report["benchmark"]["machine"]["logical_cpus"] >= 1
    verify_artifact(out)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_model", "absent.onnx: no such file"),
        ("corrupt_onnx", "not a readable ONNX model"),
        ("wrong_input_names", "do not match the model's input names"),
        ("empty_calibration", "contains no samples"),
        ("gate_violated", "gate failed: speedup_p50"),
        ("unsupported_scheme", "scheme 's3' is not supported"),
        ("nan_in_model", "gate failed: fidelity_mean"),
    ],
)
def test_bad_input_fails_with_a_reason_and_leaves_no_repository(
    tmp_path: Path, tiny_onnx_spec: dict[str, Any], case: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A previous good run published a repository; the failing run must not leave it behind.
    assert optimize_spec(tmp_path, tiny_onnx_spec)[0] == 0
    spec = json.loads(json.dumps(tiny_onnx_spec))
    if case == "missing_model":
        spec["model"]["uri"] = "absent.onnx"
    elif case == "corrupt_onnx":
        (tmp_path / "model.onnx").write_bytes(b"\x08\x07not an onnx model at all")
    elif case == "wrong_input_names":
        spec["validation"]["datasetUri"] = str(tiny_dataset(tmp_path / "wrong.npz", name="pixels"))
    elif case == "empty_calibration":
        np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8), dtype=np.float32))
        spec["optimization"]["passes"][1] = {"type": "quantize", "mode": "static", "calibration": {"datasetUri": "empty.npz"}}
    elif case == "gate_violated":
        spec["validation"]["minSpeedup"] = 1000.0
        spec["benchmark"] = spec["benchmark"] | NOISE_TOLERATED
    elif case == "unsupported_scheme":
        spec["validation"]["datasetUri"] = "s3://bucket/validation.npz"
    elif case == "nan_in_model":
        spec["optimization"]["passes"] = [{"type": "fp16", "keepIoTypes": False}]
        spec["validation"]["datasetUri"] = str(_huge_inputs(tmp_path))
    code, report, out = optimize_spec(tmp_path, spec)
    captured = capsys.readouterr()
    assert code == 1
    assert expected in report["reason"] and expected in captured.err
    assert not report["passed"]
    assert not (out / "model_repository").exists() and not (out / "model_repository_python").exists()
    assert not (out / repository.MANIFEST).exists() and not (out / GOLDEN_FILE).exists()
    assert not list(out.glob(".work-*")) and not list(out.glob(".staging-*"))


def test_golden_set_is_published_under_the_manifest(tmp_path: Path, tiny_onnx_spec: dict[str, Any]) -> None:
    tiny_dataset(tmp_path / "validation.npz", labels=True)  # the same rows, now with labels
    code, report, out = optimize_spec(tmp_path, tiny_onnx_spec)
    assert code == 0, report.get("reason")
    assert GOLDEN_FILE in verify_artifact(out)["files"]
    samples = load_golden(out / GOLDEN_FILE)
    validation = np.load(tmp_path / "validation.npz")
    assert len(samples) == len(validation["x"]) == report["validation_samples"]
    for index, sample in enumerate(samples):
        assert set(sample.inputs) == {"x"} and sample.inputs["x"].dtype == np.float32
        np.testing.assert_array_equal(sample.inputs["x"], validation["x"][index : index + 1])
        assert sample.label == int(validation["labels"][index])
    served = OrtRunner(out / "model_repository/tiny/1/model.onnx", threads=1).run(dict(samples[0].inputs))
    source = OrtRunner(tmp_path / "model.onnx", threads=1).run({"x": validation["x"][:1]})
    assert served.shape == (1, 4) and np.isfinite(served).all()
    assert float(served[0] @ source[0] / np.linalg.norm(served) / np.linalg.norm(source)) > 0.9  # INT8 of the same model


def _huge_inputs(tmp_path: Path) -> Path:
    """Inputs whose activations overflow float16 (inf/nan): fidelity must then fail, not pass."""
    path = tmp_path / "huge.npz"
    np.savez(path, x=np.full((16, 8), 3e4, dtype=np.float32))
    return path


def test_fp16_keeps_fidelity_and_io_types(tmp_path: Path, tiny_onnx_spec: dict[str, Any]) -> None:
    tiny_onnx_spec["optimization"]["passes"] = [{"type": "fp16"}]
    code, report, out = optimize_spec(tmp_path, tiny_onnx_spec)
    assert code == 0, report["reason"]
    assert report["fidelity"]["min"] > 0.999 and report["passes"][0]["detail"].startswith("float16")
    config = (out / "model_repository_python/tiny/config.pbtxt").read_text()
    assert "TYPE_FP32" in config and "TYPE_FP16" not in config


def test_unknown_pass_is_refused_before_anything_runs(tmp_path: Path, tiny_onnx_spec: dict[str, Any]) -> None:
    tiny_onnx_spec["optimization"]["passes"] = [{"type": "prune"}]
    code, report, out = optimize_spec(tmp_path, tiny_onnx_spec)
    assert code == 1 and report == {} and not out.exists()


def test_gate_failure_report_names_value_and_threshold(tmp_path: Path, tiny_onnx_spec: dict[str, Any]) -> None:
    tiny_onnx_spec["validation"]["minSpeedup"] = 1000.0
    tiny_onnx_spec["benchmark"] = tiny_onnx_spec["benchmark"] | NOISE_TOLERATED
    _, report, _ = optimize_spec(tmp_path, tiny_onnx_spec)
    gate = next(g for g in report["gates"] if g["name"] == "speedup_p50")
    assert gate == {
        "name": "speedup_p50",
        "passed": False,
        "value": gate["value"],
        "threshold": 1000.0,
        "comparison": ">=",
        "inconclusive": False,
        "detail": gate["detail"],
    }
    assert "interval" in gate["detail"]
    assert gate["value"] is not None and gate["value"] < 1000.0
    ratios = sorted(report["speed"]["ratios"])
    assert ratios and ratios[0] <= gate["value"] <= ratios[-1], "the median of the paired rounds"


def tabular_mlp(path: Path) -> Path:
    """13 -> 64 -> 64 -> 3 with ReLUs: so little compute that static INT8's extra Quantize and
    Dequantize nodes cost more than its integer MatMuls save."""
    rng = np.random.default_rng(3)
    shapes = [(13, 64), (64, 64), (64, 3)]
    weights = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32) / 4, f"w{i}") for i, s in enumerate(shapes)]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["r0"]),
        helper.make_node("MatMul", ["r0", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tabular",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_candidate_slower_than_its_source_is_not_published_by_default(tmp_path: Path) -> None:
    tabular_mlp(tmp_path / "model.onnx")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(4).normal(size=(64, 13)).astype(np.float32))
    quantize = {"type": "quantize", "mode": "static", "calibration": {"datasetUri": "data.npz", "samples": 64}}
    spec = {
        "model": {"uri": "model.onnx", "format": "onnx", "task": "generic"},
        "optimization": {"passes": [quantize]},
        "validation": {"datasetUri": "data.npz", "maxDegradation": 0.2},  # no minSpeedup: the default gate
        # One thread: at 50 us a run, waking a second pool thread is most of the time, and in 1 of 10
        # runs with two the source's worker came out 2x slower throughout (a per-process effect).
        "benchmark": {"batchSizes": [1], "threads": 1, "warmup": 5, "iterations": 400, "repeats": 5, "profile": False},
    }
    code, report, out = optimize_spec(tmp_path, spec)
    assert code == 1 and not report["passed"]
    gate = next(g for g in report["gates"] if g["name"] == "faster_than_baseline")
    assert not gate["passed"] and gate["threshold"] == 1.0 and "minSpeedup: 0" in gate["detail"]
    if gate["inconclusive"]:  # a busy machine: no verdict, and it says so
        assert report["reason"].startswith("inconclusive: faster_than_baseline not judged: ")
    else:
        assert report["reason"].startswith("gate failed: faster_than_baseline = "), report["reason"]
        low, _ = report["speed"]["interval"]
        assert low <= 1.0, "refused: not faster beyond the measured noise"
    assert not (out / "model_repository").exists() and not (out / repository.MANIFEST).exists()


def _run_container_entry_point(tmp_path: Path, request_json: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp_path / "request.json").write_text(request_json)
    termination = tmp_path / "termination-log"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "optiserve_jobs",
            "--request",
            str(tmp_path / "request.json"),
            "--out",
            str(tmp_path / "out"),
            "--termination-log",
            str(termination),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return completed, termination


def test_container_entry_point_writes_the_termination_message(tmp_path: Path, tiny_onnx_spec: dict[str, Any]) -> None:
    request = JobRequest.model_validate(
        {
            "name": "tiny",
            "model": tiny_onnx_spec["model"],
            "passes": tiny_onnx_spec["optimization"]["passes"],
            "validation": tiny_onnx_spec["validation"],
            "benchmark": tiny_onnx_spec["benchmark"],
            "baseDir": str(tmp_path),
        }
    )
    completed, termination = _run_container_entry_point(tmp_path, request.model_dump_json(by_alias=True))
    assert completed.returncode == 0, completed.stderr[-2000:]
    # The container's output is its pod's log: the operator reads the running pass from it.
    assert running_pass(completed.stdout + completed.stderr) == RunningPass(2, 2, "quantize")
    result = JobResult.from_termination_message(termination.read_text())
    assert result.passed and result.artifact is not None and result.artifact.size_bytes > 0
    assert len(termination.read_bytes()) <= 4096
    assert Path(result.report_uri or "").is_file()


def test_container_entry_point_refuses_a_bad_request(tmp_path: Path) -> None:
    completed, termination = _run_container_entry_point(tmp_path, json.dumps({"apiVersion": "optiserve.io/job/v9", "name": "x"}))
    assert completed.returncode == 1
    result = JobResult.from_termination_message(termination.read_text())
    assert not result.passed and "invalid JobRequest" in result.reason


def test_text_golden_samples_are_unpadded_and_embed_like_the_padded_validation(tmp_path: Path) -> None:
    """MiniLM's real tokenizer and model: cutting the padding changes no embedding."""
    import torch

    from optiserve.api.spec import ModelSpec
    from optiserve_jobs.datasets import load_dataset
    from optiserve_jobs.golden_set import golden_samples
    from optiserve_jobs.source_model import load_source_model
    from optiserve_jobs.torch_models import load_torch_module
    from tests.support.models import REPO_ROOT

    minilm = REPO_ROOT / "examples/minilm"
    spec = ModelSpec.model_validate({"uri": str(minilm / "model"), "format": "huggingface", "task": "embedding"})
    source = load_source_model(spec, base_dir=None, download_dir=tmp_path)
    validation = load_dataset(minilm / "data/validation.txt", source, limit=6)
    samples = golden_samples(validation, source.inputs, text_inputs=True)
    names = [i.name for i in source.inputs]
    module = load_torch_module(source, None)
    with torch.inference_mode():
        padded = module(*(torch.from_numpy(validation.inputs[n]) for n in names))
        for index, sample in enumerate(samples):
            length = int(validation.inputs["attention_mask"][index].sum())
            assert sample.inputs["input_ids"].shape == (1, length) < (1, spec.sequence_length)
            unpadded = module(*(torch.from_numpy(sample.inputs[n]) for n in names))
            assert float(torch.nn.functional.cosine_similarity(unpadded[0], padded[index], dim=0)) > 0.9999
