"""Text-generation models in the spec: the weightonly pass and the LLM gates, and every refusal
naming its field, in the models and in `optiserve validate -f`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from optiserve.api.generation import AccuracyLevel, WeightOnlyAlgorithm, WeightOnlyPass
from optiserve.api.manifest import ManifestError, parse_manifest
from optiserve.api.spec import Task
from optiserve.cli import main
from tests.support.models import manifest

LLM = {"uri": "model", "format": "huggingface", "task": "text-generation"}
ENCODER = {"uri": "minilm", "format": "huggingface", "task": "embedding"}
INT8 = {"type": "weightonly", "bits": 8}
P1 = "spec.optimization.passes[1]"


def _spec(*passes: dict[str, Any], model: dict[str, Any] = LLM, **validation: Any) -> dict[str, Any]:
    return {
        "model": model,
        "optimization": {"passes": [{"type": "export"}, *passes]},
        "validation": {"datasetUri": "v.txt", **validation},
    }


def _errors(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as refused:
        parse_manifest(manifest(spec))
    return refused.value.errors


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("4-bit gptq without calibration", _spec(INT8 | {"bits": 4, "algorithm": "gptq"}), f"{P1}.calibration: required for"),
    ("gptq at 8 bits", _spec(INT8 | {"algorithm": "gptq", "calibration": {"datasetUri": "c.txt"}}), f"{P1}.bits: algorithm gptq"),
    ("keepInt8 at 8 bits", _spec(INT8 | {"keepInt8": ["/lm_head/MatMul"]}), f"{P1}.keepInt8: only with bits 4"),
    ("a block size that is no power of two", _spec(INT8 | {"blockSize": 48}), f"{P1}.blockSize: blockSize 48: must be"),
    ("3 bits", _spec(INT8 | {"bits": 3}), f"{P1}.bits: "),
    ("an accuracy level out of range", _spec(INT8 | {"accuracyLevel": 5}), f"{P1}.accuracyLevel: "),
    ("weightonly on an encoder", _spec(INT8, model=ENCODER), f"{P1}: weightonly needs model.task text-generation"),
    (
        "an encoder pass on a decoder",
        _spec({"type": "quantize"}),
        f"{P1}: quantize does not apply to a text-generation model (its passes are export and weightonly)",
    ),
    ("two weightonly passes", _spec(INT8, INT8), "spec.optimization.passes: at most one weightonly pass"),
    (
        "a decoder given as ONNX",
        _spec(model={"uri": "m.onnx", "format": "onnx", "task": "text-generation"}),
        "spec.model.format: task text-generation takes format huggingface",
    ),
    ("a KL gate below 0", _spec(generation={"gates": {"maxKl": -0.1}}), "spec.validation.generation.gates.maxKl: "),
    ("a perplexity ratio below 1", _spec(generation={"gates": {"maxPerplexityRatio": 0.9}}), "spec.validation.generation"),
    ("windows of 4 tokens", _spec(generation={"contextTokens": 4}), "spec.validation.generation.contextTokens: "),
]


@pytest.mark.parametrize(("case", "spec", "expected"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_names_its_field(case: str, spec: dict[str, Any], expected: str) -> None:
    lines = _errors(spec)
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines[0]


def test_a_valid_llm_spec_parses_to_typed_passes_and_gates() -> None:
    parsed = parse_manifest(
        manifest(
            _spec(
                INT8 | {"bits": 4, "algorithm": "kquant", "keepInt8": ["/lm_head/MatMul"], "accuracyLevel": 1},
                generation={"tasksUri": "t.jsonl", "gates": {"maxKl": 0.02}},
            )
        )
    )
    spec = parsed.spec
    assert spec.model.task is Task.TEXT_GENERATION
    weight_only = spec.optimization.passes[1]
    assert isinstance(weight_only, WeightOnlyPass)
    expected = (4, WeightOnlyAlgorithm.KQUANT, AccuracyLevel.FP32)
    assert (weight_only.bits, weight_only.algorithm, weight_only.accuracy_level) == expected
    assert weight_only.keep_int8 == ["/lm_head/MatMul"]
    lines = spec.validation.gates(spec.model.task)
    assert lines[1].startswith("kl_mean <= 0.02")
    assert any(line.startswith("flips_right_to_wrong <= 2") for line in lines)
    assert not any(line.startswith("fidelity_mean") for line in lines)


def test_encoder_specs_keep_their_gates() -> None:
    spec = parse_manifest(manifest(_spec(model=ENCODER))).spec
    assert spec.validation.gates(spec.model.task)[0].startswith("fidelity_mean >= 0.99")


def _manifest_file(tmp_path: Path) -> Path:
    path = tmp_path / "om.yaml"
    path.write_text(yaml.safe_dump(manifest(_spec(INT8))))
    return path


def test_validate_lists_the_llm_gates_and_says_the_model_is_not_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "-f", str(_manifest_file(tmp_path))]) == 0
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert "kl_mean <= 0.05" in out and "top1_agreement >= 0.9" in out
    assert "not yet served: the operator stops after the job (ServingNotSupported)" in out


def test_run_refuses_a_text_generation_model_before_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    assert main(["run", "-f", str(_manifest_file(tmp_path)), "--report", str(report)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "spec.model.task: text-generation models cannot be served and canaried yet" in err
    assert not report.exists()
