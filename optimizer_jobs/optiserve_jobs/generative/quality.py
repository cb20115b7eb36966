"""How far a candidate language model is from its baseline, from their logits (pure numpy).

Everything is measured against the baseline's own next-token distributions on text neither saw
in calibration: perplexity (how surprised each is by the text), the KL divergence of the
candidate's distribution from the baseline's at every position (llama.cpp's quantization
measure), and teacher-forced top-1 agreement (both fed the same true prefix, do they rank the
same next token first?). Exact-match answers come last and are only counted as flips against
the baseline, since a worse model can answer more questions right by chance.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


@dataclass(frozen=True)
class WindowComparison:
    """One window of text scored by both models, per predicted position."""

    baseline_nll: np.ndarray
    candidate_nll: np.ndarray
    kl: np.ndarray
    top1_agrees: np.ndarray


def compare_window(token_ids: np.ndarray, baseline_logits: np.ndarray, candidate_logits: np.ndarray) -> WindowComparison:
    """Logits [tokens, vocab] of both models over `token_ids`; position t predicts token t+1."""
    base = log_softmax(baseline_logits[:-1])
    cand = log_softmax(candidate_logits[:-1])
    targets = token_ids[1:]
    rows = np.arange(len(targets))
    kl = (np.exp(base) * (base - cand)).sum(axis=-1)
    return WindowComparison(
        baseline_nll=-base[rows, targets],
        candidate_nll=-cand[rows, targets],
        kl=np.maximum(kl, 0.0),
        top1_agrees=base.argmax(axis=-1) == cand.argmax(axis=-1),
    )


@dataclass(frozen=True)
class LanguageQuality:
    tokens: int
    windows: int
    baseline_perplexity: float
    candidate_perplexity: float
    perplexity_ratio: float
    mean_kl: float
    p99_kl: float
    """The 99th percentile of per-token KL: where the candidate goes most astray."""
    top1_agreement: float


def summarize(windows: list[WindowComparison]) -> LanguageQuality:
    if not windows:
        raise ValueError("no validation windows to summarize")
    base_nll = np.concatenate([w.baseline_nll for w in windows])
    cand_nll = np.concatenate([w.candidate_nll for w in windows])
    kl = np.concatenate([w.kl for w in windows])
    agrees = np.concatenate([w.top1_agrees for w in windows])
    base_ppl, cand_ppl = math.exp(float(base_nll.mean())), math.exp(float(cand_nll.mean()))
    return LanguageQuality(
        tokens=int(base_nll.size),
        windows=len(windows),
        baseline_perplexity=round(base_ppl, 4),
        candidate_perplexity=round(cand_ppl, 4),
        perplexity_ratio=round(cand_ppl / base_ppl, 5),
        mean_kl=round(float(kl.mean()), 6),
        p99_kl=round(float(np.quantile(kl, 0.99)), 6),
        top1_agreement=round(float(agrees.mean()), 5),
    )


def agreeing_prefix(baseline_tokens: list[int], candidate_tokens: list[int]) -> int:
    """Greedy tokens the candidate produces before its first divergence from the baseline."""
    for index, (a, b) in enumerate(zip(baseline_tokens, candidate_tokens, strict=False)):
        if a != b:
            return index
    return min(len(baseline_tokens), len(candidate_tokens))


def answer_is_right(generated: str, answer: str) -> bool:
    """The expected answer appears in the generated text as whole words, ignoring case."""
    words = re.escape(answer.strip().lower())
    return re.search(rf"(?<!\w){words}(?!\w)", generated.lower()) is not None


@dataclass(frozen=True)
class Flips:
    tasks: int
    baseline_right: int
    candidate_right: int
    right_to_wrong: int
    wrong_to_right: int


def count_flips(baseline_right: list[bool], candidate_right: list[bool]) -> Flips:
    pairs = list(zip(baseline_right, candidate_right, strict=True))
    return Flips(
        tasks=len(pairs),
        baseline_right=sum(b for b, _ in pairs),
        candidate_right=sum(c for _, c in pairs),
        right_to_wrong=sum(b and not c for b, c in pairs),
        wrong_to_right=sum(c and not b for b, c in pairs),
    )
