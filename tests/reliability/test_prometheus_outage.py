"""Prometheus stopped mid-canary, for real (issue 8, item 2).

The digits canary runs through the local pipeline (real tritonservers, nginx, comparator,
Prometheus; 5 s intervals, consecutiveErrorLimit 2). Once the rollout reaches step 2 (weight 50)
the Prometheus process is stopped. Every interval judged while it is down must be Error for every
metric, and the rollout must not move: no promotion, no weight change. Left down, the third Error
in a row exceeds the limit and rolls back to weight 0. Restarted (same port, same TSDB) after the
first Error interval, the canary carries on and promotes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from optiserve.api.spec import OptimizedModel
from optiserve.domain.analysis import Outcome
from optiserve.domain.canary import CanaryPlan, RolloutState
from optiserve.local.canary_servers import CanaryServers
from optiserve.local.job_cache import JobOutputs
from optiserve.local.prometheus import PrometheusServer
from optiserve.local.run import Timeline
from optiserve.local.triton import free_port
from optiserve.providers.prometheus import PrometheusMetrics, TritonSelector
from tests.reliability.digits import DigitsWorkspace, digits_servers, plan_of, run_canary
from tests.reliability.figures import report_figure
from tests.support.eventually import eventually

pytestmark = pytest.mark.slow
ERROR_LIMIT = 2


@pytest.fixture(scope="module")
def canary(digits_workspace: DigitsWorkspace) -> tuple[OptimizedModel, CanaryPlan]:
    return plan_of(digits_workspace.manifest("outage", analysis={"consecutiveErrorLimit": ERROR_LIMIT}))


@pytest.fixture(scope="module")
def servers(
    digits_outputs: JobOutputs, canary: tuple[OptimizedModel, CanaryPlan], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CanaryServers]:
    with digits_servers(digits_outputs, canary[0], tmp_path_factory.mktemp("logs")) as servers:
        yield servers


@dataclass
class PrometheusOutage:
    """The canary loop's live-view callback: stops Prometheus once the rollout is at step 2;
    with ``restart``, starts it again once an interval has been judged Error."""

    prometheus: PrometheusServer
    timeline: Timeline
    restart: bool
    stopped_s: float | None = None
    restarted_s: float | None = None
    restart_took_s: float | None = None
    views: list[dict[str, Any]] = field(default_factory=list)

    def _due_for_restart(self, view: dict[str, Any]) -> bool:
        down = self.stopped_s is not None and self.restarted_s is None
        return self.restart and down and Outcome.ERROR in view["metrics"].values()

    def __call__(self, view: dict[str, Any]) -> None:
        self.views.append(view)
        if self.stopped_s is None and view["step"].startswith("2/"):
            self.prometheus.stop_process()
            self.stopped_s = self.timeline.now_s()
        elif (
            self.restart and self.stopped_s is not None and self.restarted_s is None and Outcome.ERROR in view["metrics"].values()
        ):
            began = self.timeline.now_s()
            self.prometheus.restart()
            self.prometheus.wait_scraped()
            self.restarted_s = self.timeline.now_s()
            self.restart_took_s = self.restarted_s - began


def _run_with_outage(servers: CanaryServers, plan: CanaryPlan, *, restart: bool) -> tuple[Any, PrometheusOutage]:
    timeline = Timeline()
    outage = PrometheusOutage(servers.prometheus, timeline, restart=restart)
    try:
        result = run_canary(servers, plan, timeline, outage)
    finally:
        if not servers.prometheus.is_running():
            servers.prometheus.restart()  # the next test shares these servers
    assert outage.stopped_s is not None, f"the rollout never reached step 2: {outage.views[-1:]}"
    return result, outage


def test_prometheus_down_past_the_error_limit_rolls_back(servers: CanaryServers, canary: tuple[Any, CanaryPlan]) -> None:
    result, outage = _run_with_outage(servers, canary[1], restart=False)
    assert outage.stopped_s is not None
    progress = result.run.progress
    assert progress.state is RolloutState.ROLLED_BACK, progress.reason
    assert f"could not be measured in {ERROR_LIMIT + 1} consecutive intervals" in progress.reason
    assert f"consecutiveErrorLimit {ERROR_LIMIT}" in progress.reason

    down = result.intervals_between(outage.stopped_s)
    outcomes = [m.outcome for interval in down for m in interval.measurements]
    assert len(down) == ERROR_LIMIT + 1, [(i.at_s, i.decision) for i in down]
    assert set(outcomes) == {Outcome.ERROR}, "every metric is Error while Prometheus is down, never a pass"
    assert [i.decision for i in down] == ["continue"] * ERROR_LIMIT + ["rollback"]
    assert result.weights_after(outage.stopped_s) == [0], "no step forward while down; then all traffic to the baseline"
    served = servers.nginx.served_split()
    assert served is not None and served.candidate == 0
    report_figure(
        "2-prometheus-down",
        error_intervals=len(down),
        outcome=progress.state.value,
        stopped_at_weight=down[0].weight,
        rollback_after_stop_s=round(down[-1].at_s - outage.stopped_s, 1),
        decision_time_s=progress.decision_time_s,
        failed_requests=result.failed_requests(),
        requests=len(result.load.records),
    )


def test_prometheus_back_before_the_limit_lets_the_canary_carry_on(
    servers: CanaryServers, canary: tuple[Any, CanaryPlan]
) -> None:
    result, outage = _run_with_outage(servers, canary[1], restart=True)
    assert outage.stopped_s is not None and outage.restarted_s is not None, "Prometheus was never restarted"
    progress = result.run.progress
    assert progress.state is RolloutState.PROMOTED, progress.reason

    down = result.intervals_between(outage.stopped_s, outage.restarted_s)
    after = result.intervals_between(outage.restarted_s)
    assert 1 <= len(down) <= ERROR_LIMIT
    assert {m.outcome for interval in down for m in interval.measurements} == {Outcome.ERROR}
    assert all(interval.decision == "continue" for interval in down)
    assert not any(t <= outage.restarted_s for t, _ in result.timeline.weights if t > outage.stopped_s), (
        "the weight moved while Prometheus was down"
    )
    assert after and Outcome.ERROR not in {m.outcome for interval in after for m in interval.measurements}
    assert after[-1].decision == "promote"
    report_figure(
        "2-prometheus-restarted",
        error_intervals=len(down),
        outcome=progress.state.value,
        prometheus_restart_s=round(outage.restart_took_s or 0.0, 1),
        promoted_after_restart_s=round(after[-1].at_s - outage.restarted_s, 1),
        decision_time_s=progress.decision_time_s,
        failed_requests=result.failed_requests(),
        requests=len(result.load.records),
    )


def _first_values(metrics: PrometheusMetrics, query: str, timeout_s: float = 30.0) -> list[float]:
    """The query's values once it has any: range queries end on a whole second, so a sample
    scraped a moment ago may not be in one yet."""
    return eventually(
        lambda: metrics.custom_values(query, "candidate", 30),
        timeout_s=timeout_s,
        interval_s=0.5,
        description=f"values of {query}",
    )


def test_a_restarted_prometheus_keeps_its_port_and_its_series() -> None:
    """What the outage test relies on: `restart` serves the series scraped before the stop."""
    registry = CollectorRegistry()
    counter = Counter("optiserve_test_requests", "requests", registry=registry)
    counter.inc(7)
    exporter, thread = start_http_server(free_port(), addr="127.0.0.1", registry=registry)
    try:
        with PrometheusServer({"candidate": f"127.0.0.1:{exporter.server_port}"}, scrape_interval_s=1.0) as prometheus:
            prometheus.wait_scraped()
            port = prometheus.port
            metrics = PrometheusMetrics(prometheus.url, TritonSelector("unused"), scrape_interval_s=1.0)
            query = 'optiserve_test_requests_total{variant="{{variant}}"}'
            before = _first_values(metrics, query)
            prometheus.stop_process()
            assert metrics.custom_values(query, "candidate", 30) is None, "a stopped Prometheus is a failed query"
            prometheus.restart()
            assert prometheus.port == port
            after = metrics.custom_values(query, "candidate", 60)
    finally:
        exporter.shutdown()
        thread.join(timeout=5)
    assert before and set(before) == {7.0}
    assert after is not None and len(after) >= len(before), "the series from before the stop are gone"
