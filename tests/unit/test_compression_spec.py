"""Prune and distill in the spec: every refusal the spec can make without the model names its field,
in the models and in `optiserve validate -f`; what the spec accepts parses to the typed passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from optiserve.api.compression import DistillPass, PrunePass
from optiserve.api.manifest import ManifestError, parse_manifest
from optiserve.api.spec import ExportPass, first_onnx_pass, training_budgets, trains
from optiserve.cli import main
from tests.support.models import manifest

TEXT_MODEL = {"uri": "minilm", "format": "huggingface", "task": "embedding"}
ONNX_MODEL = {"uri": "m.onnx", "format": "onnx"}
PRUNE = {"type": "prune", "heads": 8, "importance": "magnitude"}
DISTILL = {"type": "distill", "datasetUri": "train.txt", "maxTrainingSeconds": 600}
SEVENTEEN_PASSES: list[dict[str, Any]] = [{"type": "graph"} for _ in range(17)]
P0 = "spec.optimization.passes[0]"


def _spec(*passes: dict[str, Any], model: dict[str, Any] = TEXT_MODEL, **optimization: Any) -> dict[str, Any]:
    return {"model": model, "optimization": {"passes": list(passes), **optimization}, "validation": {"datasetUri": "v.txt"}}


def _errors(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as refused:
        parse_manifest(manifest(spec))
    return refused.value.errors


# (case, spec, the one error line's start: the field it names, then what is wrong)
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("heads 0", _spec(PRUNE | {"heads": 0}), f"{P0}.heads: 0 keeps no attention head"),
    ("a layer with no head", _spec(PRUNE | {"heads": [4, 0, 4]}), f"{P0}.heads[1]: 0 keeps no attention"),
    ("heads an empty list", _spec(PRUNE | {"heads": []}), f"{P0}.heads: an empty list keeps nothing"),
    ("ffnRatio 0", _spec(PRUNE | {"ffnRatio": 0.0}), f"{P0}.ffnRatio: 0 is not a share of units kept in (0, 1]"),
    ("ffnRatio over 1", _spec(PRUNE | {"ffnRatio": 1.5}), f"{P0}.ffnRatio: 1.5 is not a share"),
    ("one layer's ffnRatio", _spec(PRUNE | {"ffnRatio": [0.5, 0.0]}), f"{P0}.ffnRatio[1]: 0 is not a share"),
    ("channelRatio negative", _spec(PRUNE | {"channelRatio": -0.25}), f"{P0}.channelRatio: -0.25 is not"),
    ("one channelRatio over 1", _spec(PRUNE | {"channelRatio": [1.2]}), f"{P0}.channelRatio[0]: 1.2 is not"),
    (
        "no pruning target",
        _spec({"type": "prune", "importance": "magnitude"}),
        f"{P0}: heads, ffnRatio or channelRatio: set at least one pruning target",
    ),
    (
        "activation importance without data",
        _spec({"type": "prune", "heads": 8}),
        f"{P0}.datasetUri: required for importance activation",
    ),
    ("a prune sample count out of range", _spec(PRUNE | {"samples": 4}), f"{P0}.samples: "),
    ("no training budget", _spec(DISTILL | {"maxTrainingSeconds": 0}), f"{P0}.maxTrainingSeconds: 0 s leaves"),
    (
        "no student layer, as a list",
        _spec(DISTILL | {"layers": []}),
        f"{P0}.layers: an empty list keeps no encoder layer",
    ),
    ("layers out of order", _spec(DISTILL | {"layers": [2, 1]}), f"{P0}.layers: [2, 1] are not teacher"),
    ("a layer twice", _spec(DISTILL | {"layers": [0, 3, 3]}), f"{P0}.layers: [0, 3, 3] are not teacher"),
    ("a negative layer", _spec(DISTILL | {"layers": [-1, 2]}), f"{P0}.layers: [-1, 2] are not teacher"),
    ("no student layer, as a count", _spec(DISTILL | {"layers": 0}), f"{P0}.layers: 0 keeps no encoder layer"),
    ("samples below minSamples", _spec(DISTILL | {"samples": 500}), f"{P0}.samples: 500 is below minSamples 1000"),
    (
        "samples below a raised minSamples",
        _spec(DISTILL | {"samples": 4000, "minSamples": 5000}),
        f"{P0}.samples: 4000 is below minSamples 5000",
    ),
    (
        "prune after export",
        _spec({"type": "export"}, PRUNE),
        "spec.optimization.passes[1]: prune changes the PyTorch model, so it comes before export and the ONNX passes "
        "(passes[0] is export)",
    ),
    (
        "prune after quantize",
        _spec({"type": "quantize"}, PRUNE),
        "spec.optimization.passes[1]: prune changes the PyTorch model, so it comes before export and the ONNX passes "
        "(passes[0] is quantize)",
    ),
    (
        "distill after an ONNX pass, after a prune",
        _spec(PRUNE, {"type": "graph"}, DISTILL),
        "spec.optimization.passes[2]: distill changes the PyTorch model",
    ),
    (
        "export twice after distill",
        _spec(DISTILL, {"type": "export"}, {"type": "export"}),
        "spec.optimization.passes[2]: export must be the first pass after prune and distill, and only once",
    ),
    (
        "export after an ONNX pass",
        _spec(PRUNE, {"type": "graph"}, {"type": "export"}),
        "spec.optimization.passes[2]: export must be the first pass after prune and distill",
    ),
    (
        "prune on an ONNX source",
        _spec(PRUNE, model=ONNX_MODEL),
        f"{P0}: prune needs the PyTorch model; model.format onnx has none",
    ),
    (
        "distill on an ONNX source",
        _spec(DISTILL, {"type": "quantize"}, model=ONNX_MODEL),
        f"{P0}: distill needs the PyTorch model; model.format onnx has none",
    ),
    (
        "more passes than the API holds",
        _spec(*SEVENTEEN_PASSES, model=ONNX_MODEL),
        "spec.optimization.passes: List should have at most 16 items",
    ),
]


@pytest.mark.parametrize(("case", "spec", "expected"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_names_its_field(case: str, spec: dict[str, Any], expected: str) -> None:
    (line,) = _errors(spec)
    assert line.startswith(expected), line


def test_a_value_that_is_neither_a_number_nor_a_list_names_the_field_not_the_union() -> None:
    assert _errors(_spec(PRUNE | {"heads": {}})) == [
        f"{P0}.heads: Input should be a valid integer",
        f"{P0}.heads: Input should be a valid array",
    ]
    assert f"{P0}.ffnRatio[1]: Input should be a valid number" in _errors(_spec(PRUNE | {"ffnRatio": [0.5, "half"]}))


def test_distill_needs_its_data_and_its_budget() -> None:
    assert _errors(_spec({"type": "distill"})) == [
        "spec.optimization.passes[0].datasetUri: Field required",
        "spec.optimization.passes[0].maxTrainingSeconds: Field required",
    ]


def test_a_training_budget_the_deadline_cannot_hold_names_both_fields() -> None:
    (line,) = _errors(_spec(DISTILL | {"maxTrainingSeconds": 3001}))
    assert line == (
        "spec.optimization.deadlineSeconds: optimization.passes[0].maxTrainingSeconds (3001 s) and 600 s for the rest "
        "of the job need 3601 s, more than optimization.deadlineSeconds (3600 s); raise the deadline or lower the budget"
    )


def test_every_training_budget_counts_into_the_deadline() -> None:
    spec = _spec(PRUNE, DISTILL | {"maxTrainingSeconds": 2000}, DISTILL | {"maxTrainingSeconds": 1500}, deadlineSeconds=4000)
    (line,) = _errors(spec)
    assert "optimization.passes[1].maxTrainingSeconds (2000 s) + optimization.passes[2].maxTrainingSeconds (1500 s)" in line
    assert "need 4100 s, more than optimization.deadlineSeconds (4000 s)" in line


def test_a_deadline_that_just_holds_the_budget_is_accepted() -> None:
    spec = parse_manifest(manifest(_spec(DISTILL | {"maxTrainingSeconds": 3000}))).spec
    assert spec.optimization.deadline_seconds == 3600
    raised = parse_manifest(manifest(_spec(DISTILL | {"maxTrainingSeconds": 7000}, deadlineSeconds=7600))).spec
    assert training_budgets(raised.optimization.passes) == [(0, 7000)]


def test_a_full_compression_pipeline_parses_to_typed_passes() -> None:
    passes: list[dict[str, Any]] = [
        {"type": "prune", "heads": [8, 6, 6, 8], "ffnRatio": 0.5, "datasetUri": "calibration.txt"},
        DISTILL | {"layers": [0, 2, 3]},
        {"type": "export"},
        {"type": "quantize"},
    ]
    spec = parse_manifest(manifest(_spec(*passes))).spec
    prune, distill, export, _ = spec.optimization.passes
    assert isinstance(prune, PrunePass) and prune.heads == [8, 6, 6, 8] and prune.ffn_ratio == 0.5
    assert isinstance(distill, DistillPass) and distill.layers == [0, 2, 3] and distill.max_training_seconds == 600
    assert isinstance(export, ExportPass)
    assert first_onnx_pass(spec.optimization.passes) == 2
    assert trains(spec.optimization.passes)


def test_prune_alone_does_not_train() -> None:
    spec = parse_manifest(manifest(_spec(PRUNE))).spec
    assert not trains(spec.optimization.passes) and training_budgets(spec.optimization.passes) == []
    assert first_onnx_pass(spec.optimization.passes) == 1, "the export the job adds goes after the prune"


def test_cli_validate_refuses_a_budget_over_the_deadline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "om.yaml"
    path.write_text(yaml.safe_dump(manifest(_spec(PRUNE, DISTILL | {"maxTrainingSeconds": 3500}, deadlineSeconds=3600))))
    assert main(["validate", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error spec.optimization.deadlineSeconds: optimization.passes[1].maxTrainingSeconds (3500 s)" in err
    assert "more than optimization.deadlineSeconds (3600 s)" in err
    assert "is valid" not in err


def test_cli_validate_accepts_a_budget_within_the_deadline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "om.yaml"
    path.write_text(yaml.safe_dump(manifest(_spec(PRUNE, DISTILL | {"maxTrainingSeconds": 3500}, deadlineSeconds=4100))))
    assert main(["validate", "-f", str(path)]) == 0, capsys.readouterr().err
