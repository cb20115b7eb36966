"""The operator's own Prometheus metrics: reconciles, errors, durations, phases and canary weights.

Everything is registered on one `CollectorRegistry` per operator (not prometheus-client's global
one), so two operators in one process (tests) never share counters.

Per-resource state (phase, since when, canary weight) is not kept in gauges that are set and
forgotten: a small collector renders it from a dict at scrape time, so a deleted resource's
series disappear with it and the count per phase always equals the number of resources in it.

Time spent per phase comes from `status.phaseSince`, which the status writer sets when the phase
changes. It survives operator restarts, so a phase that began before a restart is still
measured from its true start.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from optiserve.api.status import CanaryStatus, Phase
from optiserve.errors import TransientError
from optiserve.kube.client import AdoptionError, ApiError
from optiserve.merge_patch import apply_merge_patch
from optiserve.status_writer import read_status

TRIGGER_CHANGE: Final = "change"
"""Create, update and resume: kopf saw the resource change (or the operator start)."""
TRIGGER_TIMER: Final = "timer"
"""The level-based resync timer."""

RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PHASE_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


def error_kind(error: BaseException) -> str:
    """The `kind` label of a reconcile error: what a person would do about it differs per kind."""
    if isinstance(error, AdoptionError):
        return "adoption"  # a name taken by another controller's object: needs a person
    if isinstance(error, TransientError):
        return "transient"  # throttling, 5xx, a lost connection: retried
    if isinstance(error, ApiError):
        return "api"  # a refusal (403, 422, ...): RBAC or a builder bug
    return "unexpected"


def parse_time(value: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def merged_status(previous: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`previous` after the JSON merge patch `patch` (None removes a field), as the API server applies it."""
    return apply_merge_patch(previous, patch)


@dataclass(frozen=True)
class ModelState:
    phase: str
    phase_since: float | None
    canary_weight: int | None
    measurements: tuple[Mapping[str, Any], ...] = ()
    """The canary's latest interval, as status.canary.measurements has it."""
    judged_at_s: float | None = None
    """End of the latest judged interval (status.canary.progress.last_interval_s): a change means a new verdict."""


def _canary_measurements(canary: CanaryStatus | None) -> tuple[tuple[Mapping[str, Any], ...], float | None]:
    if canary is None:
        return (), None
    measurements = tuple(m for m in canary.measurements if m.get("metric"))
    judged = (canary.progress or {}).get("last_interval_s")
    return measurements, float(judged) if isinstance(judged, int | float) and judged > 0 else None


def model_state(raw: Mapping[str, Any]) -> ModelState | None:
    """What the metrics show of one resource's status; None before the operator wrote one."""
    status = read_status(raw)
    if "phase" not in status.model_fields_set:
        return None
    measurements, judged_at = _canary_measurements(status.canary)
    return ModelState(
        phase=status.phase.value,
        phase_since=parse_time(status.phase_since),
        canary_weight=status.canary.weight if status.canary is not None else None,
        measurements=measurements,
        judged_at_s=judged_at,
    )


MEASURED_VALUES = (("baseline", "baseline_value"), ("candidate", "candidate_value"))


def _measurement_families(states: Mapping[tuple[str, str], ModelState]) -> tuple[GaugeMetricFamily, ...]:
    """The latest canary measurement of every metric: the measured values, the p-value, the threshold, the outcome."""
    value = GaugeMetricFamily(
        "optiserve_canary_measured_value",
        "The latest interval's value per metric and variant (median latency ms, error rate, agreement).",
        labels=["namespace", "name", "metric", "variant"],
    )
    p_value = GaugeMetricFamily(
        "optiserve_canary_p_value",
        "p-value of the test that judged the metric's latest interval.",
        labels=["namespace", "name", "metric"],
    )
    threshold = GaugeMetricFamily(
        "optiserve_canary_threshold",
        "The tolerance or bound the latest interval was judged against.",
        labels=["namespace", "name", "metric"],
    )
    outcome = GaugeMetricFamily(
        "optiserve_canary_outcome",
        "1 for the latest interval's outcome per metric (Successful, Failed, Inconclusive, Error).",
        labels=["namespace", "name", "metric", "outcome"],
    )
    for (namespace, name), state in sorted(states.items()):
        for m in state.measurements:
            metric = str(m["metric"])
            for variant, key in MEASURED_VALUES:
                if isinstance(m.get(key), int | float):
                    value.add_metric([namespace, name, metric, variant], float(m[key]))
            for family, key in ((p_value, "p_value"), (threshold, "threshold")):
                if isinstance(m.get(key), int | float):
                    family.add_metric([namespace, name, metric], float(m[key]))
            outcome.add_metric([namespace, name, metric, str(m.get("outcome"))], 1)
    return value, p_value, threshold, outcome


class ModelStates(Collector):
    """Per-resource phase, phase start and canary weight, rendered at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], ModelState] = {}

    def set(self, namespace: str, name: str, state: ModelState) -> None:
        with self._lock:
            self._states[(namespace, name)] = state

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._states.pop((namespace, name), None)

    def get(self, namespace: str, name: str) -> ModelState | None:
        with self._lock:
            return self._states.get((namespace, name))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            states = dict(self._states)
        per_phase = {phase.value: 0 for phase in Phase}
        phase = GaugeMetricFamily(
            "optiserve_model_phase", "1 for the phase each OptimizedModel is in.", labels=["namespace", "name", "phase"]
        )
        since = GaugeMetricFamily(
            "optiserve_model_phase_since_timestamp_seconds",
            "When each OptimizedModel entered its current phase (status.phaseSince), seconds since the epoch.",
            labels=["namespace", "name"],
        )
        weight = GaugeMetricFamily(
            "optiserve_canary_weight",
            "Percent of traffic on the candidate (status.canary.weight), for resources with a canary status.",
            labels=["namespace", "name"],
        )
        for (namespace, name), state in sorted(states.items()):
            per_phase[state.phase] = per_phase.get(state.phase, 0) + 1
            phase.add_metric([namespace, name, state.phase], 1)
            if state.phase_since is not None:
                since.add_metric([namespace, name], state.phase_since)
            if state.canary_weight is not None:
                weight.add_metric([namespace, name], state.canary_weight)
        count = GaugeMetricFamily("optiserve_models", "OptimizedModels per phase.", labels=["phase"])
        for name, value in sorted(per_phase.items()):
            count.add_metric([name], value)
        yield from (count, phase, since, weight)
        yield from _measurement_families(states)


class OperatorMetrics:
    """The operator's metrics on a registry of their own; handlers call the recording methods."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "optiserve_reconciles",
            "Reconciles by trigger (change, timer) and result (success, error).",
            ["trigger", "result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "optiserve_reconcile_errors",
            "Failed reconciles by kind: transient (retried), adoption, api (a refusal), unexpected.",
            ["kind"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "optiserve_reconcile_duration_seconds",
            "Wall time of one reconcile, API calls included.",
            ["trigger"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.transitions = Counter(
            "optiserve_phase_transitions",
            "Phase changes written to status, by the phase left and the phase entered.",
            ["from_phase", "to_phase"],
            registry=self.registry,
        )
        self.phase_duration = Histogram(
            "optiserve_phase_duration_seconds",
            "Time spent in a phase, from status.phaseSince, observed when a resource leaves it.",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.deletions = Counter(
            "optiserve_deletions",
            "OptimizedModels whose deletion the operator finished (children removed, finalizer released).",
            registry=self.registry,
        )
        self.verdicts = Counter(
            "optiserve_canary_measurements",
            "Canary measurements by metric and outcome, one per metric per judged interval.",
            ["namespace", "name", "metric", "outcome"],
            registry=self.registry,
        )
        self.models = ModelStates()
        self.registry.register(self.models)

    @contextlib.contextmanager
    def reconciling(self, trigger: str) -> Iterator[None]:
        """Count and time the reconcile inside the block; an exception counts as an error of its kind."""
        started = time.perf_counter()
        try:
            yield
        except Exception as e:
            self.errors.labels(kind=error_kind(e)).inc()
            self.reconciles.labels(trigger=trigger, result="error").inc()
            raise
        else:
            self.reconciles.labels(trigger=trigger, result="success").inc()
        finally:
            self.duration.labels(trigger=trigger).observe(time.perf_counter() - started)

    def observe_status(
        self, namespace: str, name: str, previous: Mapping[str, Any], patch: Mapping[str, Any], now: float | None = None
    ) -> None:
        """Record what a reconcile wrote: the resource's state, and a transition when the phase changed."""
        before = model_state(previous)
        after = model_state(merged_status(previous, patch))
        if after is None:
            return
        if before is not None and before.phase != after.phase:
            self.transitions.labels(from_phase=before.phase, to_phase=after.phase).inc()
        if after.judged_at_s is not None and (before is None or before.judged_at_s != after.judged_at_s):
            for m in after.measurements:
                self.verdicts.labels(namespace=namespace, name=name, metric=m["metric"], outcome=m.get("outcome")).inc()
        # A span ends when the phase changes or restarts (a spec change sets a new phaseSince).
        span_ended = before is not None and (before.phase != after.phase or before.phase_since != after.phase_since)
        if span_ended and before is not None and before.phase_since is not None:
            left = time.time() if now is None else now
            self.phase_duration.labels(phase=before.phase).observe(max(0.0, left - before.phase_since))
        self.models.set(namespace, name, after)

    def track(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Show a resource as its status says (a reconcile that failed wrote nothing new)."""
        state = model_state(status)
        if state is not None and self.models.get(namespace, name) is None:
            self.models.set(namespace, name, state)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a resource's series (it is gone)."""
        self.models.forget(namespace, name)

    def deleted(self, namespace: str, name: str) -> None:
        """A deletion finished: count it once and drop the resource's series."""
        self.forget(namespace, name)
        self.deletions.inc()

    def total_reconciles(self) -> int:
        return int(
            sum(
                sample.value
                for metric in self.reconciles.collect()
                for sample in metric.samples
                if sample.name.endswith("_total")
            )
        )
