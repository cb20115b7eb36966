"""Worse accuracy with better latency is stopped (issue 8, item 6).

Offline: the digits example's static INT8 candidate, calibrated on its calibration images dimmed
to a fiftieth of their brightness. Every activation range it learns is then far too narrow, the
served activations saturate, and the candidate is less accurate by construction on any CPU
(measured: 0.10 against 0.98, at about 5x PyTorch's speed), not by one CPU's INT8 rounding. The
example's own accuracy gate must refuse it: `optiserve run` fails at Validating, nothing is
published, nothing served. No speed gate is set, so speed cannot rescue it either.

Online: `optiserve run --inject accuracy-drop` serves the candidate with its outputs perturbed
(no slower: the noise costs microseconds), so only the comparator's agreement and accuracy can
tell. The canary must roll back on one of them, the report naming the metric, while latency is
never the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from optiserve.api.status import Phase
from optiserve.cli import main
from optiserve.domain.analysis import MetricKind, Outcome
from optiserve.local.job_cache import JobOutputs, request_digest
from optiserve.local.run_report import load_report
from tests.reliability.digits import DIGITS, DigitsWorkspace
from tests.reliability.figures import report_figure

pytestmark = pytest.mark.slow
DIMMED = 0.02
"""The calibration images' brightness, as a share of what the model sees."""


def miscalibrated(workspace: DigitsWorkspace, name: str) -> Path:
    """The digits example calibrated on dimmed images: its INT8 ranges are too narrow by construction."""
    images = np.load(DIGITS / "artifacts/calibration.npz")["image"]
    np.savez(workspace.root / "dimmed-calibration.npz", image=(images * DIMMED).astype(np.float32))
    manifest = workspace.manifest(name)
    document = yaml.safe_load(manifest.read_text())
    quantize = next(p for p in document["spec"]["optimization"]["passes"] if p["type"] == "quantize")
    quantize["calibration"]["datasetUri"] = "dimmed-calibration.npz"
    manifest.write_text(yaml.safe_dump(document, sort_keys=False))
    return manifest


def test_a_faster_but_less_accurate_candidate_is_stopped_by_the_offline_gate(
    digits_workspace: DigitsWorkspace, tmp_path: Path
) -> None:
    manifest = miscalibrated(digits_workspace, "digits-miscalibrated")
    allowed = yaml.safe_load(manifest.read_text())["spec"]["validation"]["maxDegradation"]
    cache, report_dir = tmp_path / "cache", tmp_path / "report"
    started = time.monotonic()
    code = main(["run", "-f", str(manifest), "--report", str(report_dir), "--job-cache", str(cache), "--no-live"])
    took_s = time.monotonic() - started

    report = load_report(report_dir)
    assert code == 1 and report.run.outcome.value == "failed"
    assert [entry.phase for entry in report.run.phases] == [Phase.PENDING, Phase.OPTIMIZING, Phase.VALIDATING, Phase.FAILED]
    assert "accuracy_drop" in report.run.reason, report.run.reason
    optimization = report.optimization
    assert optimization is not None and optimization.accuracy is not None
    accuracy = optimization.accuracy
    assert accuracy.candidate is not None and accuracy.baseline is not None
    assert accuracy.baseline - accuracy.candidate > 10 * allowed, "the premise: the candidate is far less accurate"
    gate = next(g for g in optimization.gates if g.name == "accuracy_drop")
    assert not gate.passed and gate.value is not None and gate.value > gate.threshold == allowed
    assert not [g for g in optimization.gates if g.name in ("speedup_p50", "faster_than_baseline")], "no speed gate"
    entry = cache / request_digest(digits_workspace.request(manifest))
    published = sorted(p.name for p in (entry / "candidate").iterdir())
    assert set(published) <= {"report.json", "logs"}, f"only the report and logs, no repository or manifest: {published}"
    assert not (entry / "baseline").exists()
    report_figure(
        "6a-offline-gate",
        speedup_p50=round(optimization.speedup_p50 or 0.0, 1),
        accuracy_baseline=round(accuracy.baseline, 4),
        accuracy_candidate=round(accuracy.candidate, 4),
        failed_gates=[g.name for g in optimization.gates if not g.passed],
        refused_after_s=round(took_s, 1),
    )


def test_an_accuracy_drop_online_is_rolled_back_on_agreement_or_accuracy(
    digits_workspace: DigitsWorkspace, digits_outputs: JobOutputs, tmp_path: Path
) -> None:
    manifest = digits_workspace.manifest("digits")  # the session's job output is reused from the cache
    report_dir = tmp_path / "report"
    args = ["run", "-f", str(manifest), "--report", str(report_dir), "--job-cache", str(digits_workspace.cache)]
    code = main([*args, "--inject", "accuracy-drop", "--no-live"])

    report = load_report(report_dir)
    assert code == 2 and report.run.outcome.value == "rolled_back", report.run.reason
    assert report.run.reason.startswith(("metric 'agreement' Failed", "metric 'accuracy' Failed")), report.run.reason
    measurements = [m for interval in report.intervals for m in interval.measurements]
    failed = {m.metric for m in measurements if m.outcome is Outcome.FAILED}
    assert failed and failed <= {"agreement", "accuracy"}, failed
    latency = [m for m in measurements if m.kind is MetricKind.LATENCY]
    assert all(m.outcome is not Outcome.FAILED for m in latency), "latency was never the reason"
    assert report.intervals[-1].decision.value == "rollback"
    assert report.latency_series.weight_changes[-1].weight == 0
    assert 100 not in [change.weight for change in report.latency_series.weight_changes]
    assert report.traffic.load_failed_during_transitions == 0
    last_latency = latency[-1] if latency else None
    report_figure(
        "6b-online-accuracy-drop",
        reason=report.run.reason[:120],
        decision_time_s=report.run.decision_time_s,
        weights=[change.weight for change in report.latency_series.weight_changes],
        latency_ms_baseline=last_latency.baseline_value if last_latency else None,
        latency_ms_candidate=last_latency.candidate_value if last_latency else None,
    )
