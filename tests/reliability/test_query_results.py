"""Empty, NaN or Inf query results are never a pass (issue 8, item 3), through a real Prometheus.

The judge's own rules are covered in tests/unit/test_judge.py: NaN, infinite or negative latency
samples (a property test), NaN or impossible counts, NaN and Inf custom values are Error; an
empty window is Inconclusive; a metric without any series holds the rollout. What is left is the
path from PromQL to the judge: here real Prometheus evaluates queries that yield NaN (0/0, an
error ratio with no traffic), +Inf (x/0) and nothing at all (a name that matches no series), and
the values go through `PrometheusMetrics.custom_values`, `providers.measure` and the rollout state
machine, interval after interval on a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from optiserve.domain.analysis import AnalysisPolicy, MetricCheck, MetricKind, Outcome
from optiserve.domain.canary import CanaryPlan, RolloutState, Signals, Step, advance, due_window, evidence_windows, start
from optiserve.local.prometheus import PrometheusServer
from optiserve.local.triton import free_port
from optiserve.providers.measure import Clock, measure_interval
from optiserve.providers.prometheus import PrometheusMetrics, TritonSelector
from tests.reliability.figures import report_figure
from tests.support.eventually import eventually

pytestmark = pytest.mark.slow
WINDOW_S = 10.0
INTERVALS = 6
NAN_RATIO = (
    'sum(rate(optiserve_test_failures_total{variant="{{variant}}"}[5s]))'
    ' / sum(rate(optiserve_test_requests_total{variant="{{variant}}"}[5s]))'
)
"""An error ratio while no request arrives: 0/0."""
INF_RATIO = 'sum(optiserve_test_queue_seconds{variant="{{variant}}"}) / sum(optiserve_test_in_flight{variant="{{variant}}"})'
"""Queue time per request in flight while none is: 5/0."""
NO_SERIES = 'sum(rate(optiserve_test_renamed_total{variant="{{variant}}"}[5s]))'
"""A metric that was renamed: the query matches nothing."""


@pytest.fixture(scope="module")
def metrics() -> Iterator[PrometheusMetrics]:
    registry = CollectorRegistry()
    Counter("optiserve_test_requests", "requests", registry=registry)
    Counter("optiserve_test_failures", "failed requests", registry=registry)
    Gauge("optiserve_test_queue_seconds", "queue time", registry=registry).set(5.0)
    Gauge("optiserve_test_in_flight", "requests in flight", registry=registry).set(0.0)
    exporter, thread = start_http_server(free_port(), addr="127.0.0.1", registry=registry)
    try:
        with PrometheusServer({"candidate": f"127.0.0.1:{exporter.server_port}"}, scrape_interval_s=1.0) as prometheus:
            prometheus.wait_scraped()
            provider = PrometheusMetrics(prometheus.url, TritonSelector("unused"), scrape_interval_s=1.0)
            _until_rate_is_defined(provider)
            yield provider
    finally:
        exporter.shutdown()
        thread.join(timeout=5)


def _until_rate_is_defined(provider: PrometheusMetrics, timeout_s: float = 30.0) -> None:
    """rate() needs two scrapes in its range; until then the ratio is empty, not NaN."""
    eventually(
        lambda: provider.custom_values(NAN_RATIO, "candidate", WINDOW_S),
        timeout_s=timeout_s,
        interval_s=0.5,
        description="rate() defined over two scrapes",
    )


def _plan(query_name: str) -> CanaryPlan:
    check = MetricCheck(name=query_name, kind=MetricKind.CUSTOM, max=0.01)
    return CanaryPlan(steps=(Step(10), Step(100)), checks=(check,), policy=AnalysisPolicy(warmup_s=0), interval_s=5.0)


CASES = [
    ("nan", NAN_RATIO, Outcome.ERROR, RolloutState.ROLLED_BACK),
    ("inf", INF_RATIO, Outcome.ERROR, RolloutState.ROLLED_BACK),
    ("empty", NO_SERIES, Outcome.INCONCLUSIVE, RolloutState.HELD),
]


@pytest.mark.parametrize(("name", "query", "outcome", "final"), CASES, ids=[case[0] for case in CASES])
def test_a_query_without_a_number_never_passes(
    metrics: PrometheusMetrics, name: str, query: str, outcome: Outcome, final: RolloutState
) -> None:
    values = metrics.custom_values(query, "candidate", WINDOW_S)
    if name == "empty":
        assert values == []
    else:
        assert values and not any(math.isfinite(v) for v in values), values  # what Prometheus really answered
    plan = _plan(name)
    began = datetime.now(UTC)
    progress = start(plan, began)
    seen = []
    for k in range(1, INTERVALS + 1):
        now = began + timedelta(seconds=k * plan.interval_s)
        window = due_window(plan, progress, now)
        assert window is not None
        clock = Clock(began.timestamp(), k * plan.interval_s)
        measured = measure_interval(plan.checks, metrics, evidence_windows(plan, progress, window), clock, {name: query})
        progress = advance(plan, progress, now, Signals(), window, measured)
        seen += [m.outcome for m in progress.history[-1].measurements]
        assert progress.weight <= plan.steps[0].weight, "the rollout moved on a query without a number"
        if progress.state is not RolloutState.PROGRESSING:
            break
    assert Outcome.SUCCESSFUL not in seen
    assert set(seen) == {outcome}
    assert progress.state is final, progress.reason
    assert progress.weight == 0
    assert name in progress.reason or plan.checks[0].name in progress.reason
    report_figure(f"3-{name}", values=values[:3], outcomes=[o.value for o in seen], final=progress.state.value)
