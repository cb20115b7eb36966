"""The rollout engine: one canary step, the same for the operator and for local mode.

A host wakes the engine with where the rollout stands (its `CanaryProgress`, None before the first
step), the time, a person's signals and the weight its router verified last; the engine measures the
interval that is due through the host's `MetricsProvider`, advances the pure state machine
(`optiserve.domain.canary.step`) and says which weight the router must have. The host then routes
with `route`, which sets and reads back through any `TrafficRouter`.

The two hosts differ only in what they give it:
- the operator (`optiserve.canary_reconcile`): Prometheus in the cluster, the progress read back from
  status.canary.progress, the approval and abort annotations, the Gateway or replica-ratio router;
- local mode (`optiserve.local.run`): its own Prometheus, the progress in memory, no signals, the
  local nginx router (`optiserve.local.nginx_router`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from optiserve.domain.analysis import Measurement
from optiserve.domain.canary import (
    CanaryPlan,
    CanaryProgress,
    MeasuredInterval,
    Signals,
    StepOutcome,
    Window,
    due_window,
    elapsed_s,
    evidence_windows,
    start,
    step,
)
from optiserve.providers.measure import Clock, measure_interval
from optiserve.providers.metrics import MetricsProvider
from optiserve.providers.traffic import TrafficRouter, verify

MetricsSource = Callable[[], MetricsProvider]
"""Builds the metrics backend when an interval is due (no backend is contacted between intervals)."""


@dataclass(frozen=True)
class RolloutEngine:
    plan: CanaryPlan
    metrics: MetricsSource
    queries: Mapping[str, str] = field(default_factory=dict)
    """Custom metrics' PromQL, by metric name."""

    def tick(
        self,
        progress: CanaryProgress | None,
        now: datetime,
        signals: Signals | None = None,
        verified_weight: int | None = None,
    ) -> StepOutcome:
        """One step: the first one starts the rollout's clock at the first step's weight."""
        current = progress or start(self.plan, now)
        window = due_window(self.plan, current, now)
        measured = MeasuredInterval(window, self._measure(current, window, now)) if window is not None else None
        return step(self.plan, current, now, signals or Signals(), measured, verified_weight)

    def _measure(self, progress: CanaryProgress, window: Window, now: datetime) -> list[Measurement]:
        clock = Clock(progress.started_at.timestamp(), elapsed_s(progress, now))
        windows = evidence_windows(self.plan, progress, window)
        plan = self.plan
        return measure_interval(plan.checks, self.metrics(), windows, clock, dict(self.queries), plan.policy.evidence_test)


def route(router: TrafficRouter, weight: int) -> int:
    """The router at ``weight``, verified by reading it back; set only where it is not there yet.

    Returns the weight the router reports (it can differ from ``weight`` where the splitter rounds,
    as a replica ratio does). Raises `WeightMismatchError` when a set did not take effect.
    """
    current = router.current_weight()
    if current is not None and current == router.achievable_weight(weight):
        return current
    return verify(router, weight)
