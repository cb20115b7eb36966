"""Verifying a published artifact: the manifest against the job's digest, every file against the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from optiserve.artifact import MANIFEST, CorruptRepositoryError, verify_artifact
from optiserve.cli import main


def publish(root: Path) -> str:
    """A tiny artifact as the job publishes it; returns its digest (the sha256 of the manifest)."""
    (root / "model_repository" / "m" / "1").mkdir(parents=True)
    files = {"model_repository/m/1/model.onnx": b"weights" * 100, "model_repository/m/config.pbtxt": b'name: "m"'}
    for relative, content in files.items():
        (root / relative).write_bytes(content)
    manifest = {
        "model": "m",
        "files": {rel: {"sha256": hashlib.sha256(c).hexdigest(), "size": len(c)} for rel, c in files.items()},
    }
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (root / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_published_artifact_verifies_with_and_without_the_digest(tmp_path: Path) -> None:
    digest = publish(tmp_path)
    assert set(verify_artifact(tmp_path)["files"]) == {"model_repository/m/1/model.onnx", "model_repository/m/config.pbtxt"}
    verify_artifact(tmp_path, digest)
    verify_artifact(tmp_path, f"sha256:{digest}")


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda root: (root / "model_repository/m/1/model.onnx").write_bytes(b"weights"), "model.onnx: sha256 differs"),
        (lambda root: (root / "model_repository/m/config.pbtxt").write_bytes(b'name: "n"'), "config.pbtxt: sha256 differs"),
        (lambda root: (root / "model_repository/m/config.pbtxt").unlink(), "config.pbtxt: listed in the manifest but missing"),
        (lambda root: (root / MANIFEST).unlink(), "never completely published"),
        (lambda root: (root / MANIFEST).write_text("{"), "unreadable manifest"),
    ],
)
def test_a_damaged_artifact_is_refused_naming_the_file(tmp_path: Path, damage: object, named: str) -> None:
    publish(tmp_path)
    damage(tmp_path)  # type: ignore[operator]
    with pytest.raises(CorruptRepositoryError, match=named):
        verify_artifact(tmp_path)


def test_a_consistent_artifact_with_another_digest_is_refused(tmp_path: Path) -> None:
    """Files and manifest agree, but it is not the artifact the job reported (re-published, or swapped)."""
    publish(tmp_path)
    with pytest.raises(CorruptRepositoryError, match="not the artifact's digest"):
        verify_artifact(tmp_path, "cd" * 32)


def test_the_command_exits_1_naming_the_file_and_0_when_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = publish(tmp_path)
    assert main(["verify-artifact", str(tmp_path), f"--sha256={digest}"]) == 0
    (tmp_path / "model_repository/m/1/model.onnx").write_bytes(b"truncated")
    assert main(["verify-artifact", str(tmp_path), f"--sha256={digest}"]) == 1
    assert "model.onnx: sha256 differs" in capsys.readouterr().err
