"""Pure comparison of one golden sample's baseline and candidate outputs.

Agreement is top-1 equality for classifiers and per-sample cosine >= a threshold for everything
else (embeddings, generic outputs), the online counterpart of the job's offline fidelity.
Accuracy is the candidate's top-1 against the sample's label, and exists only when it has one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from optiserve.api.spec import Task, ValidationSpec

DEFAULT_THRESHOLD = 0.99
"""1 - the default `validation.maxDegradation` (0.01)."""
WORST_COSINE = -1.0
"""What a non-finite output scores: it can never agree."""


class OutputMismatchError(ValueError):
    """The two outputs cannot be compared (different sizes, or empty)."""


@dataclass(frozen=True)
class AgreementRule:
    task: Task
    threshold: float = DEFAULT_THRESHOLD
    """Lowest cosine that counts as agreeing (not used for classifiers)."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold: must be within [-1, 1] (a cosine), got {self.threshold}")

    @property
    def top1(self) -> bool:
        return self.task is Task.CLASSIFICATION


@dataclass(frozen=True)
class SampleComparison:
    cosine: float
    agrees: bool
    baseline_correct: bool | None = None
    """Top-1 equals the label; None when the sample has no label."""
    candidate_correct: bool | None = None


def agreement_threshold(validation: ValidationSpec | None) -> float:
    """The per-sample cosine threshold that follows from the spec's offline fidelity settings.

    `minWorstFidelity` is already a per-sample bound; without it, the mean bound
    1 - `maxDegradation` is used per sample (stricter, never looser than offline).
    """
    if validation is None:
        return DEFAULT_THRESHOLD
    if validation.min_worst_fidelity is not None:
        return validation.min_worst_fidelity
    return 1.0 - validation.max_degradation


def _flat(output: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    return np.asarray(output, dtype=np.float64).reshape(-1)


def cosine(baseline: npt.NDArray[Any], candidate: npt.NDArray[Any]) -> float:
    """Cosine similarity of two outputs of one sample, flattened.

    Two zero vectors are identical (1); one zero vector against another is 0; any non-finite
    value gives WORST_COSINE, so a candidate that emits NaN or inf never agrees.
    """
    a, b = _flat(baseline), _flat(candidate)
    if a.size == 0 or a.size != b.size:
        raise OutputMismatchError(f"outputs have {a.size} and {b.size} values")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return WORST_COSINE
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.clip(a @ b / norms, -1.0, 1.0))


def top1(output: npt.NDArray[Any]) -> int | None:
    """The index of the largest value; None when the output has a non-finite value."""
    flat = _flat(output)
    if flat.size == 0 or not np.isfinite(flat).all():
        return None
    return int(flat.argmax())


def compare_sample(
    baseline: npt.NDArray[Any], candidate: npt.NDArray[Any], label: int | None, rule: AgreementRule
) -> SampleComparison:
    similarity = cosine(baseline, candidate)
    baseline_top, candidate_top = top1(baseline), top1(candidate)
    if rule.top1:
        agrees = candidate_top is not None and candidate_top == baseline_top
    else:
        agrees = not math.isnan(similarity) and similarity >= rule.threshold
    if label is None:
        return SampleComparison(similarity, agrees)
    return SampleComparison(similarity, agrees, baseline_top == label, candidate_top == label)
