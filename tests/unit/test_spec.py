"""The OptimizedModel spec: the examples are valid, and every invalid spec names its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from optiserve.api.manifest import ManifestError, load_manifest, parse_manifest
from optiserve.api.spec import QuantizePass
from optiserve.cli import main
from tests.support.models import REPO_ROOT, manifest

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*/optimizedmodel*.yaml"))


def _base() -> dict[str, Any]:
    return {"model": {"uri": "m.onnx", "format": "onnx"}, "validation": {"datasetUri": "v.npz"}}


def _errors(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest(spec))
    return caught.value.errors


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_are_valid(path: Path) -> None:
    assert load_manifest(path).kind == "OptimizedModel"


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 3


def test_defaults_fill_in() -> None:
    spec = parse_manifest(manifest(_base())).spec
    assert spec.benchmark.threads is None, "the CPUs the job's container may use"
    assert spec.validation.min_speedup is None and spec.benchmark.stability.budget == 3
    assert spec.serving.triton.dynamic_batching is not None


def test_static_quantization_needs_calibration() -> None:
    spec = _base() | {"optimization": {"passes": [{"type": "quantize", "mode": "static"}]}}
    assert _errors(spec) == ["spec.optimization.passes[0].calibration: required when mode is static"]


def test_smoothing_needs_calibration() -> None:
    spec = _base() | {"optimization": {"passes": [{"type": "quantize", "smoothing": {"alpha": 0.5}}]}}
    assert _errors(spec)[0].startswith("spec.optimization.passes[0].calibration:")


def test_unknown_pass_is_an_error_naming_the_pass() -> None:
    errors = _errors(_base() | {"optimization": {"passes": [{"type": "sparsify"}]}})
    assert len(errors) == 1 and errors[0].startswith("spec.optimization.passes[0]")
    assert "sparsify" in errors[0]


def test_typo_in_a_field_name_is_refused() -> None:
    spec = _base() | {"validation": {"datasetUri": "v.npz", "maxDegradaton": 0.1}}
    assert _errors(spec) == ["spec.validation.maxDegradaton: Extra inputs are not permitted"]


def test_pytorch_source_needs_entrypoint_and_inputs() -> None:
    errors = _errors(_base() | {"model": {"uri": "w.pt", "format": "pytorch"}})
    assert errors == ["spec.model.inputs: required for format pytorch (the export needs example inputs)"]
    spec = _base() | {"model": {"uri": "w.pt", "format": "pytorch", "inputs": [{"name": "x", "shape": [4]}]}}
    assert _errors(spec)[0].startswith("spec.model.entrypoint:")


def test_export_must_come_first() -> None:
    spec = _base() | {"optimization": {"passes": [{"type": "graph"}, {"type": "export"}]}}
    assert _errors(spec) == [
        "spec.optimization.passes[1]: export must be the first pass after prune and distill, and only once (passes[0] is graph)"
    ]


def test_every_error_is_reported_at_once() -> None:
    spec = {"model": {"uri": "", "format": "tflite"}, "validation": {"datasetUri": "v", "maxDegradation": 2}}
    fields = {e.split(":")[0] for e in _errors(spec)}
    assert fields == {"spec.model.uri", "spec.model.format", "spec.validation.maxDegradation"}


def test_bounds_are_enforced() -> None:
    errors = _errors(_base() | {"benchmark": {"threads": 0}})
    assert errors[0].startswith("spec.benchmark.threads:")


def test_pass_models_are_typed() -> None:
    spec = parse_manifest(manifest(_base() | {"optimization": {"passes": [{"type": "quantize", "perChannel": False}]}})).spec
    step = spec.optimization.passes[0]
    assert isinstance(step, QuantizePass) and step.per_channel is False


def test_cli_validate_prints_every_error_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "om.yaml"
    path.write_text(yaml.safe_dump(manifest({"model": {"uri": "m", "format": "x"}, "validation": {}})))
    assert main(["validate", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.model.format" in err and "spec.validation.datasetUri" in err


def test_cli_validate_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(REPO_ROOT / "examples/minilm/optimizedmodel.yaml")]) == 0
    assert "is valid" in capsys.readouterr().err


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(ManifestError, match="<yaml>"):
        load_manifest(bad)
