"""Run the LLM gates' measurements: both models over held-out text, golden prompts and tasks."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from optiserve_jobs.errors import SourceError
from optiserve_jobs.generative.quality import (
    Flips,
    LanguageQuality,
    agreeing_prefix,
    answer_is_right,
    compare_window,
    count_flips,
    summarize,
)


class Decoder(Protocol):
    def empty_cache(self, batch: int) -> Any: ...

    def forward(self, input_ids: np.ndarray, cache: Any) -> tuple[np.ndarray, Any]: ...

    def logits(self, token_ids: np.ndarray) -> np.ndarray: ...


Progress = Callable[[str], None]


def read_texts(path: Path, key: str = "text") -> list[str]:
    """Non-empty lines of a .txt file, or the `key` (or 'prompt') field of each .jsonl record."""
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [str(r.get(key, r.get("prompt", ""))) for r in records if r.get(key, r.get("prompt"))]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_tasks(path: Path) -> list[tuple[str, str]]:
    """(prompt, answer) of each .jsonl record; a record without both is refused, naming its line."""
    tasks = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not record.get("prompt") or not record.get("answer"):
            raise SourceError(f"validation.generation.tasksUri: {path.name} line {number} needs 'prompt' and 'answer'")
        tasks.append((str(record["prompt"]), str(record["answer"])))
    return tasks


def token_windows(texts: Sequence[str], tokenizer: Any, length: int, count: int, field: str) -> list[np.ndarray]:
    """Consecutive windows of `length` tokens of the texts joined by blank lines, at most `count`."""
    ids = np.asarray(tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"], dtype=np.int64)
    windows = [ids[start : start + length] for start in range(0, len(ids) - length + 1, length)][:count]
    if not windows:
        raise SourceError(f"{field}: {len(ids)} tokens of text, fewer than one window of {length} (contextTokens)")
    return windows


def language_quality(baseline: Decoder, candidate: Decoder, windows: Sequence[np.ndarray], progress: Progress) -> LanguageQuality:
    compared = []
    for index, window in enumerate(windows):
        if index % 4 == 0:
            progress(f"teacher-forced window {index + 1}/{len(windows)}")
        compared.append(compare_window(window, baseline.logits(window), candidate.logits(window)))
    return summarize(compared)


def greedy(decoder: Decoder, prompt_ids: np.ndarray, max_new: int, eos: Sequence[int]) -> list[int]:
    """Greedy decoding with the KV cache: the tokens after the prompt, up to an end token."""
    logits, cache = decoder.forward(prompt_ids[None, :], decoder.empty_cache(1))
    tokens: list[int] = []
    while len(tokens) < max_new:
        token = int(logits[0, -1].argmax())
        if token in eos:
            break
        tokens.append(token)
        logits, cache = decoder.forward(np.array([[token]], dtype=np.int64), cache)
    return tokens


def prompt_ids(tokenizer: Any, text: str, *, chat: bool, room: int, context: int, where: str) -> np.ndarray:
    """Token ids of a prompt (in the chat template for instruct models); refuses one that leaves
    no room for `room` new tokens in the context."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(text)["input_ids"]
    if len(ids) + room > context:
        raise SourceError(
            f"{where}: the prompt is {len(ids)} tokens; with {room} new tokens it exceeds the model's context of {context}"
        )
    return np.asarray(ids, dtype=np.int64)


@dataclass(frozen=True)
class GoldenAnswer:
    prompt: str
    baseline_text: str
    candidate_text: str
    baseline_tokens: list[int]
    agreeing_tokens: int
    """Greedy tokens before the first divergence."""


@dataclass(frozen=True)
class GreedyAgreement:
    answers: list[GoldenAnswer]
    mean_agreeing_tokens: float
    identical: int
    """Answers the candidate reproduced token for token."""


@dataclass(frozen=True)
class PromptSettings:
    chat: bool
    max_new_tokens: int
    context: int
    eos: tuple[int, ...]


class BaselineAnswers:
    """The baseline's greedy answers, each computed once: several candidates are compared with the
    same baseline (the benchmark's variants), and the source on PyTorch is the slowest decoder."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self._answers: dict[tuple[bytes, int], list[int]] = {}

    def __call__(self, ids: np.ndarray, max_new: int, eos: Sequence[int]) -> list[int]:
        key = (ids.tobytes(), max_new)
        if key not in self._answers:
            self._answers[key] = greedy(self.decoder, ids, max_new, eos)
        return self._answers[key]


def _answerer(baseline: Decoder | BaselineAnswers) -> BaselineAnswers:
    return baseline if isinstance(baseline, BaselineAnswers) else BaselineAnswers(baseline)


def golden_answers(
    baseline: Decoder | BaselineAnswers,
    candidate: Decoder,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: PromptSettings,
    where: str,
) -> GreedyAgreement:
    answer = _answerer(baseline)
    answers = []
    for number, text in enumerate(prompts, start=1):
        ids = _prompt(tokenizer, text, settings, f"{where} prompt {number}")
        base = answer(ids, settings.max_new_tokens, settings.eos)
        cand = greedy(candidate, ids, settings.max_new_tokens, settings.eos)
        answers.append(GoldenAnswer(text, tokenizer.decode(base), tokenizer.decode(cand), base, agreeing_prefix(base, cand)))
    identical = sum(a.baseline_text == a.candidate_text for a in answers)
    mean = float(np.mean([a.agreeing_tokens for a in answers])) if answers else 0.0
    return GreedyAgreement(answers, round(mean, 3), identical)


def task_flips(
    baseline: Decoder | BaselineAnswers,
    candidate: Decoder,
    tokenizer: Any,
    tasks: Sequence[tuple[str, str]],
    settings: PromptSettings,
) -> Flips:
    answer_of = _answerer(baseline)
    base_right, cand_right = [], []
    for number, (text, answer) in enumerate(tasks, start=1):
        ids = _prompt(tokenizer, text, settings, f"validation.generation.tasksUri task {number}")
        base_right.append(answer_is_right(tokenizer.decode(answer_of(ids, settings.max_new_tokens, settings.eos)), answer))
        cand_right.append(
            answer_is_right(tokenizer.decode(greedy(candidate, ids, settings.max_new_tokens, settings.eos)), answer)
        )
    return count_flips(base_right, cand_right)


def _prompt(tokenizer: Any, text: str, settings: PromptSettings, where: str) -> np.ndarray:
    return prompt_ids(tokenizer, text, chat=settings.chat, room=settings.max_new_tokens, context=settings.context, where=where)
