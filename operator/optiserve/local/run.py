"""`optiserve run`: the whole pipeline on one machine, with the operator's phases, steps and judge.

Optimizing (the optimization job, in this process) -> Validating (its gates) -> Deploying (a
baseline and a candidate `tritonserver`, each ready and warm) -> Canary (nginx splits a bounded
load by weight; Prometheus scrapes both servers and the comparator; every interval the same judge
as the operator decides, through the same rollout engine, `optiserve.rollout_engine`) -> Promoted or
RolledBack. Every process it starts is stopped on the way out, whatever happens (an error, Ctrl-C).

On one machine nothing was promoted before, so the baseline is the unoptimized model, exported to
ONNX by the job's own export pass and served the same way (see `optiserve_jobs.baseline`).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optiserve.api.job import job_request_from_manifest
from optiserve.api.rollout import LatencySource
from optiserve.api.spec import OptimizedModel
from optiserve.api.status import Phase
from optiserve.comparator.compare import agreement_threshold
from optiserve.domain.analysis import Measurement
from optiserve.domain.analysis_spec import canary_plan
from optiserve.domain.canary import CanaryPlan, CanaryProgress, RolloutState, StepOutcome
from optiserve.golden import GOLDEN_FILE, load_golden
from optiserve.local.canary_servers import (
    SCRAPE_INTERVAL_S,
    CanaryServers,
    ComparatorSettings,
    ServingOptions,
    start_canary_servers,
)
from optiserve.local.injected_candidate import VariantDirs, served_candidate
from optiserve.local.job_cache import JobOutputs, optimization_outputs
from optiserve.local.load import BackgroundLoad, LoadConfig, LoadResult
from optiserve.local.run_overrides import local_manifest
from optiserve.providers.traffic import TrafficRouter
from optiserve.rollout_engine import RolloutEngine, route

logger = logging.getLogger(__name__)

TICK_S = 1.0
DRAIN_S = 5.0
"""Load keeps flowing this long after the decision, so the report shows the switch lost nothing."""
TRANSITION_MARGIN_S = 2.0


class RunError(RuntimeError):
    """The run could not go on; the message says which step and why."""


@dataclass(frozen=True)
class RunOptions:
    manifest: Path
    report_dir: Path
    inject: tuple[str, ...] = ()
    job_cache: Path | None = None
    """Reuse the optimization output of an identical request found here (tests, repeated demos)."""
    interval: str | None = None
    warmup: str | None = None
    rate_per_s: float = 20.0
    concurrency: int = 4
    price_per_replica_hour: float = 0.50
    max_canary_s: float = 900.0


@dataclass
class Timeline:
    """The run's clock and what happened on it (seconds since the run started)."""

    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    phases: list[tuple[Phase, float]] = field(default_factory=list)
    weights: list[tuple[float, int]] = field(default_factory=list)
    transitions: list[tuple[float, float]] = field(default_factory=list)
    """Windows (start, end) around weight changes, promotion and rollback."""

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def enter(self, phase: Phase) -> None:
        self.phases.append((phase, self.now_s()))


@dataclass(frozen=True)
class JudgedInterval:
    at_s: float
    """On the run clock."""
    step: int
    """1-based, the step the interval was judged at."""
    weight: int
    decision: str
    measurements: tuple[Measurement, ...]


@dataclass
class CanaryRun:
    """What the canary produced, for the report."""

    plan: CanaryPlan
    progress: CanaryProgress
    canary_started_s: float
    intervals: list[JudgedInterval] = field(default_factory=list)
    step_starts: list[float] = field(default_factory=list)
    """Run-clock start of each step reached."""
    load: LoadResult | None = None
    server_counts: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Per variant: (requests, failures) counted by the server, from Prometheus."""


@dataclass
class RunState:
    """Everything the report needs, filled in as the run goes."""

    options: RunOptions
    timeline: Timeline = field(default_factory=Timeline)
    manifest: OptimizedModel | None = None
    outputs: JobOutputs | None = None
    canary: CanaryRun | None = None
    outcome: str = "failed"
    reason: str = ""


Display = Callable[[dict[str, Any]], None]


def _no_display(_: dict[str, Any]) -> None:
    return None


def rollout_plan(manifest: OptimizedModel) -> CanaryPlan:
    rollout = manifest.spec.rollout
    if rollout is None or not rollout.analysis.metrics:
        raise RunError("spec.rollout.analysis.metrics: local mode runs a canary; name at least one metric to judge")
    # Local mode runs its own Prometheus: its scrape interval, not the cluster's, is what the judge sees.
    analysis = rollout.analysis.model_copy(update={"scrape_interval": f"{SCRAPE_INTERVAL_S:g}s"})
    return canary_plan(rollout.model_copy(update={"analysis": analysis}))


def _queries(manifest: OptimizedModel) -> dict[str, str]:
    rollout = manifest.spec.rollout
    return {m.name: m.query for m in (rollout.analysis.metrics if rollout else []) if m.query}


def _route(router: TrafficRouter, timeline: Timeline, weight: int) -> int:
    changed = timeline.now_s()
    verified = route(router, weight)
    timeline.weights.append((changed, verified))
    timeline.transitions.append((changed - TRANSITION_MARGIN_S, timeline.now_s() + TRANSITION_MARGIN_S))
    return verified


def _record(run: CanaryRun, before: CanaryProgress, outcome: StepOutcome, timeline: Timeline) -> None:
    run.progress = outcome.progress
    if outcome.judged is not None:
        record = outcome.judged
        run.intervals.append(
            JudgedInterval(timeline.now_s(), before.step + 1, before.weight, record.decision.value, record.measurements)
        )
    if outcome.step_changed:
        run.step_starts.append(timeline.now_s())


def canary_loop(
    engine: RolloutEngine, servers: CanaryServers, timeline: Timeline, load: BackgroundLoad, display: Display, max_s: float
) -> CanaryRun:
    """Drive the rollout until it is final or held (local mode has no person to release a hold).

    The host of the rollout engine here: the servers' Prometheus (``engine`` reads through
    ``servers.metrics``), the progress in memory, no signals, and the nginx router between the
    two servers."""
    router = servers.router()
    first = engine.tick(None, datetime.now(UTC))
    run = CanaryRun(plan=engine.plan, progress=first.progress, canary_started_s=timeline.now_s())
    run.step_starts.append(run.canary_started_s)
    verified = _route(router, timeline, first.weight)
    while not run.progress.is_final and run.progress.state is not RolloutState.HELD:
        time.sleep(TICK_S)
        before = run.progress
        outcome = engine.tick(before, datetime.now(UTC), verified_weight=verified)
        _record(run, before, outcome, timeline)
        if outcome.route:
            verified = _route(router, timeline, outcome.weight)
        display(live_view(run, load, timeline))
        if timeline.now_s() - run.canary_started_s > max_s:
            raise RunError(f"the canary did not decide within {max_s:.0f}s")
    return run


def live_view(run: CanaryRun, load: BackgroundLoad, timeline: Timeline) -> dict[str, Any]:
    progress = run.progress
    latest = progress.history[-1].measurements if progress.history else ()
    stats = load.stats()
    return {
        "phase": Phase.CANARY.value,
        "elapsed_s": timeline.now_s(),
        "step": f"{progress.step + 1}/{len(run.plan.steps)}",
        "weight": progress.weight,
        "state": progress.state.value,
        "reason": progress.reason,
        "metrics": {m.metric: m.outcome.value for m in latest},
        "requests": {name: (v.ok, v.failed) for name, v in stats.variants.items()},
    }


def _server_counts(servers: CanaryServers, window_s: float) -> dict[str, tuple[float | None, float | None]]:
    provider = servers.metrics()
    counts: dict[str, tuple[float | None, float | None]] = {}
    for variant in ("baseline", "candidate"):
        found = provider.request_counts(variant, window_s)
        counts[variant] = (found.total, found.hits) if found is not None else (None, None)
    return counts


def _canary(state: RunState, plan: CanaryPlan, progress: Callable[[str], None], display: Display) -> None:
    assert state.manifest is not None and state.outputs is not None
    options, timeline = state.options, state.timeline
    model = state.manifest.metadata.name
    spec = state.manifest.spec
    outputs = state.outputs
    threads = spec.serving.triton.intra_op_threads or 1
    work_dir = options.report_dir / "serving"
    variants = VariantDirs(model, outputs.baseline_dir, outputs.candidate_dir)
    candidate_dir = served_candidate(options.inject, variants, work_dir, threads, progress)
    comparator = ComparatorSettings(task=spec.model.task.value, threshold=agreement_threshold(spec.validation))
    logs = options.report_dir / "logs"
    latency_source = state.manifest.spec.rollout.analysis.latency_source if state.manifest.spec.rollout else None
    serving = ServingOptions(comparator, latency_source or LatencySource.TRITON)
    with start_canary_servers(model, state.outputs.baseline_dir, candidate_dir, logs, progress, serving) as servers:
        samples = load_golden(candidate_dir / GOLDEN_FILE)
        config = LoadConfig(
            concurrency=options.concurrency, rate_per_s=options.rate_per_s, max_duration_s=options.max_canary_s + 120
        )
        timeline.enter(Phase.CANARY)
        with BackgroundLoad(servers.load_target, samples, config) as load:  # started on entry
            try:
                engine = RolloutEngine(plan, servers.metrics, _queries(state.manifest))
                state.canary = canary_loop(engine, servers, timeline, load, display, options.max_canary_s)
                state.outcome, final = _outcome(state.canary)
                if final is not None:
                    timeline.enter(final)
            finally:
                time.sleep(DRAIN_S)  # the load goes on after the switch: the report shows whether it lost any request
                result = load.stop()
        state.canary.load = result
        state.canary.server_counts = _server_counts(servers, timeline.now_s() - state.canary.canary_started_s + 5)


def _outcome(run: CanaryRun) -> tuple[str, Phase | None]:
    if run.progress.state is RolloutState.PROMOTED:
        return "promoted", Phase.PROMOTED
    if run.progress.state is RolloutState.ROLLED_BACK:
        return "rolled_back", Phase.ROLLED_BACK
    return "held", None


def run_pipeline(
    options: RunOptions,
    *,
    progress: Callable[[str], None] = lambda _: None,
    display: Display = _no_display,
) -> RunState:
    """Run everything; the returned state says how it ended (a failure is an outcome, not an exception)."""
    state = RunState(options=options)
    timeline = state.timeline
    timeline.enter(Phase.PENDING)
    try:
        state.manifest = local_manifest(options.manifest, interval=options.interval, warmup=options.warmup)
        plan = rollout_plan(state.manifest)
        timeline.enter(Phase.OPTIMIZING)
        request = job_request_from_manifest(state.manifest, base_dir=str(options.manifest.resolve().parent))
        state.outputs = optimization_outputs(request, options.report_dir / "optimization", options.job_cache, progress)
        timeline.enter(Phase.VALIDATING)
        if not state.outputs.result.passed:
            raise RunError(f"optimization: {state.outputs.result.reason or 'a validation gate failed'}")
        timeline.enter(Phase.DEPLOYING)
        _canary(state, plan, progress, display)
        assert state.canary is not None
        state.reason = state.canary.progress.reason
    except (Exception, KeyboardInterrupt) as e:  # every failure, Ctrl-C included, ends in a report saying why
        state.outcome, state.reason = "failed", _failure_text(e)
        timeline.enter(Phase.FAILED)
        _keep_traceback(options.report_dir, e)
    return state


def _keep_traceback(report_dir: Path, error: BaseException) -> None:
    logs = report_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "run-error.txt").write_text("".join(traceback.format_exception(error)))


def _failure_text(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C); every process this run started was stopped"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


__all__ = ["CanaryRun", "JudgedInterval", "RunError", "RunOptions", "RunState", "Timeline", "run_pipeline"]
