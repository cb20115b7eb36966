"""The LLM quality measures on hand-computed cases: perplexity, KL, top-1, greedy prefix, flips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optiserve_jobs.generative.quality import (
    agreeing_prefix,
    answer_is_right,
    compare_window,
    count_flips,
    summarize,
)


def test_identical_models_have_zero_kl_full_agreement_and_ratio_one() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(9, 50)).astype(np.float32)
    tokens = rng.integers(0, 50, size=9)
    quality = summarize([compare_window(tokens, logits, logits)])
    assert quality.mean_kl == 0.0
    assert quality.top1_agreement == 1.0
    assert quality.perplexity_ratio == 1.0
    assert quality.tokens == 8  # the last position predicts nothing in the window


def test_uniform_logits_have_the_vocabulary_as_perplexity() -> None:
    tokens = np.array([1, 2, 3, 4])
    uniform = np.zeros((4, 20), np.float32)
    quality = summarize([compare_window(tokens, uniform, uniform)])
    assert quality.baseline_perplexity == pytest.approx(20.0)


def test_kl_of_two_known_distributions() -> None:
    # baseline p = (0.75, 0.25), candidate q = (0.5, 0.5): KL(p||q) = 0.75 ln 1.5 + 0.25 ln 0.5
    baseline = np.log(np.array([[0.75, 0.25], [0.75, 0.25]]))
    candidate = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    window = compare_window(np.array([0, 1]), baseline, candidate)
    assert float(window.kl[0]) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    # the true next token (1) has p = 0.25 and q = 0.5: the candidate is less surprised
    assert float(window.baseline_nll[0]) == pytest.approx(-math.log(0.25))
    assert float(window.candidate_nll[0]) == pytest.approx(-math.log(0.5))


def test_a_swapped_top_token_lowers_agreement() -> None:
    base = np.array([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 3.0], [0, 0, 0]])
    cand = base.copy()
    cand[1] = [3.5, 3.0, 1.0]  # position 1's top token changes
    quality = summarize([compare_window(np.array([0, 1, 2, 0]), base, cand)])
    assert quality.top1_agreement == pytest.approx(2 / 3, abs=1e-4)
    assert quality.mean_kl > 0


def test_summarize_refuses_no_windows() -> None:
    with pytest.raises(ValueError, match="no validation windows"):
        summarize([])


@pytest.mark.parametrize(
    ("baseline", "candidate", "prefix"),
    [([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 9, 3], 1), ([5], [6], 0), ([1, 2, 3], [1, 2], 2), ([], [1], 0)],
)
def test_agreeing_prefix(baseline: list[int], candidate: list[int], prefix: int) -> None:
    assert agreeing_prefix(baseline, candidate) == prefix


@pytest.mark.parametrize(
    ("text", "answer", "right"),
    [
        ("The capital of Italy is Rome.", "Rome", True),
        ("ROME, of course", "rome", True),
        ("Romeo and Juliet", "Rome", False),
        ("It is Buenos Aires.", "Buenos Aires", True),
        ("Buenos days", "Buenos Aires", False),
    ],
)
def test_answers_match_whole_words_ignoring_case(text: str, answer: str, right: bool) -> None:
    assert answer_is_right(text, answer) is right


def test_flips_count_each_direction() -> None:
    flips = count_flips([True, True, False, False, True], [True, False, True, False, False])
    assert (flips.tasks, flips.baseline_right, flips.candidate_right) == (5, 3, 2)
    assert (flips.right_to_wrong, flips.wrong_to_right) == (2, 1)
