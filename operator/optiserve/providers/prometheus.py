"""`MetricsProvider` on Prometheus, with built-in queries for Triton and the comparator.

Latency is the mean per scrape interval from counter deltas, Δ`nv_inference_request_duration_us`
/ Δ`nv_inference_request_success`, so it works on every Triton (summaries and histograms are
optional there). Variants are told apart by a label (`variant` by default) that the scrape
configuration attaches to each Triton target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests.exceptions import RequestException
from urllib3.util.retry import Retry

from optiserve.api.rollout import LatencySource
from optiserve.providers.metrics import Counts

FAILURE_METRIC = "optiserve_request_failure_total"  # exported by optiserve_jobs.triton_python_model
DURATION_METRIC = "optiserve_request_duration_seconds"  # a histogram, from the same model
_BACKEND_ERRORS = (PrometheusApiClientException, RequestException, ValueError, KeyError)
_RETRY = Retry(total=1, backoff_factor=0, status_forcelist=(408, 429, 500, 502, 503, 504))
"""One immediate retry for a blip. The judge retries across intervals (Error, then the
consecutive-error limit), so a Prometheus that is down must fail fast: with the client's default
(three retries, back-off 0 + 2 + 4 s) every query took 6 s, about a minute per judged interval."""
_CLIENT_MARGIN_S = 2.0
"""The HTTP timeout is the query timeout plus this: Prometheus's own timeout answers first."""


@dataclass(frozen=True)
class TritonSelector:
    model: str
    variant_label: str = "variant"
    extra: str = ""
    """More label matchers, e.g. 'namespace="ml"'."""

    def matchers(self, variant: str) -> str:
        parts = [f'model="{self.model}"', f'{self.variant_label}="{variant}"'] + ([self.extra] if self.extra else [])
        return ",".join(parts)


def _duration(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


class PrometheusMetrics:
    def __init__(
        self,
        address: str,
        selector: TritonSelector,
        *,
        scrape_interval_s: float = 5.0,
        timeout_s: float = 10.0,
        latency_source: LatencySource = LatencySource.TRITON,
    ) -> None:
        # Without a client timeout, a Prometheus that accepts connections but never answers
        # (frozen, overloaded) would block the canary loop and the reconciler forever.
        self.client = PrometheusConnect(url=address, disable_ssl=True, retry=_RETRY, timeout=timeout_s + _CLIENT_MARGIN_S)
        self.selector = selector
        self.scrape_interval_s = scrape_interval_s
        self.timeout_s = timeout_s
        self.latency_source = latency_source
        self._histograms_exported: bool | None = None

    def _instant(self, query: str) -> list[float] | None:
        try:
            result = self.client.custom_query(query, params={"timeout": _duration(self.timeout_s)})
        except _BACKEND_ERRORS:
            return None
        return [float(item["value"][1]) for item in result]

    def _range_points(self, query: str, window_s: float) -> list[tuple[float, float]] | None:
        """A range query's points on a grid of the scrape interval that ends at a multiple of it:
        two queries made a moment apart get the same timestamps."""
        from datetime import datetime, timedelta, timezone

        step = max(1, math.ceil(self.scrape_interval_s))
        now = datetime.now(timezone.utc).timestamp()  # noqa: UP017 - the client compares naive and aware datetimes
        end = datetime.fromtimestamp(math.floor(now / step) * step, timezone.utc)  # noqa: UP017
        try:
            result = self.client.custom_query_range(
                query, start_time=end - timedelta(seconds=window_s), end_time=end, step=f"{step}s"
            )
        except _BACKEND_ERRORS:
            return None
        return [(float(t), float(value)) for series in result for t, value in series["values"]]

    def _range(self, query: str, window_s: float) -> list[float] | None:
        points = self._range_points(query, window_s)
        return None if points is None else [value for _, value in points]

    def _latency_query(self, variant: str) -> str:
        labels = self.selector.matchers(variant)
        step = _duration(self.scrape_interval_s * 2)
        return (
            f"sum(increase(nv_inference_request_duration_us{{{labels}}}[{step}])) / 1000"
            f" / sum(increase(nv_inference_request_success{{{labels}}}[{step}]))"
        )

    def _histogram_query(self, variant: str) -> str:
        labels = self.selector.matchers(variant)
        step = _duration(self.scrape_interval_s * 2)
        return f"histogram_quantile(0.5, sum by (le) (increase({DURATION_METRIC}_bucket{{{labels}}}[{step}]))) * 1000"

    def histograms_exported(self) -> bool:
        """Whether both variants export the model's histogram (else both are judged on Triton's
        means). Asked once per provider: the operator and local mode make one per judged interval."""
        if self._histograms_exported is None:
            self._histograms_exported = all(
                self._instant(f"count({DURATION_METRIC}_count{{{self.selector.matchers(variant)}}})")
                for variant in ("baseline", "candidate")
            )
        return self._histograms_exported

    def latency_points(self, variant: str, window_s: float) -> list[tuple[float, float]] | None:
        use_histogram = self.latency_source is LatencySource.HISTOGRAM and self.histograms_exported()
        query = self._histogram_query(variant) if use_histogram else self._latency_query(variant)
        points = self._range_points(query, window_s)
        return None if points is None else [(t, v) for t, v in points if math.isfinite(v)]  # 0/0: no requests then

    def _counts(self, hits_metric: str, total_query: str, labels: str, window_s: float) -> Counts | None:
        window = _duration(window_s)
        hits = self._instant(f"sum(increase({hits_metric}{{{labels}}}[{window}]))")
        total = self._instant(total_query.format(labels=labels, window=window))
        if hits is None or total is None:
            return None
        return Counts(hits=hits[0] if hits else 0.0, total=total[0] if total else 0.0, series_found=bool(total))

    def request_counts(self, variant: str, window_s: float) -> Counts | None:
        """Failures are Triton's own plus those the Python-backend model reports itself
        (Triton 2.51 counts a Python-backend error response as a success, so those are already
        inside the success count: total = success + Triton's failures)."""
        labels = self.selector.matchers(variant)
        window = _duration(window_s)
        triton_failures = f"sum(increase(nv_inference_request_failure{{{labels}}}[{window}]))"
        hits = self._instant(f"{triton_failures} + (sum(increase({FAILURE_METRIC}{{{labels}}}[{window}])) or vector(0))")
        total = self._instant(f"sum(increase(nv_inference_request_success{{{labels}}}[{window}])) + {triton_failures}")
        if hits is None or total is None:
            return None
        return Counts(hits=hits[0] if hits else 0.0, total=total[0] if total else 0.0, series_found=bool(total))

    def comparator_counts(self, metric: str, window_s: float) -> Counts | None:
        labels = f'model="{self.selector.model}",metric="{metric}"'
        total = "sum(increase(optiserve_comparator_compared_total{{{labels}}}[{window}]))"
        return self._counts("optiserve_comparator_agreeing_total", total, labels, window_s)

    def custom_values(self, query: str, variant: str, window_s: float) -> list[float] | None:
        return self._range(query.replace("{{variant}}", variant), window_s)
