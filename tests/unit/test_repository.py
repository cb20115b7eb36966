"""Publishing is atomic and verified: a truncated, modified or half-written repository is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optiserve.api.spec import TritonSpec
from optiserve.artifact import CorruptRepositoryError, verify_artifact
from optiserve.resources.triton_config import parse_model_config
from optiserve_jobs import repository
from tests.support.models import tiny_mlp


def _publish(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    settings = repository.PublishSettings("tiny", TritonSpec(), [1, 8], 128, text_inputs=False)
    artifact = repository.publish(out, tiny_mlp(tmp_path / "m.onnx"), settings)
    assert artifact.uri.endswith("model_repository") and len(artifact.sha256) == 64
    return out


def test_both_repositories_are_complete_and_verified(tmp_path: Path) -> None:
    out = _publish(tmp_path)
    manifest = verify_artifact(out)
    files = set(manifest["files"])
    assert {
        "model_repository/tiny/config.pbtxt",
        "model_repository/tiny/1/model.onnx",
        "model_repository_python/tiny/1/model.py",
        "model_repository_python/tiny/1/model.onnx",
    } <= files
    onnx_backend = parse_model_config((out / "model_repository/tiny/config.pbtxt").read_text())
    python_backend = parse_model_config((out / "model_repository_python/tiny/config.pbtxt").read_text())
    assert (onnx_backend.backend, python_backend.backend) == ("onnxruntime", "python")
    assert [i.name for i in python_backend.input] == ["x"] and list(python_backend.output[0].dims) == [4]
    assert not list(out.glob(".staging-*"))
    ready = json.loads((out / "ready_request.json").read_text())
    assert ready == {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}]}
    assert "ready_request.json" in files


def test_truncated_model_is_refused(tmp_path: Path) -> None:
    out = _publish(tmp_path)
    model = out / "model_repository/tiny/1/model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(CorruptRepositoryError, match=r"model_repository/tiny/1/model\.onnx"):
        verify_artifact(out)


def test_modified_config_is_refused(tmp_path: Path) -> None:
    out = _publish(tmp_path)
    config = out / "model_repository_python/tiny/config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 32", "max_batch_size: 64"))
    with pytest.raises(CorruptRepositoryError, match="sha256 differs"):
        verify_artifact(out)


def test_missing_file_or_manifest_is_refused(tmp_path: Path) -> None:
    out = _publish(tmp_path)
    (out / "model_repository/tiny/config.pbtxt").unlink()
    with pytest.raises(CorruptRepositoryError, match="missing"):
        verify_artifact(out)
    (out / repository.MANIFEST).unlink()
    with pytest.raises(CorruptRepositoryError, match="never completely published"):
        verify_artifact(out)


def test_unreadable_manifest(tmp_path: Path) -> None:
    out = _publish(tmp_path)
    (out / repository.MANIFEST).write_text(json.dumps({"nothing": 1}))
    with pytest.raises(CorruptRepositoryError, match="unreadable"):
        verify_artifact(out)


def test_remove_published_leaves_nothing(tmp_path: Path) -> None:
    out = _publish(tmp_path)
    repository.remove_published(out)
    assert not (out / "model_repository").exists() and not (out / repository.MANIFEST).exists()
