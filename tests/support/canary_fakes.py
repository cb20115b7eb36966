"""What the canary judges and moves, in memory: a metrics backend that answers like Prometheus over
Triton and the comparator would, for a healthy or a regressed candidate, and a router whose weights
the test reads back; both reach the operator through the reconciler's `Hooks`. Also the second
generation's Job result and a rollout quick enough for tests (1 s intervals).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optiserve.api.spec import OptimizedModel
from optiserve.providers.metrics import Counts, MetricsProvider
from optiserve.providers.traffic import TrafficRouter
from optiserve.providers.traffic_factory import RouterContext
from optiserve.reconciler import Hooks
from tests.support.fake_router import FakeRouter

QUICK_ROLLOUT: dict[str, Any] = {
    "steps": [{"weight": 10}, {"weight": 50}, {"weight": 100}],
    "analysis": {
        "interval": "1s",
        "warmup": "1s",
        "metrics": [
            {"name": "latency", "maxRelativeIncrease": 0.1},
            {"name": "errorRate", "maxAbsoluteIncrease": 0.01},
            {"name": "agreement", "min": 0.99},
        ],
        "failureLimit": 0,
    },
}


@dataclass
class TimedRouter(FakeRouter):
    """Remembers when each weight was first set."""

    set_at: dict[int, float] = field(default_factory=dict)

    def set_weight(self, candidate_weight: int) -> None:
        super().set_weight(candidate_weight)
        self.set_at.setdefault(candidate_weight, time.time())


@dataclass
class Backend:
    """Answers like Prometheus over Triton and the comparator; `candidate_scale` slows the candidate."""

    candidate_scale: float = 1.0
    agreement: float = 1.0
    down: bool = False
    seed: int = 0
    calls: int = 0
    router: TimedRouter | None = None
    slow_from_weight: int | None = None
    """With the router: the candidate is 2x slower from the moment the router sends it this much traffic."""

    def latency_points(self, variant: str, window_s: float) -> list[tuple[float, float]] | None:
        """One value per 0.1 s scrape over the window, on a grid both variants share."""
        self.calls += 1
        if self.down:
            return None
        scale = self.candidate_scale if variant == "candidate" else 1.0
        rng = np.random.default_rng(self.seed + self.calls)
        end = math.floor(time.time() * 10) / 10
        times = [end - k / 10 for k in range(int(window_s * 10), -1, -1)]
        values = scale * rng.lognormal(np.log(10.0), 0.1, len(times))
        slow_since = self.router.set_at.get(self.slow_from_weight) if self.router and self.slow_from_weight else None
        if variant == "candidate" and slow_since is not None:
            values = np.where(np.array(times) >= slow_since, 2.0 * values, values)
        return [(t, float(v)) for t, v in zip(times, values, strict=True)]

    def request_counts(self, variant: str, window_s: float) -> Counts | None:
        return None if self.down else Counts(hits=0.0, total=600.0)

    def comparator_counts(self, metric: str, window_s: float) -> Counts | None:
        return None if self.down else Counts(hits=round(500 * self.agreement), total=500.0)

    def custom_values(self, query: str, variant: str, window_s: float) -> list[float] | None:
        return None


@dataclass
class Fakes:
    backend: Backend = field(default_factory=Backend)
    router: FakeRouter = field(default_factory=FakeRouter)

    def hooks(self) -> Hooks:
        def metrics(manifest: OptimizedModel, namespace: str) -> MetricsProvider:
            return self.backend

        def routers(manifest: OptimizedModel, context: RouterContext) -> TrafficRouter:
            return self.router

        return Hooks(metrics=metrics, routers=routers)
