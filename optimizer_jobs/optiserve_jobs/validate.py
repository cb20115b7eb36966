"""Offline proof: fidelity to the unoptimized baseline, task accuracy, and the gates."""

from __future__ import annotations

import numpy as np

from optiserve.api.spec import DEFAULT_SPEED_GATE, DEFAULT_SPEED_GATE_DETAIL, Task, ValidationSpec
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.report import Fidelity, Gate
from optiserve_jobs.runners import Runner
from optiserve_jobs.stability import SpeedEvidence, SpeedVerdict


def run_all(runner: Runner, data: Dataset, batch_size: int = 16) -> np.ndarray:
    return np.concatenate([runner.run(batch) for batch in data.batches(batch_size)])


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return np.asarray(np.where(norms > 0, (a2 * b2).sum(axis=1) / np.maximum(norms, 1e-30), 1.0))


def fidelity(task: Task, baseline: np.ndarray, candidate: np.ndarray) -> Fidelity:
    """Top-1 agreement for classifiers, cosine similarity otherwise; max abs error always."""
    max_abs = float(np.max(np.abs(baseline.astype(np.float64) - candidate.astype(np.float64))))
    if task is Task.CLASSIFICATION:
        agree = (baseline.argmax(axis=-1) == candidate.argmax(axis=-1)).astype(np.float64)
        return Fidelity("top1_agreement", float(agree.mean()), float(agree.min()), max_abs)
    cosine = _row_cosine(baseline, candidate)
    return Fidelity("cosine", float(cosine.mean()), float(cosine.min()), max_abs)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((outputs.argmax(axis=-1) == labels).mean())


def at_least(name: str, value: float | None, threshold: float) -> Gate:
    passed = value is not None and np.isfinite(value) and value >= threshold
    return Gate(name, bool(passed), value, threshold, ">=")


def at_most(name: str, value: float | None, threshold: float) -> Gate:
    passed = value is not None and np.isfinite(value) and value <= threshold
    return Gate(name, bool(passed), value, threshold, "<=")


def speed_threshold(spec: ValidationSpec) -> float | None:
    """The speedup the speed gate compares with (the default gate's is 1); None: no speed gate."""
    if spec.min_speedup == 0:
        return None
    return 1.0 if spec.min_speedup is None else spec.min_speedup


def speed_gate(spec: ValidationSpec, speed: SpeedEvidence | None) -> Gate | None:
    """The speed gate the spec asks for (or the default one), judged on the paired rounds' interval.

    Explicit `minSpeedup`: passed above the interval's reach, failed below it, inconclusive when
    the threshold lies within the noise or too few rounds were undisturbed. Default gate: the
    candidate must be faster beyond the noise, so within the noise is a refusal; a busy machine is
    still inconclusive.
    """
    threshold = speed_threshold(spec)
    if threshold is None:
        return None
    default = spec.min_speedup is None
    name, comparison = (DEFAULT_SPEED_GATE, ">") if default else ("speedup_p50", ">=")
    if speed is None or speed.median_ratio is None or not np.isfinite(speed.median_ratio):
        value = speed.median_ratio if speed is not None else None
        inconclusive = speed is not None and speed.median_ratio is None
        detail = speed.explain(threshold) if speed is not None else "no benchmark figures"
        return Gate(name, False, value, threshold, comparison, inconclusive=inconclusive, detail=detail)
    verdict = speed.verdict(threshold, strict=default)
    detail = speed.explain(threshold) + (f"; {DEFAULT_SPEED_GATE_DETAIL}" if default else "")
    undecided = verdict is SpeedVerdict.TOO_FEW or (verdict is SpeedVerdict.WITHIN_NOISE and not default)
    return Gate(name, verdict is SpeedVerdict.ABOVE, speed.median_ratio, threshold, comparison, undecided, detail)


def evaluate_gates(
    spec: ValidationSpec,
    found: Fidelity,
    accuracy_pair: tuple[float, float] | None,
    speed: SpeedEvidence | None,
    size_ratio: float,
) -> list[Gate]:
    """Every gate the spec asks for; a missing or non-finite measurement fails its gate, and speed
    figures that cannot decide make the speed gate inconclusive (`speed_gate`)."""
    gates = [at_least("fidelity_mean", found.mean, 1.0 - spec.max_degradation)]
    if spec.min_worst_fidelity is not None:
        gates.append(at_least("fidelity_worst", found.min, spec.min_worst_fidelity))
    if accuracy_pair is not None:
        baseline, candidate = accuracy_pair
        gates.append(at_most("accuracy_drop", baseline - candidate, spec.max_degradation))
    judged = speed_gate(spec, speed)
    if judged is not None:
        gates.append(judged)
    if spec.max_size_ratio is not None:
        gates.append(at_most("size_ratio", size_ratio, spec.max_size_ratio))
    return gates
