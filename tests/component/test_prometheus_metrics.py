"""The Prometheus MetricsProvider against a real Prometheus scraping a real Triton server.

Counts must equal the requests this test sent (they come from Triton's counters); latency samples
must be positive; a stopped Prometheus must read as a backend failure (None), and a variant that
has no series as "no data" (zero counts, not found), never as an exception or a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optiserve.api.rollout import LatencySource
from optiserve.api.spec import TritonSpec
from optiserve.domain.analysis import MetricCheck, MetricKind, Outcome
from optiserve.domain.evidence import interval_windows, judge_latency_windows
from optiserve.local.prometheus import PrometheusServer
from optiserve.local.triton import TritonInstall, TritonServer
from optiserve.providers.prometheus import DURATION_METRIC, PrometheusMetrics, TritonSelector
from optiserve_jobs import repository
from optiserve_jobs.triton_python_model import DURATION_BUCKETS
from tests.component.triton_helpers import infer_http
from tests.support.eventually import eventually

T = TypeVar("T")

SENT_OK = 24
SENT_BAD = 3


@pytest.fixture(scope="module")
def serving(
    tmp_path_factory: pytest.TempPathFactory, triton_install: TritonInstall
) -> Iterator[tuple[TritonServer, PrometheusServer]]:
    out = tmp_path_factory.mktemp("repo")
    settings = repository.PublishSettings("tiny", TritonSpec(), [1, 8], 128, text_inputs=False)
    repository.publish(out, _lookup_model(out / "m.onnx"), settings)
    with TritonServer(out / "model_repository_python", install=triton_install) as triton:
        triton.wait_model_ready("tiny")
        with PrometheusServer({"candidate": f"127.0.0.1:{triton.metrics_port}"}, scrape_interval_s=1.0) as prometheus:
            prometheus.wait_scraped()
            rng = np.random.default_rng(0)
            for _ in range(SENT_OK):
                infer_http(triton.http_url, "tiny", {"idx": rng.integers(0, 10, size=(1, 1))}, "y")
            for _ in range(SENT_BAD):  # an index out of range fails inside the model: a counted failure
                with pytest.raises(Exception, match=r"(?i)indices|out of|range|bounds"):
                    infer_http(triton.http_url, "tiny", {"idx": np.full((1, 1), 99, dtype=np.int64)}, "y")
            yield triton, prometheus


def _lookup_model(path: Path) -> Path:
    """idx[N,1] int64 -> rows of a 10x4 table: an out-of-range index fails at run time, in the model."""
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["rows"]), helper.make_node("Flatten", ["rows"], ["y"], axis=1)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _scraped(read: Callable[[], T | None], accept: Callable[[T], bool], what: str) -> T:
    """`eventually`, until Prometheus has scraped what was sent (bounded; not a timing assertion)."""
    return eventually(read, timeout_s=30.0, interval_s=0.5, description=what, satisfied=accept)


def test_request_counts_match_what_was_sent(serving: tuple[TritonServer, PrometheusServer]) -> None:
    _, prometheus = serving
    metrics = PrometheusMetrics(prometheus.url, TritonSelector("tiny"), scrape_interval_s=1.0)
    counts = _scraped(
        lambda: metrics.request_counts("candidate", 600), lambda c: c.total >= SENT_OK + SENT_BAD, "every request counted"
    )
    assert counts is not None
    # increase() extrapolates to the window's edges; counts are within rounding of the truth
    assert round(counts.total) >= SENT_OK + SENT_BAD and round(counts.hits) >= SENT_BAD
    assert counts.hits / counts.total == pytest.approx(SENT_BAD / (SENT_OK + SENT_BAD), abs=0.05)


def test_latency_points_are_positive_milliseconds(serving: tuple[TritonServer, PrometheusServer]) -> None:
    _, prometheus = serving
    metrics = PrometheusMetrics(prometheus.url, TritonSelector("tiny"), scrape_interval_s=1.0)
    samples = _scraped(lambda: [v for _, v in metrics.latency_points("candidate", 120) or []], bool, "latency points")
    assert isinstance(samples, list) and samples
    assert all(0 < s < 10_000 for s in samples)


def test_the_model_exports_a_request_duration_histogram_of_its_answered_requests(
    serving: tuple[TritonServer, PrometheusServer],
) -> None:
    triton, prometheus = serving
    metrics = PrometheusMetrics(prometheus.url, TritonSelector("tiny"), scrape_interval_s=1.0)
    count_query = f'sum({DURATION_METRIC}_count{{model="tiny",variant="{{{{variant}}}}"}})'
    # Triton's model warm-up at load runs through the model too, so count from what is there now.
    before = _scraped(
        lambda: metrics.custom_values(count_query, "candidate", 30), lambda v: bool(v) and v[-1] >= SENT_OK, "the sent requests"
    )
    assert isinstance(before, list)
    for index in range(5):
        infer_http(triton.http_url, "tiny", {"idx": np.full((1, 1), index, dtype=np.int64)}, "y")
    with pytest.raises(Exception, match=r"(?i)indices|out of|range|bounds"):
        infer_http(triton.http_url, "tiny", {"idx": np.full((1, 1), 99, dtype=np.int64)}, "y")
    _scraped(
        lambda: metrics.custom_values(count_query, "candidate", 30),
        lambda v: bool(v) and v[-1] >= before[-1] + 5,
        "the five answered requests",
    )
    time.sleep(2.0)  # two more scrapes: a failed request observed by mistake would show by now
    counts = metrics.custom_values(count_query, "candidate", 30)
    assert isinstance(counts, list) and counts[-1] == before[-1] + 5  # the failed request is not observed
    buckets = metrics.custom_values(f'count({DURATION_METRIC}_bucket{{model="tiny",variant="{{{{variant}}}}"}})', "candidate", 30)
    assert buckets and buckets[-1] == len(DURATION_BUCKETS) + 1  # and +Inf
    # Only the candidate runs here: without a baseline histogram both are judged on Triton's means.
    histogram = PrometheusMetrics(
        prometheus.url, TritonSelector("tiny"), scrape_interval_s=1.0, latency_source=LatencySource.HISTOGRAM
    )
    assert not histogram.histograms_exported()
    assert histogram.latency_points("candidate", 120) == metrics.latency_points("candidate", 120)


def test_with_both_variants_exporting_it_the_histogram_median_is_judged_scrape_by_scrape(
    serving: tuple[TritonServer, PrometheusServer],
) -> None:
    """One Triton scraped as both variants: the same histogram under two labels, so every scrape's
    medians pair up exactly (an A/A canary on real parts)."""
    triton, _ = serving
    target = f"127.0.0.1:{triton.metrics_port}"
    with PrometheusServer({"baseline": target, "candidate": target}, scrape_interval_s=1.0) as prometheus:
        prometheus.wait_scraped()
        metrics = PrometheusMetrics(
            prometheus.url, TritonSelector("tiny"), scrape_interval_s=1.0, latency_source=LatencySource.HISTOGRAM
        )
        assert metrics.histograms_exported()
        deadline = time.monotonic() + 40.0
        points: dict[str, list[tuple[float, float]]] = {}
        while time.monotonic() < deadline and min((len(p) for p in points.values()), default=0) < 12:
            for index in range(4):
                infer_http(triton.http_url, "tiny", {"idx": np.full((1, 1), index, dtype=np.int64)}, "y")
            time.sleep(0.5)
            points = {v: metrics.latency_points(v, 30) or [] for v in ("baseline", "candidate")}
    assert len(points["candidate"]) >= 12, points
    assert all(0 < value < 10_000 for _, value in points["candidate"])
    shared = {t for t, _ in points["baseline"]} & {t for t, _ in points["candidate"]}
    assert len(shared) >= 10  # one grid for both variants
    check = MetricCheck(name="latency", kind=MetricKind.LATENCY, max_relative_increase=0.1)
    origin = min(t for t, _ in points["candidate"]) - 1.0
    canary = {v: [[t - origin, value] for t, value in p] for v, p in points.items()}
    end = max(t for t, _ in canary["candidate"])
    windows = interval_windows(end, warmup_s=0.0, interval_s=5.0, window_s=end, scrape_s=1.0)
    measurement = judge_latency_windows(check, canary["baseline"], canary["candidate"], windows)
    assert measurement.test == "paired-t-test" and measurement.outcome is Outcome.SUCCESSFUL, measurement.reason


def test_a_variant_without_series_is_no_data_not_an_error(serving: tuple[TritonServer, PrometheusServer]) -> None:
    _, prometheus = serving
    metrics = PrometheusMetrics(prometheus.url, TritonSelector("tiny"), scrape_interval_s=1.0)
    counts = metrics.request_counts("baseline", 120)
    assert counts is not None and counts.total == 0 and not counts.series_found
    assert metrics.latency_points("baseline", 120) == []


def test_stopped_prometheus_is_a_backend_failure(tmp_path: Path) -> None:
    with PrometheusServer({}, scrape_interval_s=1.0) as prometheus:
        url = prometheus.url
    metrics = PrometheusMetrics(url, TritonSelector("tiny"), timeout_s=2.0)
    assert metrics.request_counts("candidate", 60) is None
    assert metrics.latency_points("candidate", 60) is None
    assert metrics.comparator_counts("agreement", 60) is None
