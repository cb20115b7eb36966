"""Evaluate the CRD's CEL rules offline, as the API server would, with cel-python.

`optiserve validate` runs these after the pydantic models, so a rule that exists in only one of
the two places shows up as a disagreement in the tests instead of in a cluster.
"""

from __future__ import annotations

import copy
from functools import cache
from itertools import pairwise
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError, CELFunction

Schema = dict[str, Any]


# Kubernetes' CEL list library (k8s.io/apiserver/pkg/cel/library/lists.go), which cel-python does not ship.


def _is_sorted(values: Any) -> celtypes.BoolType:
    """`isSorted()`."""
    items = list(values)
    return celtypes.BoolType(all(a <= b for a, b in pairwise(items)))


def _index_of(values: Any, item: Any) -> celtypes.IntType:
    """`indexOf(x)`: the first index of x, -1 when absent."""
    items = list(values)
    return celtypes.IntType(items.index(item) if item in items else -1)


def _last_index_of(values: Any, item: Any) -> celtypes.IntType:
    """`lastIndexOf(x)`: the last index of x, -1 when absent."""
    items = list(values)
    return celtypes.IntType(len(items) - 1 - items[::-1].index(item) if item in items else -1)


def _sum(values: Any) -> celtypes.IntType | celtypes.DoubleType:
    """`sum()` of a list of ints or of doubles (0 for an empty list)."""
    items = list(values)
    if any(isinstance(item, celtypes.DoubleType) for item in items):
        return celtypes.DoubleType(sum(float(item) for item in items))
    return celtypes.IntType(sum(int(item) for item in items))


@cache
def _program(rule: str) -> Any:
    environment = celpy.Environment()
    library: dict[str, CELFunction] = {"isSorted": _is_sorted, "indexOf": _index_of, "lastIndexOf": _last_index_of, "sum": _sum}
    return environment.program(environment.compile(rule), functions=library)


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Structural-schema defaulting, as the API server does before validation."""
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for name, prop in schema["properties"].items():
            if name not in result and "default" in prop:
                result[name] = copy.deepcopy(prop["default"])
            if name in result:
                result[name] = apply_defaults(prop, result[name])
        return result
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _children(schema: Schema, value: Any, path: str) -> list[tuple[Schema, Any, str]]:
    if isinstance(value, dict) and "properties" in schema:
        return [(schema["properties"][k], v, f"{path}.{k}") for k, v in value.items() if k in schema["properties"]]
    if isinstance(value, list) and "items" in schema:
        return [(schema["items"], item, f"{path}[{i}]") for i, item in enumerate(value)]
    return []


def cel_errors(schema: Schema, value: Any, path: str = "spec") -> list[str]:
    """Every failing rule, as 'field: message' (the message may name a sub-field itself)."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            passed = bool(_program(rule["rule"]).evaluate({"self": json_to_cel(value)}))
        except CELEvalError as e:
            passed, rule = False, {**rule, "message": f"{rule['message']} (rule error: {e})"}
        if not passed:
            errors.append(f"{path}: {rule['message']}")
    for child_schema, child, child_path in _children(schema, value, path):
        if child is not None:
            errors.extend(cel_errors(child_schema, child, child_path))
    return errors
