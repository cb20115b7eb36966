"""The operator's metrics, read back through prometheus-client's own exposition format and parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from optiserve.kube.client import AdoptionError, ApiError, TransientError
from optiserve.observability import OperatorMetrics, error_kind, merged_status
from optiserve.status_writer import rfc3339

START = datetime(2026, 11, 18, 7, 6, 40, tzinfo=UTC)
T0 = START.timestamp()
T0_TEXT = rfc3339(START)


def later(seconds: float) -> str:
    return rfc3339(START + timedelta(seconds=seconds))


def samples(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, keyed by name and sorted labels."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: OperatorMetrics, series: str, **labels: str) -> float | None:
    return samples(metrics).get((series, tuple(sorted(labels.items()))))


def test_a_successful_reconcile_is_counted_and_timed() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling("change"):
        pass
    assert value(metrics, "optiserve_reconciles_total", trigger="change", result="success") == 1
    assert value(metrics, "optiserve_reconcile_duration_seconds_count", trigger="change") == 1
    assert metrics.total_reconciles() == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TransientError("GET x: HTTP 503"), "transient"),
        (AdoptionError("taken"), "adoption"),
        (ApiError("POST x: HTTP 403", 403), "api"),
        (KeyError("bug"), "unexpected"),
    ],
)
def test_a_failed_reconcile_counts_as_an_error_of_its_kind(error: Exception, kind: str) -> None:
    metrics = OperatorMetrics()
    with pytest.raises(type(error)), metrics.reconciling("timer"):
        raise error
    assert error_kind(error) == kind
    assert value(metrics, "optiserve_reconcile_errors_total", kind=kind) == 1
    assert value(metrics, "optiserve_reconciles_total", trigger="timer", result="error") == 1
    assert value(metrics, "optiserve_reconciles_total", trigger="timer", result="success") is None
    assert value(metrics, "optiserve_reconcile_duration_seconds_count", trigger="timer") == 1


def test_phases_are_counted_per_phase_and_shown_per_resource() -> None:
    metrics = OperatorMetrics()
    metrics.observe_status("ml", "a", {}, {"phase": "Optimizing", "phaseSince": T0_TEXT}, now=T0)
    metrics.observe_status("ml", "b", {}, {"phase": "Optimizing", "phaseSince": T0_TEXT}, now=T0)
    metrics.observe_status("ml", "c", {}, {"phase": "Failed", "phaseSince": T0_TEXT}, now=T0)
    assert value(metrics, "optiserve_models", phase="Optimizing") == 2
    assert value(metrics, "optiserve_models", phase="Failed") == 1
    assert value(metrics, "optiserve_models", phase="Promoted") == 0, "every phase is present, zero included"
    assert value(metrics, "optiserve_model_phase", namespace="ml", name="a", phase="Optimizing") == 1
    assert value(metrics, "optiserve_model_phase_since_timestamp_seconds", namespace="ml", name="a") == T0
    assert value(metrics, "optiserve_phase_transitions_total", from_phase="Pending", to_phase="Optimizing") is None


def test_a_phase_change_counts_a_transition_and_the_time_spent_from_phase_since() -> None:
    metrics = OperatorMetrics()
    previous = {"phase": "Optimizing", "phaseSince": T0_TEXT, "observedGeneration": 1}
    metrics.observe_status("ml", "a", previous, {"phase": "Deploying", "phaseSince": later(90)}, now=T0 + 90)
    assert value(metrics, "optiserve_phase_transitions_total", from_phase="Optimizing", to_phase="Deploying") == 1
    assert value(metrics, "optiserve_phase_duration_seconds_count", phase="Optimizing") == 1
    assert value(metrics, "optiserve_phase_duration_seconds_sum", phase="Optimizing") == 90
    assert value(metrics, "optiserve_phase_duration_seconds_bucket", phase="Optimizing", le="60.0") == 0
    assert value(metrics, "optiserve_phase_duration_seconds_bucket", phase="Optimizing", le="120.0") == 1
    assert value(metrics, "optiserve_model_phase", namespace="ml", name="a", phase="Deploying") == 1
    assert value(metrics, "optiserve_model_phase", namespace="ml", name="a", phase="Optimizing") is None


def test_the_same_phase_again_is_no_transition() -> None:
    metrics = OperatorMetrics()
    previous = {"phase": "Optimizing", "phaseSince": T0_TEXT}
    metrics.observe_status("ml", "a", previous, {"phase": "Optimizing", "phaseSince": T0_TEXT}, now=T0 + 5)
    assert value(metrics, "optiserve_phase_duration_seconds_count", phase="Optimizing") is None
    assert not [key for key in samples(metrics) if key[0] == "optiserve_phase_transitions_total"]


def test_a_restarted_phase_ends_the_previous_span_without_a_transition() -> None:
    metrics = OperatorMetrics()
    previous = {"phase": "Optimizing", "phaseSince": T0_TEXT, "observedGeneration": 1}
    metrics.observe_status("ml", "a", previous, {"phase": "Optimizing", "phaseSince": later(30)}, now=T0 + 30)
    assert value(metrics, "optiserve_phase_duration_seconds_sum", phase="Optimizing") == 30
    assert not [key for key in samples(metrics) if key[0] == "optiserve_phase_transitions_total"]


def test_the_canary_weight_follows_status_and_goes_when_the_canary_status_goes() -> None:
    metrics = OperatorMetrics()
    canary = {"phase": "Canary", "phaseSince": T0_TEXT, "canary": {"weight": 10, "step": 1}}
    metrics.observe_status("ml", "a", canary, {"canary": {"weight": 50, "step": 2}}, now=T0)
    assert value(metrics, "optiserve_canary_weight", namespace="ml", name="a") == 50
    metrics.observe_status("ml", "a", {**canary, "canary": {"weight": 50}}, {"phase": "Promoted", "canary": None}, now=T0)
    assert value(metrics, "optiserve_canary_weight", namespace="ml", name="a") is None


def test_a_forgotten_resource_leaves_no_series() -> None:
    metrics = OperatorMetrics()
    metrics.observe_status("ml", "a", {}, {"phase": "Canary", "phaseSince": T0_TEXT, "canary": {"weight": 10}}, now=T0)
    metrics.deleted("ml", "a")
    left = [key for key in samples(metrics) if ("name", "a") in key[1]]
    assert left == []
    assert value(metrics, "optiserve_models", phase="Canary") == 0
    assert value(metrics, "optiserve_deletions_total") == 1


def test_forgetting_again_counts_no_second_deletion() -> None:
    metrics = OperatorMetrics()
    metrics.observe_status("ml", "a", {}, {"phase": "Failed", "phaseSince": T0_TEXT}, now=T0)
    metrics.deleted("ml", "a")
    metrics.forget("ml", "a")
    assert value(metrics, "optiserve_deletions_total") == 1


def test_a_failed_reconcile_still_shows_the_resource_as_its_status_says() -> None:
    metrics = OperatorMetrics()
    metrics.track("ml", "a", {"phase": "Deploying", "phaseSince": T0_TEXT})
    assert value(metrics, "optiserve_model_phase", namespace="ml", name="a", phase="Deploying") == 1
    metrics.track("ml", "b", {})
    assert value(metrics, "optiserve_models", phase="Pending") == 0, "no status yet: not shown"


def test_two_operators_in_one_process_share_no_counters() -> None:
    first, second = OperatorMetrics(), OperatorMetrics()
    with first.reconciling("change"):
        pass
    assert second.total_reconciles() == 0


def test_merged_status_applies_a_json_merge_patch() -> None:
    previous: dict[str, Any] = {"phase": "Canary", "canary": {"weight": 10, "step": 1}, "message": "x"}
    merged = merged_status(previous, {"canary": {"weight": 50}, "message": None})
    assert merged == {"phase": "Canary", "canary": {"weight": 50, "step": 1}}


def _canary(judged_at: float, latency_outcome: str, candidate_ms: float) -> dict[str, Any]:
    measurements = [
        {
            "metric": "latency",
            "kind": "latency",
            "outcome": latency_outcome,
            "reason": "r",
            "baseline_value": 10.0,
            "candidate_value": candidate_ms,
            "p_value": 0.001,
            "threshold": 0.1,
        },
        {"metric": "agreement", "kind": "agreement", "outcome": "Successful", "reason": "r", "candidate_value": 0.998},
    ]
    return {"weight": 10, "step": 1, "measurements": measurements, "progress": {"last_interval_s": judged_at}}


def test_canary_measurements_are_exported_with_their_values_and_counted_once_per_interval() -> None:
    metrics = OperatorMetrics()
    before = {"phase": "Canary", "phaseSince": T0_TEXT}
    metrics.observe_status("ml", "a", before, {"canary": _canary(30.0, "Successful", 10.5)}, now=T0)
    first = {**before, "canary": _canary(30.0, "Successful", 10.5)}
    metrics.observe_status("ml", "a", first, {"message": "same interval, written again"}, now=T0)
    metrics.observe_status("ml", "a", first, {"canary": _canary(45.0, "Failed", 21.0)}, now=T0)

    labels = {"namespace": "ml", "name": "a"}
    assert value(metrics, "optiserve_canary_measured_value", **labels, metric="latency", variant="candidate") == 21.0
    assert value(metrics, "optiserve_canary_measured_value", **labels, metric="latency", variant="baseline") == 10.0
    assert value(metrics, "optiserve_canary_measured_value", **labels, metric="agreement", variant="candidate") == 0.998
    assert value(metrics, "optiserve_canary_p_value", **labels, metric="latency") == 0.001
    assert value(metrics, "optiserve_canary_threshold", **labels, metric="latency") == 0.1
    assert value(metrics, "optiserve_canary_outcome", **labels, metric="latency", outcome="Failed") == 1
    assert value(metrics, "optiserve_canary_outcome", **labels, metric="latency", outcome="Successful") is None
    # Two intervals judged: each metric counted once per interval, however often status was written.
    assert value(metrics, "optiserve_canary_measurements_total", **labels, metric="latency", outcome="Successful") == 1
    assert value(metrics, "optiserve_canary_measurements_total", **labels, metric="latency", outcome="Failed") == 1
    assert value(metrics, "optiserve_canary_measurements_total", **labels, metric="agreement", outcome="Successful") == 2
