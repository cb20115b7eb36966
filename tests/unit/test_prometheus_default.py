"""A spec that names no Prometheus is judged on the operator's (OPTISERVE_PROMETHEUS, the chart's prometheus.address).

Real pods found this: the CRD defaulted the spec's address to prometheus.monitoring, so the chart's
value never reached a canary, and every query of an in-cluster canary failed on name resolution.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from optiserve.api.crd import render_crd
from optiserve.api.spec import OptimizedModel
from optiserve.canary_reconcile import prometheus_metrics, with_prometheus

DIGITS = Path(__file__).resolve().parents[2] / "examples/digits/optimizedmodel.yaml"
OURS = "http://prometheus.observability:9090"


def _digits(address: str | None = None) -> OptimizedModel:
    document = yaml.safe_load(DIGITS.read_text())
    if address is not None:
        document["spec"]["rollout"]["analysis"]["prometheus"] = {"address": address}
    return OptimizedModel.model_validate(document)


def test_a_spec_without_an_address_takes_the_operators() -> None:
    filled = with_prometheus(_digits(), OURS)
    assert filled.spec.rollout.analysis.prometheus.address == OURS
    assert filled.spec.rollout.analysis.metrics == _digits().spec.rollout.analysis.metrics


def test_a_spec_that_names_one_keeps_it() -> None:
    mine = "https://prometheus.team-a:9443"
    assert with_prometheus(_digits(mine), OURS).spec.rollout.analysis.prometheus.address == mine


def test_the_metrics_backend_queries_the_filled_in_address() -> None:
    provider = prometheus_metrics(with_prometheus(_digits(), OURS), "ml")
    assert provider.client.url == OURS  # type: ignore[attr-defined]


def test_the_crd_sets_no_default_address_that_would_hide_the_operators() -> None:
    assert "prometheus.monitoring" not in render_crd()
