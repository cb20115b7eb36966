"""Specs for fuzzing, from the CRD's own schema: valid by schema, and mutated to break it.

`from_structural()` generates from the CRD's structural OpenAPI schema (`optiserve.api.crd.spec_schema`):
types, bounds, patterns, enums, required fields, nullable. (hypothesis-jsonschema 0.23.1, the
registry's latest, fails on this project's hypothesis 6.170 inside its object strategy.)
`json_schema()` turns the same schema into a JSON Schema that `jsonschema` validates with: `nullable`
becomes a `null` type, OpenAPI's boolean `exclusiveMinimum` becomes JSON Schema's number, and
objects refuse unknown properties (as `kubectl apply`'s strict field validation does). The oracle
for "invalid" is that schema plus the CRD's CEL rules evaluated by `optiserve.api.cel`, i.e. what
the API server would refuse.

`mutations()` takes a spec and breaks it one way: a wrong type, a number out of range, a
required field removed, an unknown field, an enum or pattern violated, or a CEL invariant broken
(step weights not increasing or not ending at 100, two quantize passes, export not first, a
static quantize without calibration, a custom metric without a query).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft7Validator

from optiserve.api.cel import apply_defaults, cel_errors
from optiserve.api.crd import build_crd, spec_schema
from optiserve.api.manifest import ManifestError, parse_manifest

Schema = dict[str, Any]
Path = tuple[str | int, ...]
DROPPED = ("description", "default", "nullable", "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields")


def _to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_json_schema(value) for key, value in node.items() if key not in DROPPED and key != "properties"}
    if "properties" in node:
        out["properties"] = {name: _to_json_schema(prop) for name, prop in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("nullable"):
        out["type"] = [out["type"], "null"] if "type" in out else ["null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@cache
def json_schema() -> Schema:
    converted: Schema = _to_json_schema(spec_schema())
    return converted


@cache
def _validator() -> Draft7Validator:
    return Draft7Validator(json_schema())


@cache
def document_schema() -> Schema:
    """The CRD's whole openAPIV3Schema (apiVersion, kind, metadata, spec, status)."""
    schema: Schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def manifest(spec: Any) -> dict[str, Any]:
    return {"apiVersion": "optiserve.io/v1alpha1", "kind": "OptimizedModel", "metadata": {"name": "fuzzed"}, "spec": spec}


def api_server_refuses(spec: Any) -> bool:
    """The oracle: the schema (strict field validation) or a CEL rule refuses the spec."""
    if not _validator().is_valid(spec):
        return True
    schema = spec_schema()
    return bool(cel_errors(schema, apply_defaults(schema, spec)))


def validate_errors(document: Any) -> list[str]:
    """What `optiserve validate` reports, through its code path: the models, then the CRD's CEL rules."""
    try:
        parse_manifest(document, source="fuzzed")
    except ManifestError as e:
        return list(e.errors)
    schema = spec_schema()  # as `cli.cel_errors_for`: the rules run on the spec as written, defaulted
    return cel_errors(schema, apply_defaults(schema, document["spec"]))


# --- naming a field -----------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def field_path(error: str) -> str:
    """The field an error line names: everything before the first ': '."""
    return error.split(": ", 1)[0]


def _tokens(path: str) -> Path:
    return tuple(int(index) if index else str(name) for name, index in _TOKEN.findall(path))


def _in_document(document: Any, path: Path) -> bool:
    node = document
    for token in path:
        listed = isinstance(token, int) and isinstance(node, list) and 0 <= token < len(node)
        mapped = isinstance(token, str) and isinstance(node, dict) and token in node
        if not (listed or mapped):
            return False
        node = node[token]
    return True


def _in_schema(schema: Schema, path: Path) -> bool:
    node = schema
    for token in path:
        if isinstance(token, int) and "items" in node:
            node = node["items"]
        elif isinstance(token, str) and token in (node.get("properties") or {}):
            node = node["properties"][token]
        else:
            return False
    return True


def names_a_field(error: str, document: Any) -> bool:
    """Whether the error names a field path that exists in the input or in the CRD's schema."""
    path = field_path(error)
    if path == "<root>":
        return not isinstance(document, dict)
    tokens = _tokens(path)
    return bool(tokens) and (_in_document(document, tokens) or _in_schema(document_schema(), tokens))


# --- generation and mutation ----------------------------------------------------------------------------------------


MAX_ITEMS = 4
FREE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=8))


def _strings(schema: Schema) -> st.SearchStrategy[Any]:
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda text: len(text) <= schema.get("maxLength", 256))
    return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 24), 24))


def _numbers(schema: Schema) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if schema.get("type") == "integer":
        return st.integers(low if low is not None else -1000, high if high is not None else 10**6)
    exclusive = bool(schema.get("exclusiveMinimum"))
    return st.floats(low, high if high is not None else 1e6, exclude_min=exclusive and low is not None, allow_nan=False)


def from_structural(schema: Schema) -> st.SearchStrategy[Any]:
    """Values valid by one node of a structural schema (types, bounds, patterns, enums, required)."""
    base: st.SearchStrategy[Any]
    kind = schema.get("type")
    if "enum" in schema:
        base = st.sampled_from(schema["enum"])
    elif kind == "string":
        base = _strings(schema)
    elif kind in ("integer", "number"):
        base = _numbers(schema)
    elif kind == "boolean":
        base = st.booleans()
    elif kind == "array":
        items = from_structural(schema.get("items", {}))
        base = st.lists(items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS))
    elif "properties" in schema:
        properties = schema["properties"]
        required = set(schema.get("required", []))
        base = st.fixed_dictionaries(
            {name: from_structural(prop) for name, prop in properties.items() if name in required},
            optional={name: from_structural(prop) for name, prop in properties.items() if name not in required},
        )
    else:  # a free-form map (x-kubernetes-preserve-unknown-fields)
        base = st.dictionaries(st.text(min_size=1, max_size=8), FREE_VALUES, max_size=3)
    return st.one_of(st.none(), base) if schema.get("nullable") else base


def specs() -> st.SearchStrategy[Any]:
    """Specs valid by the CRD's schema (CEL rules may still refuse some)."""
    return from_structural(spec_schema())


@dataclass(frozen=True)
class Place:
    path: Path
    value: Any
    schema: Schema


def places(value: Any, schema: Schema, path: Path = ()) -> Iterator[Place]:
    """Every value in the spec with the (structural) schema that describes it."""
    yield Place(path, value, schema)
    if isinstance(value, dict):
        for key, child in value.items():
            if key in (schema.get("properties") or {}):
                yield from places(child, schema["properties"][key], (*path, key))
    elif isinstance(value, list) and "items" in schema:
        for index, child in enumerate(value):
            yield from places(child, schema["items"], (*path, index))


def _set(spec: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    mutated = copy.deepcopy(spec)
    node = mutated
    for token in path[:-1]:
        node = node[token]
    node[path[-1]] = value
    return mutated


def _remove(spec: Any, path: Path, key: str) -> Any:
    mutated = copy.deepcopy(spec)
    node = mutated
    for token in path:
        node = node[token]
    node.pop(key, None)
    return mutated


WRONG_TYPES: dict[str, list[Any]] = {
    "string": [3, True, ["x"], {"a": 1}],
    "integer": ["ten", 1.5, True, [1]],
    "number": ["fast", True, {"n": 1}],
    "boolean": ["yes", 1, [True]],
    "array": ["a", 1, {"a": 1}],
    "object": ["o", 7, [1, 2]],
}

CEL_BREAKERS: list[tuple[Path, Any]] = [
    (("rollout", "steps"), [{"weight": 50}, {"weight": 10}, {"weight": 100}]),
    (("rollout", "steps"), [{"weight": 10}, {"weight": 10}, {"weight": 100}]),
    (("rollout", "steps"), [{"weight": 10}, {"weight": 50}]),
    (("optimization", "passes"), [{"type": "quantize", "mode": "dynamic"}, {"type": "quantize", "mode": "dynamic"}]),
    (("optimization", "passes"), [{"type": "graph"}, {"type": "export"}]),
    (("optimization", "passes"), [{"type": "quantize", "mode": "static"}]),
    (("rollout", "analysis", "metrics"), [{"name": "p99", "max": 1.0}]),
    (("rollout", "analysis", "metrics"), [{"name": "errorRate", "maxRelativeIncrease": 0.1}]),
    (("model",), {"uri": "m.pt", "format": "torchscript"}),
    (("model",), {"uri": "m.pt", "format": "pytorch", "inputs": [{"name": "x", "shape": [1, 3], "dtype": "float32"}]}),
]


Breaker = Callable[[st.DrawFn, Any, list[Any]], Any]
"""(draw, spec, its places) -> the spec broken one way, or None where the spec has no place for it."""


def _wrong_type(draw: st.DrawFn, spec: Any, all_places: list[Any]) -> Any:
    place = draw(st.sampled_from(all_places))
    kinds = place.schema.get("type")
    wrong = WRONG_TYPES.get(kinds if isinstance(kinds, str) else "", ["?"])
    return _set(spec, place.path, draw(st.sampled_from(wrong)))


def _out_of_range(draw: st.DrawFn, spec: Any, all_places: list[Any]) -> Any:
    bounded = [p for p in all_places if "minimum" in p.schema or "maximum" in p.schema]
    if not bounded:
        return None
    place = draw(st.sampled_from(bounded))
    low = "minimum" in place.schema and (draw(st.booleans()) or "maximum" not in place.schema)
    value = place.schema["minimum"] - 1 if low else place.schema["maximum"] + 1
    return _set(spec, place.path, value)


def _required_removed(draw: st.DrawFn, spec: Any, all_places: list[Any]) -> Any:
    needy = [p for p in all_places if isinstance(p.value, dict) and [k for k in p.schema.get("required", []) if k in p.value]]
    if not needy:
        return None
    place = draw(st.sampled_from(needy))
    key = draw(st.sampled_from([k for k in place.schema["required"] if k in place.value]))
    return _remove(spec, place.path, key)


def _not_in_enum(draw: st.DrawFn, spec: Any, all_places: list[Any]) -> Any:
    enums = [p for p in all_places if "enum" in p.schema]
    return _set(spec, draw(st.sampled_from(enums)).path, "bogus") if enums else None


def _pattern_broken(draw: st.DrawFn, spec: Any, all_places: list[Any]) -> Any:
    patterned = [p for p in all_places if "pattern" in p.schema]
    return _set(spec, draw(st.sampled_from(patterned)).path, "not valid at all") if patterned else None


def _cel_broken(draw: st.DrawFn, spec: Any, all_places: list[Any]) -> Any:
    path, value = draw(st.sampled_from(CEL_BREAKERS))
    target = copy.deepcopy(spec)
    node = target
    for token in path[:-1]:
        node = node.setdefault(token, {})
    node[path[-1]] = copy.deepcopy(value)
    return target


def _unknown_later(draw: st.DrawFn, spec: Any, all_places: list[Any]) -> Any:
    return None  # the fallback below adds the unknown field


BREAKERS: dict[str, Breaker] = {
    "type": _wrong_type,
    "range": _out_of_range,
    "required": _required_removed,
    "unknown": _unknown_later,
    "enum": _not_in_enum,
    "pattern": _pattern_broken,
    "cel": _cel_broken,
}


@st.composite
def mutated_specs(draw: st.DrawFn) -> tuple[str, Any]:
    """(what was broken, the spec) from a spec valid by schema; a kind with no place in this spec
    breaks it with an unknown field instead."""
    spec = draw(specs())
    all_places = list(places(spec, spec_schema()))
    kind = draw(st.sampled_from(list(BREAKERS)))
    broken = BREAKERS[kind](draw, spec, all_places)
    if broken is not None:
        return kind, broken
    objects = [p for p in all_places if isinstance(p.value, dict)]
    place = draw(st.sampled_from(objects))
    return "unknown", _set(spec, (*place.path, "unexpectedField"), draw(st.sampled_from([1, "x", {"a": 1}])))
