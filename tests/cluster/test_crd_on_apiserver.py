"""The generated CRD on a REAL kube-apiserver: accepted, Established, defaulted, and its CEL rules enforced.

Every assertion here is about an answer of the real server (built by tests/controlplane/build.sh),
not about our own emulation of it (tests/unit/test_crd.py covers that offline).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from optiserve.api.manifest import parse_manifest
from tests.support.control_plane import Cluster, kubernetes_module
from tests.support.kubelet_role import until
from tests.support.models import REPO_ROOT

pytestmark = pytest.mark.cluster

CRD_FILE = REPO_ROOT / "crds/optimizedmodels.optiserve.io.yaml"
MINILM = REPO_ROOT / "examples/minilm/optimizedmodel.yaml"
GROUP, VERSION, PLURAL = "optiserve.io", "v1alpha1", "optimizedmodels"
CRD_NAME = f"{PLURAL}.{GROUP}"
NAMESPACE = "optiserve-cluster-tests"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
MINIMAL_SPEC: dict[str, Any] = {"model": {"uri": "m.onnx", "format": "onnx"}, "validation": {"datasetUri": "v.npz"}}


def _object(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OptimizedModel",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def _path(name: str = "", sub: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


@pytest.fixture(scope="module")
def crd(control_plane: Cluster) -> Iterator[dict[str, Any]]:
    """The CRD file, applied as it is, Established; the test namespace created. Returns the server's copy."""
    body = yaml.safe_load(CRD_FILE.read_text())
    answer = control_plane.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body)
    if answer.status != 201:
        pytest.fail(f"kube-apiserver refused {CRD_FILE.name}: HTTP {answer.status}\n{answer.body.decode()}", pytrace=False)

    def established() -> dict[str, Any] | None:
        got = control_plane.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}").json()
        # Right after creation the server reports `status: {conditions: null, ...}`.
        conditions = {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []}
        return got if conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True" else None

    stored = until(f"CRD {CRD_NAME} Established", established, timeout_s=30.0)
    # Established can precede the discovery and storage of the new resource by a moment.
    until(
        f"{PLURAL} served",
        lambda: control_plane.request("GET", _path().replace(f"/namespaces/{NAMESPACE}", "")).status == 200,
        timeout_s=30.0,
    )
    namespace = control_plane.request(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    )
    assert namespace.status == 201, namespace.body
    yield stored
    control_plane.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}")
    control_plane.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")


@pytest.fixture(scope="module")
def objects(crd: dict[str, Any], k8s_client: Any) -> Any:
    """`kubernetes.client.CustomObjectsApi` on the real server, once the CRD is Established."""
    return kubernetes_module().CustomObjectsApi(k8s_client)


def _create(objects: Any, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    created: dict[str, Any] = objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body, **kwargs)
    return created


def _get(objects: Any, name: str) -> dict[str, Any]:
    got: dict[str, Any] = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    return got


def _refused(objects: Any, body: dict[str, Any], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Create `body`, expecting a refusal; returns (HTTP status, the Status object)."""
    api_exception = kubernetes_module().ApiException
    try:
        _create(objects, body, **kwargs)
    except api_exception as e:
        return int(e.status), json.loads(e.body)
    pytest.fail(f"the server accepted an invalid object: {json.dumps(body['spec'])}")


# --- the CRD itself ------------------------------------------------------------------------------------------------


def test_crd_is_accepted_and_established_unchanged(crd: dict[str, Any]) -> None:
    ours = yaml.safe_load(CRD_FILE.read_text())["spec"]
    theirs = crd["spec"]
    assert theirs["names"]["shortNames"] == ["om"]
    assert theirs["names"]["categories"] == ["optiserve"]
    # The server kept the whole schema, CEL rules included: nothing was dropped as unknown.
    assert theirs["versions"][0]["schema"] == ours["versions"][0]["schema"]
    assert theirs["versions"][0]["additionalPrinterColumns"] == ours["versions"][0]["additionalPrinterColumns"]
    assert theirs["versions"][0]["subresources"] == {"status": {}}
    assert crd["status"]["acceptedNames"]["kind"] == "OptimizedModel"


def test_discovery_lists_the_resource_its_short_name_and_status(control_plane: Cluster, crd: dict[str, Any]) -> None:
    resources = {r["name"]: r for r in control_plane.request("GET", f"/apis/{GROUP}/{VERSION}").json()["resources"]}
    assert resources[PLURAL]["kind"] == "OptimizedModel"
    assert resources[PLURAL]["namespaced"] is True
    assert resources[PLURAL]["shortNames"] == ["om"]
    assert resources[PLURAL]["categories"] == ["optiserve"]
    assert f"{PLURAL}/status" in resources


# --- valid objects and server-side defaults ------------------------------------------------------------------------


def test_minimal_object_gets_the_schema_defaults(objects: Any) -> None:
    created = _create(objects, _object("minimal", copy.deepcopy(MINIMAL_SPEC)))
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["uid"]
    spec = _get(objects, "minimal")["spec"]
    assert spec["model"] == {"uri": "m.onnx", "format": "onnx", "task": "generic", "sequenceLength": 128}
    assert spec["validation"] == {"datasetUri": "v.npz", "samples": 1000, "maxDegradation": 0.01}
    # Absent objects are not created by defaulting: only fields of objects that are there get defaults.
    assert set(spec) == {"model", "validation"}


def test_minilm_example_is_accepted_and_defaulted(objects: Any) -> None:
    example = yaml.safe_load(MINILM.read_text())
    _create(objects, _object("minilm", example["spec"]))
    spec = _get(objects, "minilm")["spec"]
    assert spec["model"]["task"] == "embedding"  # given, not defaulted
    assert spec["validation"]["samples"] == 1000
    assert spec["benchmark"] == {**example["spec"]["benchmark"], "warmup": 10, "iterations": 30, "repeats": 5, "profile": True}
    triton = spec["serving"]["triton"]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert triton["backend"] == "onnxruntime"
    assert triton["responseCache"] is False
    quantize = spec["optimization"]["passes"][1]
    assert quantize["calibration"] == {
        "datasetUri": "data/calibration.txt",
        "samples": 200,
        "method": "minmax",
        "percentile": 99.999,
    }
    assert quantize["smoothing"] == {"alpha": 0.75, "minOutlierRatio": 6}


def test_passes_get_no_defaults_of_other_pass_types(objects: Any) -> None:
    """The passes' union is ONE merged object schema in the CRD; it carries no defaults, so the
    server adds nothing to a pass (the models apply each pass type's own defaults)."""
    spec = {**copy.deepcopy(MINIMAL_SPEC), "optimization": {"passes": [{"type": "graph"}]}}
    _create(objects, _object("merged-defaults", spec))
    graph = _get(objects, "merged-defaults")["spec"]["optimization"]["passes"][0]
    assert graph == {"type": "graph"}


def test_object_read_back_from_the_server_parses_with_the_operator_models(objects: Any) -> None:
    example = yaml.safe_load(MINILM.read_text())
    parse_manifest(example)  # as written: fine
    _create(objects, _object("minilm-roundtrip", example["spec"]))
    stored = _get(objects, "minilm-roundtrip")
    parsed = parse_manifest(stored, "server copy")
    assert [p.type for p in parsed.spec.optimization.passes] == [p["type"] for p in example["spec"]["optimization"]["passes"]]


# --- CEL rules (x-kubernetes-validations) enforced by the server -----------------------------------------------------

_PASSES = "spec.optimization.passes"
_HF = {"uri": "model", "format": "huggingface", "task": "embedding"}
_PRUNE = {"type": "prune", "heads": 8, "importance": "magnitude"}
_LLM = {"uri": "model", "format": "huggingface", "task": "text-generation"}
_DISTILL = {"type": "distill", "datasetUri": "train.txt", "maxTrainingSeconds": 600}
CEL_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "static-quantize-without-calibration",
        {"optimization": {"passes": [{"type": "quantize", "mode": "static"}]}},
        f"{_PASSES}[0]",
        "calibration: required when mode is static or smoothing is set",
    ),
    (
        "smoothing-without-calibration",
        {"optimization": {"passes": [{"type": "quantize", "smoothing": {"alpha": 0.5}}]}},
        f"{_PASSES}[0]",
        "calibration: required when mode is static or smoothing is set",
    ),
    (
        "two-quantize-passes",
        {"optimization": {"passes": [{"type": "quantize"}, {"type": "quantize"}]}},
        _PASSES,
        "at most one quantize pass",
    ),
    (
        "export-not-first",
        {"optimization": {"passes": [{"type": "graph"}, {"type": "export"}]}},
        _PASSES,
        "export must be the first pass after prune and distill, and only once",
    ),
    (
        "export-twice",
        {"optimization": {"passes": [{"type": "export"}, {"type": "export"}]}},
        _PASSES,
        "export must be the first pass after prune and distill, and only once",
    ),
    (
        "export-after-graph-behind-prune",
        {"model": _HF, "optimization": {"passes": [_PRUNE, {"type": "graph"}, {"type": "export"}]}},
        _PASSES,
        "export must be the first pass after prune and distill, and only once",
    ),
    (
        "prune-after-export",
        {"model": _HF, "optimization": {"passes": [{"type": "export"}, _PRUNE]}},
        _PASSES,
        "prune and distill change the PyTorch model",
    ),
    (
        "distill-without-data",
        {"model": _HF, "optimization": {"passes": [{"type": "distill", "maxTrainingSeconds": 60}]}},
        f"{_PASSES}[0]",
        "datasetUri: required for a distill pass",
    ),
    (
        "budget-over-the-deadline",
        {"model": _HF, "optimization": {"deadlineSeconds": 900, "passes": [{**_DISTILL, "maxTrainingSeconds": 600}]}},
        "spec.optimization",
        "deadlineSeconds: must hold every maxTrainingSeconds",
    ),
    (
        "prune-on-an-onnx-model",
        {"optimization": {"passes": [_PRUNE]}},
        "spec",
        "optimization.passes: prune and distill need the PyTorch model",
    ),
    (
        "weightonly-on-an-encoder",
        {"model": _HF, "optimization": {"passes": [{"type": "export"}, {"type": "weightonly"}]}},
        "spec",
        "optimization.passes: weightonly needs model.task text-generation",
    ),
    (
        "an-encoder-pass-on-a-decoder",
        {"model": _LLM, "optimization": {"passes": [{"type": "export"}, {"type": "quantize"}]}},
        "spec",
        "optimization.passes: a text-generation model takes only export and weightonly passes",
    ),
    (
        "a-decoder-as-onnx",
        {"model": {"uri": "m.onnx", "format": "onnx", "task": "text-generation"}},
        "spec.model",
        "format: task text-generation takes format huggingface",
    ),
    (
        "gptq-without-calibration",
        {"model": _LLM, "optimization": {"passes": [{"type": "weightonly", "bits": 4, "algorithm": "gptq"}]}},
        f"{_PASSES}[0]",
        "calibration: required for algorithm gptq",
    ),
    (
        "gptq-at-8-bits",
        {
            "model": _LLM,
            "optimization": {"passes": [{"type": "weightonly", "algorithm": "gptq", "calibration": {"datasetUri": "c.txt"}}]},
        },
        f"{_PASSES}[0]",
        "bits: algorithm gptq writes 4-bit weights only",
    ),
    (
        "keep-int8-at-8-bits",
        {"model": _LLM, "optimization": {"passes": [{"type": "weightonly", "keepInt8": ["/lm_head/MatMul"]}]}},
        f"{_PASSES}[0]",
        "keepInt8: only with bits 4",
    ),
    (
        "two-weightonly-passes",
        {"model": _LLM, "optimization": {"passes": [{"type": "weightonly"}, {"type": "weightonly", "bits": 4}]}},
        _PASSES,
        "at most one weightonly pass",
    ),
    (
        "steps-decreasing",
        {"rollout": {"steps": [{"weight": 50}, {"weight": 10}]}},
        "spec.rollout.steps",
        "weights must be strictly increasing and end at 100",
    ),
    (
        "steps-repeated",
        {"rollout": {"steps": [{"weight": 50}, {"weight": 50}, {"weight": 100}]}},
        "spec.rollout.steps",
        "weights must be strictly increasing and end at 100",
    ),
    (
        "steps-not-ending-at-100",
        {"rollout": {"steps": [{"weight": 10}, {"weight": 50}]}},
        "spec.rollout.steps",
        "weights must be strictly increasing and end at 100",
    ),
    (
        "torchscript-without-inputs",
        {"model": {"uri": "m.pt", "format": "torchscript"}},
        "spec.model",
        "inputs: required for formats torchscript and pytorch (the export needs example inputs)",
    ),
    (
        "pytorch-without-entrypoint",
        {"model": {"uri": "m.pt", "format": "pytorch", "inputs": [{"name": "x", "shape": [8]}]}},
        "spec.model",
        "entrypoint: required for format pytorch",
    ),
    (
        "metric-without-bound",
        {"rollout": {"analysis": {"metrics": [{"name": "latency"}]}}},
        "spec.rollout.analysis.metrics[0]",
        "a metric needs maxRelativeIncrease",
    ),
    (
        "error-rate-with-relative-bound",
        {"rollout": {"analysis": {"metrics": [{"name": "errorRate", "maxRelativeIncrease": 0.1}]}}},
        "spec.rollout.analysis.metrics[0]",
        "maxRelativeIncrease: not for errorRate",
    ),
    (
        "custom-metric-without-query",
        {"rollout": {"analysis": {"metrics": [{"name": "queue", "max": 3}]}}},
        "spec.rollout.analysis.metrics[0]",
        "query: required for a custom metric",
    ),
]


@pytest.mark.parametrize(("case", "patch", "field", "message"), CEL_CASES, ids=[c[0] for c in CEL_CASES])
def test_cel_rule_rejects_with_its_message(objects: Any, case: str, patch: dict[str, Any], field: str, message: str) -> None:
    """`message` is the rule's message or the start of it (the rules' wording may grow; the field may not move)."""
    spec = {**copy.deepcopy(MINIMAL_SPEC), **patch}
    status, answer = _refused(objects, _object(f"cel-{case}", spec))
    assert status == 422, answer
    assert answer["reason"] == "Invalid"
    # A failed CEL rule is reported as an invalid value of the object (or array) that carries the rule.
    expected = re.compile(r'Invalid value: "(object|array)": ' + re.escape(message))
    causes = [(c.get("field"), c.get("message", "")) for c in answer["details"]["causes"]]
    assert any(f == field and expected.match(m) for f, m in causes), causes
    assert re.search(re.escape(f"{field}: ") + expected.pattern, answer["message"]), answer["message"]


@pytest.mark.parametrize(
    "patch",
    [
        {"rollout": {"steps": [{"weight": 10}, {"weight": 50}, {"weight": 100}]}},
        {"rollout": {"steps": [{"weight": 100}]}},
        {
            "optimization": {
                "passes": [{"type": "export"}, {"type": "quantize", "mode": "static", "calibration": {"datasetUri": "c.txt"}}]
            }
        },
        {"rollout": {"analysis": {"metrics": [{"name": "queue", "query": "sum(x)", "max": 3}]}}},
        {
            "model": _HF,
            "optimization": {
                "deadlineSeconds": 1200,
                "passes": [_PRUNE, _DISTILL, {"type": "export"}, {"type": "quantize"}],
            },
        },
        {"model": _HF, "optimization": {"passes": [_PRUNE, {"type": "quantize"}]}},
        {
            "model": _LLM,
            "optimization": {
                "passes": [
                    {"type": "export"},
                    {"type": "weightonly", "bits": 4, "algorithm": "kquant", "keepInt8": ["/lm_head/MatMul"]},
                ]
            },
            "validation": {"datasetUri": "v.txt", "generation": {"tasksUri": "t.jsonl", "gates": {"maxKl": 0.02}}},
        },
    ],
    ids=[
        "steps-10-50-100",
        "steps-100",
        "export-then-static-quantize",
        "custom-metric-with-query",
        "prune-distill-export-quantize",
        "prune-then-quantize-export-implied",
        "llm-export-then-int4-kquant",
    ],
)
def test_cel_rules_let_valid_objects_through(objects: Any, patch: dict[str, Any], request: pytest.FixtureRequest) -> None:
    name = "valid-" + str(request.node.callspec.id)
    created = _create(objects, _object(name, {**copy.deepcopy(MINIMAL_SPEC), **patch}))
    assert created["metadata"]["name"] == name


# --- schema validation that is not CEL -----------------------------------------------------------------------------


def test_wrong_enum_value_is_rejected_naming_the_field(objects: Any) -> None:
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec["model"]["format"] = "tflite"
    status, answer = _refused(objects, _object("bad-format", spec))
    assert status == 422, answer
    cause = next(c for c in answer["details"]["causes"] if c.get("field") == "spec.model.format")
    assert cause["reason"] == "FieldValueNotSupported"
    assert cause["message"] == 'Unsupported value: "tflite": supported values: "onnx", "torchscript", "huggingface", "pytorch"'
    # With a schema error, the server does not evaluate the CEL rules at all, and says so.
    assert any("some validation rules were not checked" in c.get("message", "") for c in answer["details"]["causes"])


def test_bounds_and_patterns_are_enforced(objects: Any) -> None:
    spec = {
        **copy.deepcopy(MINIMAL_SPEC),
        "rollout": {"steps": [{"weight": 150}], "analysis": {"interval": "soon"}, "progressDeadlineSeconds": 5},
    }
    status, answer = _refused(objects, _object("bad-bounds", spec))
    assert status == 422, answer
    fields = {c.get("field") for c in answer["details"]["causes"]}
    assert {"spec.rollout.steps[0].weight", "spec.rollout.analysis.interval", "spec.rollout.progressDeadlineSeconds"} <= fields


def test_missing_required_fields_are_rejected(objects: Any) -> None:
    status, answer = _refused(objects, _object("no-validation", {"model": {"uri": "m.onnx", "format": "onnx"}}))
    assert status == 422, answer
    assert ("spec.validation", "Required value") in [(c.get("field"), c.get("message")) for c in answer["details"]["causes"]]


# --- unknown fields ------------------------------------------------------------------------------------------------


def test_unknown_field_is_pruned_with_a_warning_by_default(control_plane: Cluster, crd: dict[str, Any]) -> None:
    spec = {**copy.deepcopy(MINIMAL_SPEC), "replicaz": 3}
    spec["model"]["formatt"] = "onnx"
    answer = control_plane.request("POST", _path(), _object("unknown-fields", spec))
    assert answer.status == 201, answer.body
    # One RFC 7234 warning (code 299) per dropped field, the quotes escaped inside the warning text.
    assert sorted(answer.header("Warning")) == [
        '299 - "unknown field \\"spec.model.formatt\\""',
        '299 - "unknown field \\"spec.replicaz\\""',
    ]
    stored = control_plane.request("GET", _path("unknown-fields")).json()
    assert "replicaz" not in stored["spec"]
    assert "formatt" not in stored["spec"]["model"]


def test_unknown_field_is_rejected_with_strict_field_validation(objects: Any) -> None:
    """What `kubectl apply` does (it sends fieldValidation=Strict): the typo is an error, not a silent drop."""
    spec = {**copy.deepcopy(MINIMAL_SPEC), "replicaz": 3}
    status, answer = _refused(objects, _object("unknown-strict", spec), field_validation="Strict")
    assert status == 400, answer
    assert answer["reason"] == "BadRequest"
    assert 'unknown field "spec.replicaz"' in answer["message"]


# --- status subresource and printer columns ------------------------------------------------------------------------


def _patch_status(objects: Any, name: str, status: dict[str, Any]) -> dict[str, Any]:
    patched: dict[str, Any] = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, PLURAL, name, {"status": status}, _content_type="application/merge-patch+json"
    )
    return patched


STATUS = {
    "phase": "Canary",
    "observedGeneration": 1,
    "optimization": {"speedup": 2.5, "sizeRatio": 0.26},
    "canary": {"weight": 50, "step": 2},
    "conditions": [{"type": "Ready", "status": "False", "reason": "CanaryInProgress"}],
}


def test_status_is_a_subresource(objects: Any) -> None:
    body = _object("with-status", copy.deepcopy(MINIMAL_SPEC))
    body["status"] = {"phase": "Promoted"}
    created = _create(objects, body)
    assert "status" not in created  # status is ignored on the main resource

    patched = _patch_status(objects, "with-status", STATUS)
    assert patched["metadata"]["generation"] == 1  # a status write is not a spec change
    status = _get(objects, "with-status")["status"]
    assert status["phase"] == "Canary"
    assert status["optimization"] == {"speedup": 2.5, "sizeRatio": 0.26}
    assert status["canary"] == {"weight": 50, "step": 2}
    assert status["conditions"] == [{"type": "Ready", "status": "False", "reason": "CanaryInProgress", "message": ""}]

    # Spec changes through /status are ignored; through the main resource they bump the generation.
    objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        "with-status",
        {"spec": {"serving": {"replicas": 9}}},
        _content_type="application/merge-patch+json",
    )
    assert "serving" not in _get(objects, "with-status")["spec"]
    updated = objects.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        "with-status",
        {"spec": {"serving": {"replicas": 3}}},
        _content_type="application/merge-patch+json",
    )
    assert updated["metadata"]["generation"] == 2
    assert updated["spec"]["serving"] == {"replicas": 3}
    assert updated["status"]["phase"] == "Canary"


def test_status_is_validated_too(objects: Any) -> None:
    _create(objects, _object("bad-status", copy.deepcopy(MINIMAL_SPEC)))
    api_exception = kubernetes_module().ApiException
    with pytest.raises(api_exception) as caught:
        _patch_status(objects, "bad-status", {"phase": "Sleeping", "canary": {"weight": 101}})
    assert caught.value.status == 422
    fields = {c.get("field") for c in json.loads(caught.value.body)["details"]["causes"]}
    assert {"status.phase", "status.canary.weight"} <= fields


def test_unknown_status_fields_are_kept(objects: Any) -> None:
    """status is x-kubernetes-preserve-unknown-fields: the operator may add fields before the schema knows them."""
    _create(objects, _object("status-extra", copy.deepcopy(MINIMAL_SPEC)))
    _patch_status(objects, "status-extra", {"phase": "Pending", "experimental": {"a": 1}})
    assert _get(objects, "status-extra")["status"]["experimental"] == {"a": 1}


def test_printer_columns_in_a_table_response(control_plane: Cluster, objects: Any) -> None:
    _create(objects, _object("table", copy.deepcopy(MINIMAL_SPEC)))
    _patch_status(objects, "table", {**STATUS, "conditions": [{"type": "Ready", "status": "True"}]})
    answer = control_plane.request("GET", _path("table"), headers={"Accept": TABLE})
    assert answer.status == 200, answer.body
    table = answer.json()
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name", "Phase", "Speedup", "Weight", "Ready", "Age"]
    types = {c["name"]: c["type"] for c in table["columnDefinitions"]}
    assert types == {
        "Name": "string",
        "Phase": "string",
        "Speedup": "number",
        "Weight": "integer",
        "Ready": "string",
        "Age": "date",
    }
    (row,) = table["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert cells["Name"] == "table"
    assert cells["Phase"] == "Canary"
    assert cells["Speedup"] == 2.5
    assert cells["Weight"] == 50
    assert cells["Ready"] == "True"
    assert cells["Age"].endswith("s")  # e.g. "0s": the server renders the age

    # The same columns on a list, with empty cells for objects without status.
    listed = control_plane.request("GET", _path(), headers={"Accept": TABLE}).json()
    assert [c["name"] for c in listed["columnDefinitions"]] == columns
    rows = {r["cells"][0]: r["cells"] for r in listed["rows"]}
    assert rows["table"][1:5] == ["Canary", 2.5, 50, "True"]
    assert rows["minimal"][1:5] == [None, None, None, None]


# --- with kube-controller-manager: owner references are garbage-collected --------------------------------------------


def test_owned_objects_are_garbage_collected(control_plane: Cluster, objects: Any, controller_manager: Any) -> None:
    owner = _create(objects, _object("owner", copy.deepcopy(MINIMAL_SPEC)))
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned-by-owner",
            "namespace": NAMESPACE,
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "OptimizedModel",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"config.pbtxt": "max_batch_size: 32"},
    }
    configmaps = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    assert control_plane.request("POST", configmaps, child).status == 201
    objects.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "owner")
    until(
        "the garbage collector to delete the owned ConfigMap",
        lambda: control_plane.request("GET", f"{configmaps}/owned-by-owner").status == 404,
        timeout_s=60,
    )
