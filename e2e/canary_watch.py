"""A record of a rollout as status showed it, read about once a second while a scenario disturbs it.

Scenarios that kill pods mid-canary assert on it: the step never goes back, the canary's clock
(`progress.startedAt`) is never restarted, and the weight never rises while the candidate has no
ready pod.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Seen:
    at: float
    phase: str | None
    step: int
    weight: int
    started_at: str | None
    candidate_ready: bool | None


@dataclass
class CanaryWatch:
    read_model: Callable[[], dict[str, Any]]
    read_candidate_ready: Callable[[], bool | None]
    every_s: float = 1.0
    seen: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CanaryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                status = self.read_model().get("status") or {}
                ready = self.read_candidate_ready()
            except Exception as exc:  # the API server may be briefly away: the next reading resumes
                self.errors.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                continue
            canary = status.get("canary") or {}
            progress = canary.get("progress") or {}
            self.seen.append(
                Seen(
                    time.monotonic(),
                    status.get("phase"),
                    int(canary.get("step") or 0),
                    int(canary.get("weight") or 0),
                    progress.get("startedAt") or progress.get("started_at"),
                    ready,
                )
            )

    def in_canary(self) -> list[Seen]:
        return [s for s in self.seen if s.phase == "Canary"]

    def steps_went_back(self) -> list[tuple[int, int]]:
        steps = [s.step for s in self.in_canary()]
        return [(a, b) for a, b in itertools.pairwise(steps) if b < a]

    def clocks(self) -> set[str]:
        return {s.started_at for s in self.in_canary() if s.started_at}

    def weight_rises_without_a_ready_candidate(self) -> list[tuple[int, int]]:
        canary = self.in_canary()
        return [
            (a.weight, b.weight)
            for a, b in itertools.pairwise(canary)
            if b.weight > a.weight and a.candidate_ready is False and b.candidate_ready is False
        ]
