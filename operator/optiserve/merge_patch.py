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


def compose_merge_patches(first: Mapping[str, Any], then: Mapping[str, Any]) -> dict[str, Any]:
    """One merge patch that does what `first` and then `then` do, where a later patch writes only some
    keys of a mapping (the earlier patch's removals inside it are kept): mappings in both compose key
    by key; anything else, None included, is the later patch's."""
    composed = dict(first)
    for key, value in then.items():
        earlier = composed.get(key)
        if isinstance(value, Mapping) and isinstance(earlier, Mapping):
            composed[key] = compose_merge_patches(earlier, value)
        else:
            composed[key] = value
    return composed
