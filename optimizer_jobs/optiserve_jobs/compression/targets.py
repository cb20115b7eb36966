"""From a prune pass's targets and the measured scores to the units each layer keeps.

Targets name the units kept: `heads` (a count), `ffnRatio` and `channelRatio` (shares). One value
applies to every layer, a list gives one per layer. With scope global the same total is kept, but
chosen across layers by score normalised within each layer (a layer's scores sum to one), so layers
whose units matter less lose more; every layer keeps at least one unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from optiserve.api.compression import PruneScope
from optiserve_jobs.errors import PassError

ALIGNMENT = 8
"""Kept FFN neurons and channels are rounded up to a multiple of this (matrix kernels work in blocks)."""


def per_layer(value: float | Sequence[float], layers: int, field: str) -> list[float]:
    if isinstance(value, Sequence):
        if len(value) != layers:
            raise PassError(f"{field}: {len(value)} values for a model with {layers} layers (give one, or one per layer)")
        return [float(v) for v in value]
    return [float(value)] * layers


def head_counts(value: int | list[int], available: list[int], field: str) -> list[int]:
    counts = [int(v) for v in per_layer(value, len(available), field)]
    for layer, (kept, present) in enumerate(zip(counts, available, strict=True)):
        if kept > present:
            raise PassError(f"{field}: keeps {kept} heads in layer {layer}, which has {present}")
    return counts


def ratio_counts(value: float | list[float], available: list[int], field: str) -> list[int]:
    ratios = per_layer(value, len(available), field)
    return [
        min(present, max(ALIGNMENT, math.ceil(r * present / ALIGNMENT) * ALIGNMENT))
        for r, present in zip(ratios, available, strict=True)
    ]


def _top(scores: np.ndarray, count: int) -> list[int]:
    return sorted(int(i) for i in np.argsort(-scores, kind="stable")[:count])


def choose(scores: list[np.ndarray], counts: list[int], scope: PruneScope) -> list[list[int]]:
    """The indices each layer keeps, increasing."""
    if scope is PruneScope.LAYER:
        return [_top(s, c) for s, c in zip(scores, counts, strict=True)]
    total = sum(counts)
    normalised = [s / s.sum() if s.sum() > 0 else np.full(len(s), 1.0 / len(s)) for s in scores]
    kept: list[set[int]] = [{int(np.argmax(s))} for s in normalised]
    ranked = sorted(
        ((float(score), layer, unit) for layer, s in enumerate(normalised) for unit, score in enumerate(s)), reverse=True
    )
    remaining = total - len(kept)
    for _, layer, unit in ranked:
        if remaining <= 0:
            break
        if unit not in kept[layer]:
            kept[layer].add(unit)
            remaining -= 1
    return [sorted(k) for k in kept]
