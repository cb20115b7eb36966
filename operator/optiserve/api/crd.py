"""The CustomResourceDefinition, generated from the pydantic models (the single source of truth).

pydantic's JSON schema is post-processed into a Kubernetes *structural* schema: references
inlined, `anyOf [X, null]` turned into `nullable`, the discriminated union of passes merged into
one object whose `type` selects the variant, `const` turned into `enum`, free-form maps marked
`x-kubernetes-preserve-unknown-fields`. Cross-field rules are CEL (`x-kubernetes-validations`),
evaluated by the API server and, offline, by `optiserve validate` (see `cel.py`).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from optiserve.api.spec import API_GROUP, API_VERSION, KIND, OptimizedModelSpec
from optiserve.api.status import OptimizedModelStatus

PLURAL = "optimizedmodels"
Schema = dict[str, Any]

PASS_RULES = [
    {
        "rule": "self.type != 'quantize' || ((!has(self.mode) || self.mode != 'static') && !has(self.smoothing)) "
        "|| has(self.calibration)",
        "message": "calibration: required when mode is static or smoothing is set",
    },
]
PASSES_RULES = [
    {"rule": "self.filter(p, p.type == 'quantize').size() <= 1", "message": "at most one quantize pass"},
    {
        "rule": "self.filter(p, p.type == 'export').size() == 0 || "
        "(self[0].type == 'export' && self.filter(p, p.type == 'export').size() == 1)",
        "message": "export must be the first pass, and only once",
    },
]
MODEL_RULES = [
    {
        "rule": "!(self.format in ['torchscript', 'pytorch']) || (has(self.inputs) && size(self.inputs) > 0)",
        "message": "inputs: required for formats torchscript and pytorch (the export needs example inputs)",
    },
    {"rule": "self.format != 'pytorch' || has(self.entrypoint)", "message": "entrypoint: required for format pytorch"},
]
STEPS_RULES = [
    {
        "rule": "self.map(s, s.weight).isSorted() && self.all(s, self.exists_one(t, t.weight == s.weight)) "
        "&& self[size(self) - 1].weight == 100",
        "message": "weights must be strictly increasing and end at 100",
    },
]
METRIC_RULES = [
    {
        "rule": "has(self.maxRelativeIncrease) || has(self.maxAbsoluteIncrease) || has(self.max) || has(self.min)",
        "message": "a metric needs maxRelativeIncrease, maxAbsoluteIncrease, max or min",
    },
    {
        "rule": "self.name != 'errorRate' || !has(self.maxRelativeIncrease)",
        "message": "maxRelativeIncrease: not for errorRate; use maxAbsoluteIncrease",
    },
    {
        "rule": "self.name in ['latency', 'errorRate', 'agreement', 'accuracy'] || has(self.query)",
        "message": "query: required for a custom metric",
    },
]
# Where each rule set goes, as a path of property names from the spec root ("*" = list items).
RULES_AT: dict[tuple[str, ...], list[dict[str, str]]] = {
    ("model",): MODEL_RULES,
    ("optimization", "passes"): PASSES_RULES,
    ("optimization", "passes", "*"): PASS_RULES,
    ("rollout", "steps"): STEPS_RULES,
    ("rollout", "analysis", "metrics", "*"): METRIC_RULES,
}
_DROP = ("title", "discriminator", "additionalProperties")


def _resolve(node: Any, defs: Schema) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _merge_variants(variants: list[Schema]) -> Schema:
    """One object schema for a discriminated union: the union of properties, `type` as an enum.

    No defaults at this level: the API server would apply every variant's defaults to every item
    (an `opset` on a graph pass), which the models then refuse. The models apply them instead.
    """
    properties: dict[str, Schema] = {}
    tags = []
    for variant in variants:
        for name, prop in variant["properties"].items():
            if name == "type":
                tags.extend(prop["enum"])
                continue
            prop = {key: value for key, value in prop.items() if key != "default"}
            if name in properties and "enum" in prop and "enum" in properties[name]:
                merged_enum = properties[name]["enum"] + [v for v in prop["enum"] if v not in properties[name]["enum"]]
                properties[name] = {**properties[name], "enum": merged_enum}
            else:
                properties.setdefault(name, prop)
    type_schema = {"type": "string", "enum": tags, "description": "The pass: " + ", ".join(tags) + "."}
    return {"type": "object", "required": ["type"], "properties": {"type": type_schema, **properties}}


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "oneOf" in node or ("anyOf" in node and not any(v.get("type") == "null" for v in node["anyOf"])):
        variants = [_structural(v) for v in node.pop("oneOf", None) or node.pop("anyOf")]
        node = {**_merge_variants(variants), **{k: v for k, v in node.items() if k not in _DROP}}
    if "anyOf" in node:
        others = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        node = {**_structural(others[0]), **node, "nullable": True} if len(others) == 1 else node
        node.pop("default", None) if node.get("default") is None else None
    free_form = node.get("type") == "object" and "properties" not in node and node.get("additionalProperties") is not False
    for key in _DROP:
        node.pop(key, None)
    if free_form:
        node["x-kubernetes-preserve-unknown-fields"] = True
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if not isinstance(node.get(flag, True), bool):  # JSON Schema 2020 number -> OpenAPI 3.0 boolean
            node[bound], node[flag] = node[flag], True
    return {key: _structural(value) for key, value in node.items()}


def _at(schema: Schema, path: tuple[str, ...]) -> Schema:
    for part in path:
        schema = schema["items"] if part == "*" else schema["properties"][part]
    return schema


def structural_schema(model: type[Any]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: Schema = _structural(_resolve(raw, defs))
    return schema


def spec_schema() -> Schema:
    schema = structural_schema(OptimizedModelSpec)
    for path, rules in RULES_AT.items():
        _at(schema, path)["x-kubernetes-validations"] = rules
    return schema


def status_schema() -> Schema:
    schema = structural_schema(OptimizedModelStatus)
    schema["x-kubernetes-preserve-unknown-fields"] = True  # kopf keeps its own progress under status
    return schema


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Speedup", "type": "number", "jsonPath": ".status.optimization.speedup"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.canary.weight"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["om"],
                "categories": ["optiserve"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A model that OptiServe optimizes, proves, serves on Triton and rolls out by canary.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "optiserve.io/v1alpha1"},
                                "kind": {"type": "string", "description": "OptimizedModel"},
                                "metadata": {"type": "object"},
                                "spec": {**spec_schema(), "description": "Desired state."},
                                "status": {**status_schema(), "description": "Observed state, written by the operator."},
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated by `optiserve crd` from operator/optiserve/api; do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
