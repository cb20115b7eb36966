"""The local run's report: the model validates, the files render, the JSON reads back."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.image
import pytest
from pydantic import ValidationError

from optiserve.api.status import Phase
from optiserve.domain.analysis import Decision, Measurement, MetricKind, Outcome
from optiserve.local.run_report import (
    IntervalReport,
    LatencyPoint,
    LatencySeries,
    PhaseEntry,
    RunOutcome,
    RunReport,
    RunReportError,
    RunSummary,
    StepReport,
    StepResult,
    TrafficReport,
    VariantTraffic,
    WeightChange,
    cost_from_benchmark,
    cost_per_million,
    load_report,
    write_report,
)
from optiserve_jobs.report import (
    BatchTiming,
    BenchmarkReport,
    Fidelity,
    Gate,
    MachineReport,
    PassReport,
    Report,
    VariantBenchmark,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHARTS = ("latency.png", "optimization.png", "cost.png")
XSS_REASON = "latency: the candidate is slower <script>alert('x')</script> & worse"


def benchmark(baseline_rps: dict[int, float], candidate_rps: dict[int, float]) -> BenchmarkReport:
    def variant(name: str, runtime: str, rps: dict[int, float], size: int) -> VariantBenchmark:
        batches = [
            BatchTiming(
                batch_size=b, p50_ms=1000 * b / r, p95_ms=1500 * b / r, p99_ms=2000 * b / r, throughput_per_s=r, samples=150
            )
            for b, r in rps.items()
        ]
        return VariantBenchmark(
            name=name, runtime=runtime, model_bytes=size, peak_rss_bytes=3 * size, model_rss_bytes=2 * size, batches=batches
        )

    return BenchmarkReport(
        threads=2,
        batch_sizes=sorted(baseline_rps),
        machine=MachineReport(cpu="Test CPU", cpu_flags=["avx2"], logical_cpus=2),
        variants=[
            variant("baseline", "pytorch", baseline_rps, 91_600_000),
            variant("candidate", "onnxruntime", candidate_rps, 23_000_000),
        ],
    )


def optimization_report() -> Report:
    return Report(
        model="minilm",
        passed=True,
        speedup_p50=6.2,
        size_ratio=0.25,
        fidelity=Fidelity(metric="cosine", mean=0.9965, min=0.9910, max_abs_error=0.031),
        gates=[
            Gate(name="fidelity_mean", passed=True, value=0.9965, threshold=0.995, comparison=">="),
            Gate(name="fidelity_worst", passed=True, value=0.9910, threshold=0.98, comparison=">="),
        ],
        passes=[
            PassReport(name="export", status="ok", seconds=4.4, detail="opset 17"),
            PassReport(name="quantize", status="ok", seconds=10.4, detail="int8 dynamic"),
            PassReport(name="tensorrt", status="skipped", seconds=0.0, detail="tensorrt is not installed"),
        ],
        benchmark=benchmark({1: 24.2, 8: 43.1}, {1: 150.9, 8: 223.6}),
        validation_samples=200,
        seconds=31.0,
    )


def measurement(metric: str, kind: MetricKind, outcome: Outcome, p_value: float, reason: str | None = None) -> Measurement:
    return Measurement(
        metric=metric,
        kind=kind,
        outcome=outcome,
        reason=reason or f"{metric}: {outcome.value.lower()}.",
        test="mann-whitney-u" if kind is MetricKind.LATENCY else "fisher-exact",
        baseline_value=12.5,
        candidate_value=11.75,
        baseline_samples=300,
        candidate_samples=120,
        statistic=4321.0,
        p_value=p_value,
        effect_size=-0.06,
        threshold=0.1,
    )


def latency(start: float, end: float, ms: float) -> tuple[LatencyPoint, ...]:
    return tuple(LatencyPoint(t_s=float(t), latency_ms=ms + (t % 3)) for t in range(int(start), int(end)))


def promoted_run() -> RunReport:
    steps = (
        StepReport(index=1, weight=10, started_s=40.0, ended_s=55.0, result=StepResult.PASSED),
        StepReport(index=2, weight=50, started_s=55.0, ended_s=70.0, result=StepResult.PASSED),
        StepReport(index=3, weight=100, started_s=70.0, ended_s=85.0, result=StepResult.PASSED),
    )
    intervals = tuple(
        IntervalReport(
            at_s=40.0 + 5 * k,
            step=1 + (k - 1) // 3,
            weight=(10, 50, 100)[(k - 1) // 3],
            decision=Decision.PROMOTE if k % 3 == 0 else Decision.CONTINUE,
            measurements=(
                measurement("latency", MetricKind.LATENCY, Outcome.SUCCESSFUL, 0.5 + k / 100),
                measurement("errorRate", MetricKind.ERROR_RATE, Outcome.SUCCESSFUL, 0.9),
                measurement("agreement", MetricKind.AGREEMENT, Outcome.INCONCLUSIVE if k == 1 else Outcome.SUCCESSFUL, 0.2),
            ),
        )
        for k in range(1, 10)
    )
    optimization = optimization_report()
    assert optimization.benchmark is not None
    return RunReport(
        run=RunSummary(
            model="minilm",
            manifest="examples/minilm/optimizedmodel.yaml",
            started_at=datetime(2026, 11, 22, 10, 0, tzinfo=UTC),
            duration_s=90.0,
            outcome=RunOutcome.PROMOTED,
            reason="Every metric passed at every step; the candidate now serves all traffic.",
            canary_started_s=40.0,
            decision_time_s=45.0,
            phases=(
                PhaseEntry(phase=Phase.PENDING, started_s=0.0),
                PhaseEntry(phase=Phase.OPTIMIZING, started_s=0.5),
                PhaseEntry(phase=Phase.VALIDATING, started_s=31.5),
                PhaseEntry(phase=Phase.DEPLOYING, started_s=32.0),
                PhaseEntry(phase=Phase.CANARY, started_s=40.0),
                PhaseEntry(phase=Phase.PROMOTED, started_s=85.0),
            ),
        ),
        steps=steps,
        intervals=intervals,
        traffic=TrafficReport(
            baseline=VariantTraffic(sent=12_345, ok=12_340, failed=5, server_requests=12_344, server_failures=5),
            candidate=VariantTraffic(sent=6_789, ok=6_789, failed=0, server_requests=6_789, server_failures=0),
            load_failed_during_transitions=0,
        ),
        latency_series=LatencySeries(
            baseline=latency(35, 88, 20.0),
            candidate=latency(40, 88, 8.0),
            weight_changes=(
                WeightChange(t_s=40.0, weight=10),
                WeightChange(t_s=55.0, weight=50),
                WeightChange(t_s=70.0, weight=100),
            ),
        ),
        optimization=optimization,
        cost=cost_from_benchmark(optimization.benchmark, price_per_replica_hour=0.5, baseline_replicas=2, candidate_replicas=1),
    )


def rolled_back_run() -> RunReport:
    promoted = promoted_run()
    steps = (
        StepReport(index=1, weight=10, started_s=40.0, ended_s=50.0, result=StepResult.ROLLED_BACK),
        StepReport(index=2, weight=50, result=StepResult.NOT_REACHED),
        StepReport(index=3, weight=100, result=StepResult.NOT_REACHED),
    )
    intervals = (
        IntervalReport(
            at_s=45.0,
            step=1,
            weight=10,
            decision=Decision.CONTINUE,
            measurements=(measurement("latency", MetricKind.LATENCY, Outcome.FAILED, 0.004),),
        ),
        IntervalReport(
            at_s=50.0,
            step=1,
            weight=10,
            decision=Decision.ROLLBACK,
            measurements=(measurement("latency", MetricKind.LATENCY, Outcome.FAILED, 0.0007, reason=XSS_REASON),),
        ),
    )
    run = promoted.run.model_copy(
        update={
            "inject": "latency=2x",
            "outcome": RunOutcome.ROLLED_BACK,
            "reason": "latency failed twice <script>alert(1)</script>",
            "decision_time_s": 10.0,
            "phases": (*promoted.run.phases[:-1], PhaseEntry(phase=Phase.ROLLED_BACK, started_s=50.0)),
        }
    )
    return promoted.model_copy(
        update={
            "run": run,
            "steps": steps,
            "intervals": intervals,
            "traffic": TrafficReport(
                baseline=VariantTraffic(sent=4_321, ok=4_321, failed=0),
                candidate=VariantTraffic(sent=432, ok=431, failed=1, server_requests=432, server_failures=1),
                load_failed_during_transitions=0,
                load_failed_unattributed=3,
            ),
            "latency_series": LatencySeries(
                baseline=latency(35, 60, 20.0),
                candidate=latency(40, 50, 40.0),
                weight_changes=(WeightChange(t_s=40.0, weight=10), WeightChange(t_s=50.0, weight=0)),
            ),
        }
    )


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunReport, Path, list[Path]]:
    report, out = promoted_run(), tmp_path_factory.mktemp("promoted")
    return report, out, write_report(report, out)


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunReport, Path, list[Path]]:
    report, out = rolled_back_run(), tmp_path_factory.mktemp("rolled_back") / "nested"
    return report, out, write_report(report, out)


def test_every_file_is_written_and_nothing_else(promoted: tuple[RunReport, Path, list[Path]]) -> None:
    _, out, written = promoted
    expected = {"report.json", "report.md", "report.html", *CHARTS}
    assert {path.name for path in written} == expected
    assert {path.name for path in out.iterdir()} == expected  # no partial files left behind


@pytest.mark.parametrize("chart", CHARTS)
def test_charts_are_real_pngs(promoted: tuple[RunReport, Path, list[Path]], chart: str) -> None:
    data = (promoted[1] / chart).read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000
    pixels = matplotlib.image.imread(promoted[1] / chart)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels.std() > 0.01  # something is drawn, not a blank canvas


def test_json_round_trips(promoted: tuple[RunReport, Path, list[Path]], rolled_back: tuple[RunReport, Path, list[Path]]) -> None:
    for report, out, _ in (promoted, rolled_back):
        assert load_report(out / "report.json") == report
        assert load_report(out) == report


def _counts(report: RunReport) -> list[str]:
    traffic = (report.traffic.baseline, report.traffic.candidate)
    return [f"{n:,}" for variant in traffic for n in (variant.sent, variant.ok, variant.failed)]


def _step_rows(report: RunReport) -> list[str]:
    return [f"| {step.index} | {step.weight}% |" for step in report.steps]


def test_markdown_has_outcome_counts_steps_and_metrics(promoted: tuple[RunReport, Path, list[Path]]) -> None:
    report, out, _ = promoted
    markdown = (out / "report.md").read_text()
    assert "# OptiServe run: minilm — promoted" in markdown
    assert "| outcome | promoted |" in markdown
    assert "| decision time | 45.0 s after the first canary traffic (85.0 s into the run) |" in markdown
    assert "| failed requests during transitions | 0 (required: 0) |" in markdown
    for cell in _counts(report):
        assert f"| {cell} |" in markdown
    assert "| baseline | 12,345 | 12,340 | 5 | 12,344 | 5 |" in markdown
    for row, step in zip(_step_rows(report), report.steps, strict=True):
        assert row in markdown and f"{row} {step.started_s:.1f} s | {step.ended_s:.1f} s | passed |" in markdown
    # the last measurement of each metric, with its p-value and threshold
    assert "| latency | 85.0 s | Successful | 12.5 | 11.8 | 300 / 120 | 0.59 | -0.06 | 0.1 | mann-whitney-u |" in markdown
    for metric in ("errorRate", "agreement"):
        assert f"| {metric} | 85.0 s | Successful |" in markdown
    for name in ("export", "quantize", "tensorrt"):
        assert f"| {name} |" in markdown
    for chart in CHARTS:
        assert f"]({chart})" in markdown


def test_markdown_has_the_cost_table(promoted: tuple[RunReport, Path, list[Path]]) -> None:
    report, out, _ = promoted
    markdown = (out / "report.md").read_text()
    assert report.cost is not None
    assert f"| baseline | pytorch | 2 | 43.1 | 1.00 USD | {report.cost.baseline.cost_per_million:.3g} USD |" in markdown
    assert f"| candidate | onnxruntime | 1 | 224 | 0.50 USD | {report.cost.candidate.cost_per_million:.3g} USD |" in markdown
    assert "throughput at batch 8" in markdown


def _html_text(html: str) -> str:
    return re.sub(r"<[^>]+>", "|", html)


def test_html_is_self_contained_and_says_the_same(promoted: tuple[RunReport, Path, list[Path]]) -> None:
    report, out, _ = promoted
    html = (out / "report.html").read_text()
    assert "<link" not in html and "<script" not in html
    assert not re.search(r"(src|href)=\"(?!data:)", html)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert [base64.b64decode(image) for image in images] == [(out / chart).read_bytes() for chart in CHARTS]
    text = _html_text(html)
    assert "|outcome||promoted|" in text
    for cell in _counts(report):
        assert f"|{cell}|" in text
    for step in report.steps:
        assert f"|{step.index}||{step.weight}%||{step.started_s:.1f} s||{step.ended_s:.1f} s||passed|" in text
    for metric in ("latency", "errorRate", "agreement"):
        assert f"|{metric}||85.0 s||Successful|" in text


def test_rolled_back_run_reports_its_steps_and_failures(rolled_back: tuple[RunReport, Path, list[Path]]) -> None:
    _, out, _ = rolled_back
    markdown = (out / "report.md").read_text()
    assert "| outcome | rolled_back |" in markdown
    assert "| injected regression | latency=2x |" in markdown
    assert "| 1 | 10% | 40.0 s | 50.0 s | rolled_back |" in markdown
    assert "| 2 | 50% | — | — | not_reached |" in markdown
    assert "| 3 | 100% | — | — | not_reached |" in markdown
    assert "| candidate | 432 | 431 | 1 | 432 | 1 |" in markdown
    assert "| baseline | 4,321 | 4,321 | 0 | — | — |" in markdown
    assert "Failed requests that no variant answered: 3." in markdown
    assert "| latency | 50.0 s | Failed | 12.5 | 11.8 | 300 / 120 | 0.0007 |" in markdown
    assert "| 50.0 s | 1 | 10% | rollback | latency: Failed |" in markdown


def test_text_from_the_run_is_escaped(rolled_back: tuple[RunReport, Path, list[Path]]) -> None:
    _, out, _ = rolled_back
    html = (out / "report.html").read_text()
    assert "<script" not in html
    assert "latency failed twice &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; worse" in html
    markdown = (out / "report.md").read_text()
    assert not re.search(r"(?<!\\)<", markdown)  # every < is escaped, so no renderer sees a tag
    assert r"latency failed twice \<script\>alert(1)\</script\>" in markdown


def test_a_run_that_failed_early_writes_only_what_it_has(tmp_path: Path) -> None:
    report = RunReport(
        run=RunSummary(
            model="digits",
            manifest="om.yaml",
            started_at=datetime(2026, 11, 22, tzinfo=UTC),
            duration_s=3.0,
            outcome=RunOutcome.FAILED,
            reason="spec.model.uri: file not found.",
            phases=(PhaseEntry(phase=Phase.PENDING, started_s=0.0), PhaseEntry(phase=Phase.FAILED, started_s=2.5)),
        ),
        traffic=TrafficReport(
            baseline=VariantTraffic(sent=0, ok=0, failed=0),
            candidate=VariantTraffic(sent=0, ok=0, failed=0),
            load_failed_during_transitions=0,
        ),
    )
    written = write_report(report, tmp_path)
    assert [path.name for path in written] == ["report.json", "report.md", "report.html"]
    markdown = (tmp_path / "report.md").read_text()
    for line in ("No interval was judged.", "The optimization job did not produce a report.", "No rollout steps."):
        assert line in markdown
    assert "| decision time | — |" in markdown
    assert load_report(tmp_path) == report


def test_cost_per_million_from_known_throughput() -> None:
    # 0.50 per hour for 50 requests/s: 180,000 requests per hour, so 2.777... per million
    assert cost_per_million(0.5, 50.0) == pytest.approx(0.5 / 180_000 * 1e6)
    assert cost_per_million(0.5, 50.0) == pytest.approx(2.7777778)
    cost = cost_from_benchmark(
        benchmark({1: 25.0, 8: 40.0}, {1: 150.0, 8: 200.0}), price_per_replica_hour=0.9, baseline_replicas=3
    )
    assert cost.baseline.throughput_per_replica_s == 40.0  # the largest batch both variants ran
    assert cost.baseline.cost_per_million == pytest.approx(0.9 / (40 * 3600) * 1e6)  # 6.25
    assert cost.candidate.cost_per_million == pytest.approx(1.25)
    assert cost.ratio == pytest.approx(0.2)
    assert cost.baseline.cost_per_hour == pytest.approx(2.7) and cost.candidate.cost_per_hour == pytest.approx(0.9)
    assert "batch 8" in cost.source and "2 threads" in cost.source


def test_cost_at_a_chosen_batch_size() -> None:
    cost = cost_from_benchmark(benchmark({1: 25.0, 8: 40.0}, {1: 150.0, 8: 200.0}), batch_size=1)
    assert cost.price_per_replica_hour == 0.5
    assert cost.baseline.cost_per_million == pytest.approx(0.5 / (25 * 3600) * 1e6)
    assert cost.ratio == pytest.approx(25 / 150)
    assert "batch 1" in cost.source


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 4}, "batch_size"),
        ({"price_per_replica_hour": 0.0}, "price_per_replica_hour"),
        ({"price_per_replica_hour": float("nan")}, "price_per_replica_hour"),
        ({"candidate_replicas": 0}, "candidate_replicas"),
    ],
)
def test_bad_cost_input_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        cost_from_benchmark(benchmark({1: 25.0, 8: 40.0}, {1: 150.0, 8: 200.0}), **kwargs)  # type: ignore[arg-type]


def test_cost_needs_a_batch_size_both_variants_ran() -> None:
    with pytest.raises(ValueError, match="share no benchmarked batch size"):
        cost_from_benchmark(benchmark({1: 25.0}, {8: 200.0}))


def _with(report: RunReport, **update: object) -> dict[str, object]:
    return {**report.model_dump(), **update}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: _with(r, steps=[s.model_dump() for s in r.steps[1:]]), r"steps: indices must be 1, 2, \.\.\."),
        (lambda r: _with(r, intervals=[{**r.intervals[0].model_dump(), "step": 7}]), r"intervals\[0\]\.step: 7"),
        (lambda r: _with(r, intervals=[i.model_dump() for i in reversed(r.intervals)]), "intervals: must be in time order"),
        (lambda r: _with(r, run={**r.run.model_dump(), "canary_started_s": None}), "canary_started_s: is required"),
        (lambda r: _with(r, run={**r.run.model_dump(), "outcome": "rolled_back"}), "phases: a run with outcome rolled_back"),
        (lambda r: _with(r, run={**r.run.model_dump(), "outcome": "won"}), r"run\.outcome"),
        (lambda r: _with(r, run={**r.run.model_dump(), "started_at": "2026-11-22T10:00:00"}), r"run\.started_at"),
        (
            lambda r: _with(r, traffic={**r.traffic.model_dump(), "candidate": {"sent": 5, "ok": 5, "failed": 1}}),
            r"ok \+ failed: 5 \+ 1 is more than sent \(5\)",
        ),
        (lambda r: _with(r, steps=[{**r.steps[0].model_dump(), "result": "not_reached"}]), r"steps\[1\]\.started_s"),
        (lambda r: _with(r, latency_series={"baseline": [{"t_s": 1.0, "latency_ms": float("inf")}]}), "latency_ms"),
        (lambda r: _with(r, surprise=1), "surprise"),
    ],
)
def test_invalid_reports_are_refused_naming_the_field(change: object, message: str) -> None:
    assert callable(change)
    with pytest.raises(ValidationError, match=message):
        RunReport.model_validate(change(promoted_run()))


def test_load_report_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "report.json"
    bad.write_text(promoted_run().model_dump_json().replace('"duration_s":90.0', '"duration_s":-1'))
    with pytest.raises(RunReportError, match=r"(?s)report\.json: not a valid run report.*run\.duration_s"):
        load_report(bad)
    with pytest.raises(RunReportError, match="cannot read the run report"):
        load_report(tmp_path / "missing.json")
