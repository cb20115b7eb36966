"""`optiserve judge`: recorded series replayed through the same judge, from the manifest's analysis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from optiserve.api.rollout import AnalysisSpec, duration_seconds
from optiserve.cli import main
from optiserve.domain.analysis import MetricKind
from optiserve.domain.analysis_spec import analysis_plan
from tests.support.models import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples/minilm/optimizedmodel.yaml"


def _series(seed: int, latency_scale: float, error_rate: float, agreement: float, seconds: int = 120) -> dict[str, Any]:
    """One scrape per 5 s: latency samples, cumulative request/failure and comparator counters."""
    rng = np.random.default_rng(seed)
    series: dict[str, list[list[float]]] = {
        k: [] for k in ("latency", "errorRate.total", "errorRate.failures", "agreement.agreeing", "agreement.compared")
    }
    total = failures = agreeing = compared = 0
    for t in range(5, seconds + 1, 5):
        for value in rng.lognormal(np.log(5.0 * latency_scale), 0.2, size=20):
            series["latency"].append([t, float(value)])
        total += 100
        failures += int(rng.binomial(100, error_rate))
        compared += 50
        agreeing += int(rng.binomial(50, agreement))
        series["errorRate.total"].append([t, total])
        series["errorRate.failures"].append([t, failures])
        series["agreement.compared"].append([t, compared])
        series["agreement.agreeing"].append([t, agreeing])
    return series


def _judge(
    tmp_path: Path, baseline: dict[str, Any], candidate: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    (tmp_path / "b.json").write_text(json.dumps(baseline))
    (tmp_path / "c.json").write_text(json.dumps(candidate))
    code = main(["judge", "-f", str(EXAMPLE), "--baseline", str(tmp_path / "b.json"), "--candidate", str(tmp_path / "c.json")])
    assert code == 0, capsys.readouterr().err
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_healthy_candidate_is_promoted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _judge(tmp_path, _series(1, 1.0, 0.001, 1.0), _series(2, 1.0, 0.001, 0.999), capsys)
    assert result["verdict"] == "promote" and result["decision_time_s"] is not None
    assert {"latency", "errorRate", "agreement"} <= set(result["intervals"][-1]["outcomes"])


def test_twice_the_latency_rolls_back_within_a_minute(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _judge(tmp_path, _series(1, 1.0, 0.001, 1.0), _series(2, 2.0, 0.001, 1.0), capsys)
    assert result["verdict"] == "rollback" and result["metric"] == "latency"
    assert result["decision_time_s"] <= 60


def test_agreement_drop_rolls_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _judge(tmp_path, _series(1, 1.0, 0.001, 1.0), _series(2, 0.8, 0.001, 0.94), capsys)
    assert result["verdict"] == "rollback" and result["metric"] == "agreement"


def test_no_data_is_never_a_promotion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _judge(tmp_path, {}, {}, capsys)
    assert result["verdict"] == "hold"


def test_manifest_without_metrics_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["rollout"]["analysis"]["metrics"] = []
    (tmp_path / "om.yaml").write_text(yaml.safe_dump(document))
    (tmp_path / "s.json").write_text("{}")
    assert (
        main(
            [
                "judge",
                "-f",
                str(tmp_path / "om.yaml"),
                "--baseline",
                str(tmp_path / "s.json"),
                "--candidate",
                str(tmp_path / "s.json"),
            ]
        )
        == 1
    )
    assert "spec.rollout.analysis.metrics: no metrics to judge" in capsys.readouterr().err


def test_plan_from_the_example() -> None:
    plan = analysis_plan(AnalysisSpec.model_validate(yaml.safe_load(EXAMPLE.read_text())["spec"]["rollout"]["analysis"]))
    assert [c.kind for c in plan.checks] == [MetricKind.LATENCY, MetricKind.ERROR_RATE, MetricKind.AGREEMENT]
    assert plan.interval_s == 15.0 and plan.policy.warmup_s == 15.0 and plan.policy.failure_limit == 1


def test_bound_a_kind_does_not_take_is_refused_not_dropped() -> None:
    with pytest.raises(ValueError, match="min"):
        analysis_plan(AnalysisSpec.model_validate({"metrics": [{"name": "latency", "min": 1.0}]}))


@pytest.mark.parametrize(("text", "seconds"), [("15s", 15.0), ("1m30s", 90.0), ("250ms", 0.25), ("2h", 7200.0)])
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds("15 seconds")
