"""Deterministic child names: the same resource and generation always give the same names, so a
reconcile that crashed after creating a child finds ("adopts") it instead of creating another."""

from __future__ import annotations

import hashlib

MAX_NAME = 63
MODEL_LABEL = "optiserve.io/model"
VARIANT_LABEL = "optiserve.io/variant"
GENERATION_LABEL = "optiserve.io/generation"


def _fit(name: str) -> str:
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def job_name(model: str, generation: int) -> str:
    return _fit(f"{model}-optimize-g{generation}")


def deployment_name(model: str, variant: str) -> str:
    return _fit(f"{model}-{variant}")


def labels(model: str, variant: str | None = None, generation: int | None = None) -> dict[str, str]:
    result = {"app.kubernetes.io/managed-by": "optiserve", MODEL_LABEL: model}
    if variant is not None:
        result[VARIANT_LABEL] = variant
    if generation is not None:
        result[GENERATION_LABEL] = str(generation)
    return result
