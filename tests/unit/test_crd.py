"""The CRD is generated from the models, structural, valid for Kubernetes, and its CEL rules agree
with the models' own validation."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from optiserve.api.cel import apply_defaults, cel_errors
from optiserve.api.crd import build_crd, render_crd, spec_schema
from optiserve.api.manifest import ManifestError, parse_manifest
from optiserve.cli import main
from tests.support.models import REPO_ROOT, manifest

CRD_FILE = REPO_ROOT / "crds/optimizedmodels.optiserve.io.yaml"
BASE: dict[str, Any] = {"model": {"uri": "m.onnx", "format": "onnx"}, "validation": {"datasetUri": "v.npz"}}
TEXT_MODEL = {"model": {"uri": "minilm", "format": "huggingface"}}
PRUNE = {"type": "prune", "heads": 8, "importance": "magnitude"}
DISTILL = {"type": "distill", "datasetUri": "train.txt", "maxTrainingSeconds": 600}


def test_crds_directory_equals_the_generated_crd() -> None:
    assert CRD_FILE.read_text() == render_crd(), "crds/ is stale: run `optiserve crd > crds/optimizedmodels.optiserve.io.yaml`"


def test_cli_prints_the_same_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == CRD_FILE.read_text()


def test_crd_is_valid_for_kubernetes() -> None:
    kubernetes_validate.validate(build_crd(), "1.33", strict=True)


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    problems = []
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    for key in ("$ref", "anyOf", "oneOf", "allOf", "const", "title"):
        if key in schema:
            problems.append(f"{path}: non-structural '{key}'")
    for name, prop in schema.get("properties", {}).items():
        if "description" not in prop:
            problems.append(f"{path}.{name}: no description")
        problems += _walk(prop, f"{path}.{name}")
    if "items" in schema:
        problems += _walk(schema["items"], f"{path}[]")
    return problems


def test_schema_is_structural_and_every_field_is_described() -> None:
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(root["properties"]["spec"], "spec") == []
    assert _walk(root["properties"]["status"], "status") == []


def test_crd_metadata() -> None:
    version = build_crd()["spec"]["versions"][0]
    assert build_crd()["spec"]["names"]["shortNames"] == ["om"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Speedup", "Weight", "Ready", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf's own status fields survive


def _verdicts(spec: dict[str, Any]) -> tuple[bool, bool]:
    """(models accept, CEL accepts) for the same spec."""
    schema = spec_schema()
    try:
        parse_manifest(manifest(spec))
        models_ok = True
    except ManifestError:
        models_ok = False
    return models_ok, not cel_errors(schema, apply_defaults(schema, copy.deepcopy(spec)))


CASES: dict[str, dict[str, Any]] = {
    "minimal": {},
    "static without calibration": {"optimization": {"passes": [{"type": "quantize", "mode": "static"}]}},
    "static with calibration": {
        "optimization": {"passes": [{"type": "quantize", "mode": "static", "calibration": {"datasetUri": "c"}}]}
    },
    "smoothing without calibration": {"optimization": {"passes": [{"type": "quantize", "smoothing": {"alpha": 0.5}}]}},
    "two quantize passes": {"optimization": {"passes": [{"type": "quantize"}, {"type": "quantize"}]}},
    "export second": {"optimization": {"passes": [{"type": "graph"}, {"type": "export"}]}},
    "export first": {"optimization": {"passes": [{"type": "export"}, {"type": "graph"}]}},
    "pytorch without inputs": {"model": {"uri": "w", "format": "pytorch", "entrypoint": "m:f"}},
    "pytorch without entrypoint": {"model": {"uri": "w", "format": "pytorch", "inputs": [{"name": "x", "shape": [4]}]}},
    "steps not ending at 100": {"rollout": {"steps": [{"weight": 10}, {"weight": 50}]}},
    "steps decreasing": {"rollout": {"steps": [{"weight": 50}, {"weight": 10}, {"weight": 100}]}},
    "steps repeated": {"rollout": {"steps": [{"weight": 10}, {"weight": 10}, {"weight": 100}]}},
    "metric without bounds": {"rollout": {"analysis": {"metrics": [{"name": "latency"}]}}},
    "custom metric without query": {"rollout": {"analysis": {"metrics": [{"name": "p42", "max": 1}]}}},
    "errorRate with a relative increase": {
        "rollout": {"analysis": {"metrics": [{"name": "errorRate", "maxRelativeIncrease": 0.1}]}}
    },
    "errorRate with an absolute increase": {
        "rollout": {"analysis": {"metrics": [{"name": "errorRate", "maxAbsoluteIncrease": 0.01}]}}
    },
    "custom metric with query": {"rollout": {"analysis": {"metrics": [{"name": "p42", "max": 1, "query": "up"}]}}},
    "quantize at fp16": {"optimization": {"passes": [{"type": "quantize", "precision": "fp16"}]}},
    "prune on an onnx source": {"optimization": {"passes": [PRUNE]}},
    "prune, export, quantize": TEXT_MODEL | {"optimization": {"passes": [PRUNE, {"type": "export"}, {"type": "quantize"}]}},
    "prune after export": TEXT_MODEL | {"optimization": {"passes": [{"type": "export"}, PRUNE]}},
    "distill after quantize": TEXT_MODEL | {"optimization": {"passes": [{"type": "quantize"}, DISTILL]}},
    "export after graph, after prune": TEXT_MODEL | {"optimization": {"passes": [PRUNE, {"type": "graph"}, {"type": "export"}]}},
    "export twice after distill": TEXT_MODEL | {"optimization": {"passes": [DISTILL, {"type": "export"}, {"type": "export"}]}},
    "prune by activation without data": TEXT_MODEL | {"optimization": {"passes": [{"type": "prune", "heads": 8}]}},
    "prune by activation with data": TEXT_MODEL
    | {"optimization": {"passes": [{"type": "prune", "heads": 8, "datasetUri": "calibration.txt"}]}},
    "prune scoring more samples than it may": TEXT_MODEL | {"optimization": {"passes": [PRUNE | {"samples": 200_000}]}},
    "distill on as many samples as it may": TEXT_MODEL
    | {"optimization": {"passes": [DISTILL | {"samples": 200_000, "minSamples": 1}]}},
    "distill without data": TEXT_MODEL | {"optimization": {"passes": [{"type": "distill", "maxTrainingSeconds": 60}]}},
    "distill without a budget": TEXT_MODEL | {"optimization": {"passes": [{"type": "distill", "datasetUri": "t.txt"}]}},
    "distill below minSamples": TEXT_MODEL | {"optimization": {"passes": [DISTILL | {"samples": 999}]}},
    "distill below a raised minSamples": TEXT_MODEL
    | {"optimization": {"passes": [DISTILL | {"samples": 20_000, "minSamples": 30_000}]}},
    "a budget the default deadline just holds": TEXT_MODEL
    | {"optimization": {"passes": [DISTILL | {"maxTrainingSeconds": 3000}]}},
    "a budget over the default deadline": TEXT_MODEL | {"optimization": {"passes": [DISTILL | {"maxTrainingSeconds": 3001}]}},
    "two budgets over a raised deadline": TEXT_MODEL
    | {
        "optimization": {
            "passes": [DISTILL | {"maxTrainingSeconds": 2000}, DISTILL | {"maxTrainingSeconds": 1500}],
            "deadlineSeconds": 4000,
        }
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_cel_rules_agree_with_the_models(case: str) -> None:
    models_ok, cel_ok = _verdicts({**BASE, **CASES[case]})
    assert models_ok == cel_ok


PASS = st.one_of(
    st.builds(
        lambda importance, data: {"type": "prune", "heads": 4, "importance": importance} | ({"datasetUri": "c"} if data else {}),
        st.sampled_from(["activation", "magnitude"]),
        st.booleans(),
    ),
    st.builds(
        lambda budget, samples, minimum: (
            {"type": "distill", "datasetUri": "t", "maxTrainingSeconds": budget}
            | ({"samples": samples} if samples else {})
            | ({"minSamples": minimum} if minimum else {})
        ),
        st.integers(1, 4000),
        st.sampled_from([None, 500, 1000, 5000]),
        st.sampled_from([None, 1000, 2000]),
    ),
    st.just({"type": "export"}),
    st.just({"type": "graph"}),
    st.just({"type": "fp16"}),
    st.builds(
        lambda mode, calibrated, smoothed: (
            {"type": "quantize", "mode": mode}
            | ({"calibration": {"datasetUri": "c"}} if calibrated else {})
            | ({"smoothing": {"alpha": 0.5}} if smoothed else {})
        ),
        st.sampled_from(["dynamic", "static"]),
        st.booleans(),
        st.booleans(),
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    passes=st.lists(PASS, max_size=4),
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=5),
    source=st.sampled_from(["onnx", "huggingface"]),
    deadline=st.sampled_from([{}, {"deadlineSeconds": 1800}, {"deadlineSeconds": 9000}]),
)
def test_generated_specs_get_the_same_verdict(
    passes: list[dict[str, Any]], weights: list[int], source: str, deadline: dict[str, int]
) -> None:
    spec = {
        **BASE,
        "model": {"uri": "m", "format": source},
        "optimization": {"passes": passes, **deadline},
        "rollout": {"steps": [{"weight": w} for w in weights]},
    }
    models_ok, cel_ok = _verdicts(spec)
    assert models_ok == cel_ok


def test_validate_reports_cel_and_model_errors_for_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for path in sorted((REPO_ROOT / "examples").glob("*/optimizedmodel*.yaml")):
        assert main(["validate", "-f", str(path)]) == 0, capsys.readouterr().err
        document = yaml.safe_load(path.read_text())
        schema = spec_schema()
        assert cel_errors(schema, apply_defaults(schema, document["spec"])) == []


def test_server_side_defaults_keep_the_manifest_parseable() -> None:
    """The API server applies the schema's defaults before the operator reads an object back; the
    models must still accept it (a merged pass schema once carried every variant's defaults)."""
    schema = spec_schema()
    for path in sorted((REPO_ROOT / "examples").glob("*/optimizedmodel*.yaml")):
        document = yaml.safe_load(path.read_text())
        defaulted = apply_defaults(schema, document["spec"])
        assert parse_manifest(manifest(defaulted)).spec.model.uri == document["spec"]["model"]["uri"]
    every_pass = [{"type": t} for t in ("export", "graph", "fp16", "tensorrt")] + [{"type": "quantize"}]
    parse_manifest(manifest(apply_defaults(schema, {**BASE, "optimization": {"passes": every_pass}})))
    compressed = TEXT_MODEL | {"optimization": {"passes": [PRUNE, DISTILL, *every_pass]}}
    defaulted = apply_defaults(schema, {**BASE, **compressed})
    assert defaulted["optimization"]["deadlineSeconds"] == 3600, "the server fills the deadline in, as the models do"
    assert parse_manifest(manifest(defaulted)).spec.optimization.deadline_seconds == 3600


def test_a_field_that_takes_a_number_or_a_list_has_no_type_and_no_rule() -> None:
    """The API server cannot type `heads: 4 | [4, 2]`: the field keeps what it is given (the models
    check it), and no CEL rule may name it, since the API server's CEL would not see it."""
    passes = spec_schema()["properties"]["optimization"]["properties"]["passes"]
    item = passes["items"]
    for name in ("heads", "ffnRatio", "channelRatio", "layers"):
        assert item["properties"][name] == {
            "description": item["properties"][name]["description"],
            "x-kubernetes-preserve-unknown-fields": True,
        }
    rules = [r["rule"] for node in (passes, item) for r in node.get("x-kubernetes-validations", [])]
    rules += [r["rule"] for r in spec_schema().get("x-kubernetes-validations", [])]
    assert rules and not [rule for rule in rules if any(f"self.{name}" in rule for name in ("heads", "ffnRatio", "layers"))]
