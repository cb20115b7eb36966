"""Shared pydantic base: camelCase on the wire, snake_case in Python, unknown fields refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every API model.

    Unknown fields are errors (a typo in a manifest must not be silently ignored), names are
    camelCase in YAML/JSON, and models are immutable so a parsed spec can be shared safely.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )
