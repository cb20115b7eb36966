"""Load `OptimizedModel` manifests and turn validation errors into field-named messages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from optiserve.api.spec import PASS_TYPES, OptimizedModel


class ManifestError(ValueError):
    """A manifest that cannot be used; `errors` holds one 'field: message' line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


_UNION_MEMBER = re.compile(r"^(?:int|float|str|bool|list\[.+\]|dict\[.+\])$")
"""The member pydantic names in the location of an error in a plain union (`int | list[int]`)."""


def _format_location(loc: tuple[int | str, ...], union_tags: frozenset[str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in union_tags or _UNION_MEMBER.match(part):
            continue  # pydantic inserts the discriminator value, or the union member, into the location
        else:
            path += f".{part}" if path else part
    return path


_PASS_TAGS = frozenset(PASS_TYPES)


_FIELD_PREFIX = re.compile(r"^(?P<field>(?:[A-Za-z]\w*|\[\d+\])(?:\.[A-Za-z]\w*|\[\d+\])*): (?P<message>.*)$", re.DOTALL)
"""A validator's message that starts with the field it is about: `field: reason`, `a.b[2]: reason`, or
`[2]: reason` (an item of the field being validated)."""


def _located(where: str, message: str) -> tuple[str, str]:
    """Cross-field validators name their field in the message as 'field: reason': move it into the location."""
    match = _FIELD_PREFIX.match(message)
    if match is None:
        return where, message
    sub = match["field"]
    joined = f"{where}{sub}" if sub.startswith("[") or not where else f"{where}.{sub}"
    return joined, match["message"]


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per error, naming the field as it is written in YAML (camelCase, with indexes)."""
    lines = []
    for item in error.errors():
        where = _format_location(tuple(item["loc"]), _PASS_TAGS)
        where, message = _located(where, str(item["msg"]).removeprefix("Value error, "))
        lines.append(f"{where or '<root>'}: {message}")
    return lines


def parse_manifest(document: Any, source: str = "<manifest>") -> OptimizedModel:
    if not isinstance(document, dict):
        raise ManifestError(source, ["<root>: expected a mapping (an OptimizedModel manifest)"])
    try:
        # As JSON, strictly: the API server checks a manifest's types exactly, so a quoted "yes"
        # is no boolean and "5" no integer here either (lax parsing would accept both).
        return OptimizedModel.model_validate_json(json.dumps(document, default=str), strict=True)
    except ValidationError as e:
        raise ManifestError(source, format_validation_error(e)) from e


def read_manifest_document(path: Path) -> dict[str, Any]:
    """The first OptimizedModel document of a YAML file, unvalidated (local mode adjusts it first)."""
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except FileNotFoundError as e:
        raise ManifestError(str(path), ["<file>: no such file"]) from e
    except yaml.YAMLError as e:
        raise ManifestError(str(path), [f"<yaml>: {e}"]) from e
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "OptimizedModel":
            return document
    raise ManifestError(str(path), ["kind: no document of kind OptimizedModel"])


def load_manifest(path: Path) -> OptimizedModel:
    """Read one OptimizedModel from a YAML file (the first document of that kind)."""
    return parse_manifest(read_manifest_document(path), str(path))
