"""JSON merge patch (RFC 7386), as the API server applies a status patch: None removes a field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def apply_merge_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`base` after `patch`: mappings merge key by key, None removes, anything else replaces."""
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = apply_merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged
