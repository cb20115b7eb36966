"""What the report says, section by section: a `Document` built from a `RunReport`."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from optiserve.domain.analysis import Measurement
from optiserve.local.run_report.document import Block, Document, Figure, Section, Table
from optiserve.local.run_report.model import CostReport, IntervalReport, RunReport, VariantTraffic
from optiserve_jobs.report import Report as OptimizationReport

LATENCY_CHART = "latency.png"
OPTIMIZATION_CHART = "optimization.png"
COST_CHART = "cost.png"

NONE = "—"
_MB = 1e6


def number(value: float | None, digits: int = 3) -> str:
    return NONE if value is None else f"{value:.{digits}g}"


def count(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def seconds(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f} s"


def _summary(report: RunReport) -> Section:
    run = report.run
    decision = (
        NONE
        if run.decision_time_s is None
        else f"{run.decision_time_s:.1f} s after the first canary traffic ({seconds(run.decided_at_s)} into the run)"
    )
    rows = (
        ("outcome", run.outcome.value),
        ("reason", run.reason),
        ("decision time", decision),
        ("failed requests during transitions", f"{report.traffic.load_failed_during_transitions} (required: 0)"),
        ("model", run.model),
        ("manifest", run.manifest),
        ("injected regression", run.inject or "none"),
        ("started", run.started_at.isoformat()),
        ("duration", seconds(run.duration_s)),
    )
    return Section("Summary", (Table(("item", "value"), rows),))


def _traffic_row(variant: str, traffic: VariantTraffic) -> tuple[str, ...]:
    return (
        variant,
        count(traffic.sent),
        count(traffic.ok),
        count(traffic.failed),
        count(traffic.server_requests),
        count(traffic.server_failures),
    )


def _traffic(report: RunReport) -> Section:
    headers = ("variant", "sent", "ok", "failed", "server requests", "server failures")
    rows = (_traffic_row("baseline", report.traffic.baseline), _traffic_row("candidate", report.traffic.candidate))
    note = "Sent, ok and failed are counted by the load generator; the server's counts come from Prometheus."
    unattributed = f"Failed requests that no variant answered: {report.traffic.load_failed_unattributed:,}."
    return Section("Requests", (note, Table(headers, rows), unattributed))


def _rollout(report: RunReport) -> Section:
    phases = Table(("phase", "entered at"), tuple((entry.phase.value, seconds(entry.started_s)) for entry in report.run.phases))
    steps = Table(
        ("step", "weight", "started", "ended", "result"),
        tuple(
            (str(step.index), f"{step.weight}%", seconds(step.started_s), seconds(step.ended_s), step.result.value)
            for step in report.steps
        ),
    )
    blocks: list[Block] = ["Times are seconds after the run started.", phases]
    blocks.append(steps if report.steps else "No rollout steps.")
    return Section("Phases and steps", tuple(blocks))


def _latest_measurements(intervals: Iterable[IntervalReport]) -> dict[str, tuple[float, Measurement]]:
    latest: dict[str, tuple[float, Measurement]] = {}
    for interval in intervals:
        for measurement in interval.measurements:
            latest[measurement.metric] = (interval.at_s, measurement)
    return latest


def _measurement_row(at_s: float, m: Measurement) -> tuple[str, ...]:
    return (
        m.metric,
        seconds(at_s),
        m.outcome.value,
        number(m.baseline_value),
        number(m.candidate_value),
        f"{m.baseline_samples:,} / {m.candidate_samples:,}",
        number(m.p_value, 2),
        number(m.effect_size),
        number(m.threshold),
        m.test or NONE,
        m.reason,
    )


def _interval_row(interval: IntervalReport) -> tuple[str, ...]:
    outcomes = ", ".join(f"{m.metric}: {m.outcome.value}" for m in interval.measurements) or "no measurements"
    return (seconds(interval.at_s), str(interval.step), f"{interval.weight}%", interval.decision.value, outcomes)


def _interval_tables(intervals: Sequence[IntervalReport]) -> tuple[Block, ...]:
    latest = _latest_measurements(intervals)
    headers: tuple[str, ...] = ("metric", "at", "outcome", "baseline", "candidate", "samples (baseline / candidate)")
    headers += ("p-value", "effect", "threshold", "test", "reason")
    return (
        "The last measurement of each metric:",
        Table(headers, tuple(_measurement_row(at_s, m) for at_s, m in latest.values())),
        "Every judged interval:",
        Table(("at", "step", "weight", "decision", "outcomes"), tuple(_interval_row(i) for i in intervals)),
    )


def _analysis(report: RunReport, charts: Collection[str]) -> Section:
    blocks: list[Block] = list(_interval_tables(report.intervals)) if report.intervals else ["No interval was judged."]
    if LATENCY_CHART in charts:
        caption = "Latency per variant over time (client-side per-second medians), weight steps, verdicts and the decision"
        blocks.append(Figure(LATENCY_CHART, caption))
    return Section("Canary analysis", tuple(blocks))


def _optimization_summary(optimization: OptimizationReport) -> Table:
    fidelity = optimization.fidelity
    accuracy = optimization.accuracy
    rows = (
        ("passed", "yes" if optimization.passed else f"no: {optimization.reason}"),
        ("speedup (p50)", number(optimization.speedup_p50)),
        ("size ratio", number(optimization.size_ratio)),
        ("fidelity", NONE if fidelity is None else f"{fidelity.metric}: mean {fidelity.mean:.4f}, worst {fidelity.min:.4f}"),
        ("accuracy", NONE if accuracy is None else f"baseline {accuracy.baseline:.4f}, candidate {accuracy.candidate:.4f}"),
        ("validation samples", count(optimization.validation_samples)),
        ("job time", seconds(optimization.seconds)),
    )
    return Table(("item", "value"), rows)


def _benchmark_rows(optimization: OptimizationReport) -> tuple[tuple[str, ...], ...]:
    if optimization.benchmark is None:
        return ()
    return tuple(
        (
            variant.name,
            variant.runtime,
            str(batch.batch_size),
            number(batch.p50_ms),
            number(batch.p95_ms),
            number(batch.throughput_per_s),
            f"{variant.model_bytes / _MB:.1f}",
            f"{variant.peak_rss_bytes / _MB:.0f}",
        )
        for variant in optimization.benchmark.variants
        for batch in variant.batches
    )


def _optimization(optimization: OptimizationReport | None, charts: Collection[str]) -> Section:
    if optimization is None:
        return Section("Optimization", ("The optimization job did not produce a report.",))
    passes = Table(
        ("pass", "status", "seconds", "detail"),
        tuple((p.name, p.status, f"{p.seconds:.1f}", p.detail) for p in optimization.passes),
    )
    gates = Table(
        ("gate", "passed", "value", "must be"),
        tuple(
            (g.name, "yes" if g.passed else "no", number(g.value, 4), f"{g.comparison} {g.threshold:g}")
            for g in optimization.gates
        ),
    )
    blocks: list[Block] = [_optimization_summary(optimization), passes, gates]
    if rows := _benchmark_rows(optimization):
        headers = ("variant", "runtime", "batch", "p50 ms", "p95 ms", "throughput /s", "model MB", "peak RSS MB")
        blocks.append(Table(headers, rows))
    if OPTIMIZATION_CHART in charts:
        blocks.append(Figure(OPTIMIZATION_CHART, "The optimization trade-off: p50 latency, model size and fidelity"))
    return Section("Optimization", tuple(blocks))


def _cost(cost: CostReport | None, charts: Collection[str]) -> Section:
    if cost is None:
        return Section("Cost", ("No benchmark to derive a cost from.",))
    rows = tuple(
        (
            name,
            variant.runtime,
            str(variant.replicas),
            number(variant.throughput_per_replica_s),
            f"{variant.cost_per_hour:.2f} {cost.currency}",
            f"{number(variant.cost_per_million)} {cost.currency}",
        )
        for name, variant in (("baseline", cost.baseline), ("candidate", cost.candidate))
    )
    headers = ("variant", "runtime", "replicas", "requests/s per replica", "cost per hour", "cost per million requests")
    blocks: list[Block] = [
        f"At {cost.price_per_replica_hour:g} {cost.currency} per replica-hour. Throughput: {cost.source}.",
        Table(headers, rows),
        f"The candidate costs {cost.ratio:.3g}x the baseline per request.",
    ]
    if COST_CHART in charts:
        blocks.append(Figure(COST_CHART, "Cost per million requests, baseline and candidate"))
    return Section("Cost", tuple(blocks))


def build_document(report: RunReport, charts: Collection[str]) -> Document:
    """The report's content; `charts` names the chart files that were drawn (others are left out)."""
    title = f"OptiServe run: {report.run.model} — {report.run.outcome.value}"
    return Document(
        title,
        (
            _summary(report),
            _traffic(report),
            _rollout(report),
            _analysis(report, charts),
            _optimization(report.optimization, charts),
            _cost(report.cost, charts),
        ),
    )
