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

from optiserve.api.compression import TRAINING_PASS_TYPES, DistillPass
from optiserve.api.spec import (
    API_GROUP,
    API_VERSION,
    GENERATIVE_PASS_TYPES,
    JOB_RESERVE_SECONDS,
    KIND,
    TORCH_PASS_TYPES,
    OptimizedModelSpec,
)
from optiserve.api.status import OptimizedModelStatus

PLURAL = "optimizedmodels"
Schema = dict[str, Any]

_TORCH = "[" + ", ".join(f"'{tag}'" for tag in TORCH_PASS_TYPES) + "]"
_GENERATIVE = "[" + ", ".join(f"'{tag}'" for tag in GENERATIVE_PASS_TYPES) + "]"
_TRAINING = "[" + ", ".join(f"'{tag}'" for tag in TRAINING_PASS_TYPES) + "]"
_DISTILL_SAMPLES = DistillPass.model_fields["samples"].default
_DISTILL_MIN_SAMPLES = DistillPass.model_fields["min_samples"].default

PASS_RULES = [
    {
        "rule": "self.type != 'weightonly' || !has(self.algorithm) || self.algorithm != 'gptq' || has(self.calibration)",
        "message": "calibration: required for algorithm gptq",
    },
    {
        "rule": "self.type != 'weightonly' || !has(self.algorithm) || self.algorithm != 'gptq' "
        "|| (has(self.bits) && self.bits == 4)",
        "message": "bits: algorithm gptq writes 4-bit weights only; set bits: 4",
    },
    {
        "rule": "self.type != 'weightonly' || !has(self.keepInt8) || size(self.keepInt8) == 0 "
        "|| (has(self.bits) && self.bits == 4)",
        "message": "keepInt8: only with bits 4",
    },
    {
        "rule": "self.type != 'quantize' || ((!has(self.mode) || self.mode != 'static') && !has(self.smoothing)) "
        "|| has(self.calibration)",
        "message": "calibration: required when mode is static or smoothing is set",
    },
    {
        "rule": "self.type != 'prune' || (has(self.importance) && self.importance == 'magnitude') || has(self.datasetUri)",
        "message": "datasetUri: required for importance activation (or set importance: magnitude)",
    },
    {
        # The models' defaults, written out: the merged pass schema carries none (see `_merge_variants`).
        "rule": f"self.type != 'distill' || (has(self.samples) ? self.samples : {_DISTILL_SAMPLES}) "
        f">= (has(self.minSamples) ? self.minSamples : {_DISTILL_MIN_SAMPLES})",
        "message": "samples: below minSamples",
    },
]
# The PyTorch passes are a prefix of the list (no one after the first ONNX pass), and export, when
# written, is the first pass after them. `indexOf` and `lastIndexOf` are Kubernetes' CEL list library.
_IS_TORCH = f"self.map(p, p.type in {_TORCH})"
PASSES_RULES = [
    {"rule": "self.filter(p, p.type == 'quantize').size() <= 1", "message": "at most one quantize pass"},
    {"rule": "self.filter(p, p.type == 'weightonly').size() <= 1", "message": "at most one weightonly pass"},
    {
        "rule": f"!self.exists(p, !(p.type in {_TORCH})) || {_IS_TORCH}.lastIndexOf(true) < {_IS_TORCH}.indexOf(false)",
        "message": "prune and distill change the PyTorch model: they come before export and the ONNX passes",
    },
    {
        # Given the rule above (the PyTorch passes are a prefix), the first pass after them sits at the
        # index that counts them. No list of strings is built: the API server's cost estimate of one
        # (`map(p, p.type)`) exceeds its budget by more than 100x.
        "rule": "self.filter(p, p.type == 'export').size() <= 1 && (!self.exists(p, p.type == 'export') "
        f"|| self[self.filter(p, p.type in {_TORCH}).size()].type == 'export')",
        "message": "export must be the first pass after prune and distill, and only once",
    },
]
OPTIMIZATION_RULES = [
    {
        "rule": f"!has(self.passes) || self.passes.filter(p, p.type in {_TRAINING})"
        f".map(p, has(p.maxTrainingSeconds) ? p.maxTrainingSeconds : 0).sum() + {JOB_RESERVE_SECONDS} "
        "<= self.deadlineSeconds",
        "message": f"deadlineSeconds: must hold every maxTrainingSeconds plus {JOB_RESERVE_SECONDS} s for the rest of the job",
    },
]
SPEC_RULES = [
    {
        "rule": "self.model.format != 'onnx' || !has(self.optimization) || !has(self.optimization.passes) "
        f"|| !self.optimization.passes.exists(p, p.type in {_TORCH})",
        "message": "optimization.passes: prune and distill need the PyTorch model; model.format onnx has none",
    },
    {
        "rule": "(has(self.model.task) && self.model.task == 'text-generation') || !has(self.optimization) "
        "|| !has(self.optimization.passes) || !self.optimization.passes.exists(p, p.type == 'weightonly')",
        "message": "optimization.passes: weightonly needs model.task text-generation",
    },
    {
        "rule": "!has(self.model.task) || self.model.task != 'text-generation' || !has(self.optimization) "
        f"|| !has(self.optimization.passes) || self.optimization.passes.all(p, p.type in {_GENERATIVE})",
        "message": "optimization.passes: a text-generation model takes only export and weightonly passes",
    },
]
MODEL_RULES = [
    {
        "rule": "!(self.format in ['torchscript', 'pytorch']) || (has(self.inputs) && size(self.inputs) > 0)",
        "message": "inputs: required for formats torchscript and pytorch (the export needs example inputs)",
    },
    {"rule": "self.format != 'pytorch' || has(self.entrypoint)", "message": "entrypoint: required for format pytorch"},
    {
        "rule": "!has(self.task) || self.task != 'text-generation' || self.format == 'huggingface'",
        "message": "format: task text-generation takes format huggingface",
    },
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
    (): SPEC_RULES,
    ("model",): MODEL_RULES,
    ("optimization",): OPTIMIZATION_RULES,
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
    Where variants share a property, the schema takes the widest of their bounds and enums, and
    what each variant asks beyond that (narrower bounds, its required fields) becomes a CEL rule
    on its own `type` (`_variant_rules`), so the API server refuses what the models refuse.
    """
    properties: dict[str, Schema] = {}
    owners: dict[str, list[str]] = {}
    tags = []
    for variant in variants:
        tag = _tag(variant)
        tags.append(tag)
        for name, prop in variant["properties"].items():
            if name == "type":
                continue
            prop = {key: value for key, value in prop.items() if key != "default"}
            properties[name] = _widest(name, properties[name], prop) if name in properties else prop
            owners.setdefault(name, []).append(tag)
    for name, prop in properties.items():
        if len(owners[name]) > 1:
            properties[name] = {**prop, "description": _shared_description(name, variants)}
    type_schema = {"type": "string", "enum": tags, "description": "The pass: " + ", ".join(tags) + "."}
    merged: Schema = {"type": "object", "required": ["type"], "properties": {"type": type_schema, **properties}}
    rules = [rule for variant in variants for rule in _variant_rules(variant, properties)]
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _tag(variant: Schema) -> str:
    return str(variant["properties"]["type"]["enum"][0])


def _shared_description(name: str, variants: list[Schema]) -> str:
    """A property several variants have, described for each: `prune: ... distill: ...` (once when they agree)."""
    described = [(_tag(v), v["properties"][name].get("description", "")) for v in variants if name in v["properties"]]
    texts = {text for _, text in described}
    return described[0][1] if len(texts) == 1 else " ".join(f"{tag}: {text}" for tag, text in described)


_LOWER = ("minimum", "exclusiveMinimum")
_UPPER = ("maximum", "exclusiveMaximum")


def _bound(prop: Schema, keys: tuple[str, str]) -> tuple[float, bool] | None:
    return (prop[keys[0]], bool(prop.get(keys[1], False))) if keys[0] in prop else None


def _set_bound(prop: Schema, keys: tuple[str, str], bound: tuple[float, bool] | None) -> None:
    prop.pop(keys[0], None)
    prop.pop(keys[1], None)
    if bound is not None:
        prop[keys[0]] = bound[0]
        if bound[1]:
            prop[keys[1]] = True


def _wider(a: tuple[float, bool] | None, b: tuple[float, bool] | None, lower: bool) -> tuple[float, bool] | None:
    """The looser of two bounds (None: unbounded); at an equal value, exclusive only when both are."""
    if a is None or b is None:
        return None
    if a[0] == b[0]:
        return a[0], a[1] and b[1]
    return a if (a[0] < b[0]) == lower else b


def _widest(name: str, first: Schema, other: Schema) -> Schema:
    """One schema for a property two variants share: enums joined, bounds widened, nullable if either is."""
    if first.get("type") != other.get("type"):
        raise ValueError(f"passes: property {name} is {first.get('type')} in one pass and {other.get('type')} in another")
    merged = dict(first)
    if "enum" in first and "enum" in other:
        merged["enum"] = first["enum"] + [value for value in other["enum"] if value not in first["enum"]]
    if "maxLength" in first or "maxLength" in other:
        lengths = [prop.get("maxLength") for prop in (first, other)]
        merged.pop("maxLength", None)
        if None not in lengths:
            merged["maxLength"] = max(int(length) for length in lengths if length is not None)
    for keys, lower in ((_LOWER, True), (_UPPER, False)):
        _set_bound(merged, keys, _wider(_bound(first, keys), _bound(other, keys), lower))
    if first.get("nullable") or other.get("nullable"):
        merged["nullable"] = True
    return merged


def _literal(value: float, prop: Schema) -> str:
    """A number as a CEL literal of the property's type (CEL does not compare an int to a double)."""
    return repr(float(value)) if prop.get("type") == "number" else str(int(value))


def _narrower(prop: Schema, merged: Schema) -> list[tuple[str, str]]:
    """(CEL condition on `self.<name>`, words) for each constraint of `prop` that `merged` lost."""
    found = []
    if "enum" in prop and prop["enum"] != merged.get("enum"):
        values = ", ".join(f"'{value}'" for value in prop["enum"])
        found.append((f"in [{values}]", f"one of {', '.join(map(str, prop['enum']))}"))
    for keys, lower in ((_LOWER, True), (_UPPER, False)):
        own = _bound(prop, keys)
        if own is not None and own != _bound(merged, keys):
            operator = (">" if own[1] else ">=") if lower else ("<" if own[1] else "<=")
            found.append((f"{operator} {_literal(own[0], prop)}", f"{operator} {own[0]:g}"))
    return found


def _variant_rules(variant: Schema, merged: dict[str, Schema]) -> list[dict[str, str]]:
    """The CEL rules that give one variant back what the merged schema lost: its required fields and
    the bounds and enums it has narrower than the merged property."""
    tag = _tag(variant)
    rules = [
        {"rule": f"self.type != '{tag}' || has(self.{name})", "message": f"{name}: required for a {tag} pass"}
        for name in variant.get("required", [])
        if name != "type"
    ]
    for name, prop in variant["properties"].items():
        narrower = _narrower(prop, merged[name]) if name != "type" else []
        if narrower:
            condition = " && ".join(f"self.{name} {check}" for check, _ in narrower)
            words = " and ".join(text for _, text in narrower)
            rules.append(
                {
                    "rule": f"self.type != '{tag}' || !has(self.{name}) || ({condition})",
                    "message": f"{name}: {words} for a {tag} pass",
                }
            )
    return rules


def _untyped(node: Schema) -> Schema:
    """A field that takes values of different types (a number or a list): a structural schema has no
    type for it, so the API server keeps it as it is and only the models check it. CEL cannot see
    such a field either (the API server gives it no type), so no rule may name it."""
    kept = {key: value for key, value in node.items() if key in ("description",)}
    return {**kept, "x-kubernetes-preserve-unknown-fields": True}


def _bound_enum_length(node: Schema) -> None:
    """The API server bounds a CEL rule's cost by each string's maxLength; an enum's longest value is one."""
    if node.get("type") == "string" and "enum" in node and "maxLength" not in node:
        node["maxLength"] = max(len(str(value)) for value in node["enum"])


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    _bound_enum_length(node)
    if "oneOf" in node or ("anyOf" in node and not any(v.get("type") == "null" for v in node["anyOf"])):
        variants = [_structural(v) for v in node.pop("oneOf", None) or node.pop("anyOf")]
        node = {**_merge_variants(variants), **{k: v for k, v in node.items() if k not in _DROP}}
    if "anyOf" in node:
        others = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        node = {**_structural(others[0]), **node, "nullable": True} if len(others) == 1 else _untyped(node)
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
        target = _at(schema, path)
        target["x-kubernetes-validations"] = [*rules, *target.get("x-kubernetes-validations", [])]
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
