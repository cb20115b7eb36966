"""Deterministic child names: the same resource and generation always give the same names, so a
reconcile that crashed after creating a child finds ("adopts") it instead of creating another."""

from __future__ import annotations

import hashlib

MAX_NAME = 63


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
    result = {"app.kubernetes.io/managed-by": "optiserve", "optiserve.io/model": model}
    if variant is not None:
        result["optiserve.io/variant"] = variant
    if generation is not None:
        result["optiserve.io/generation"] = str(generation)
    return result
