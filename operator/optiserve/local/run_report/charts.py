"""The report's PNG charts, drawn with matplotlib's Agg canvas.

matplotlib is imported inside the functions: it is an optional dependency (the `local` extra),
and the operator, which only needs the models, must import this package without it. The charts
use the object-oriented API (a `Figure` on its own Agg canvas, no pyplot), so drawing them
touches no global state and needs no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from optiserve.domain.analysis import Outcome
from optiserve.local.run_report.model import CostReport, IntervalReport, RunOutcome, RunReport, RunSummary, WeightChange
from optiserve_jobs.report import BenchmarkReport
from optiserve_jobs.report import Report as OptimizationReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

VARIANT_COLORS = {"baseline": "#4c72b0", "candidate": "#dd8452"}
VERDICT_STYLES = (
    # (label, colour): an interval's marker takes the first that applies.
    ("interval: a metric Failed", "#d62728"),
    ("interval: a metric in Error", "#9467bd"),
    ("interval: Inconclusive or no data", "#7f7f7f"),
    ("interval: every metric Successful", "#2ca02c"),
)
DECISION_COLORS = {RunOutcome.PROMOTED: "#2ca02c", RunOutcome.ROLLED_BACK: "#d62728"}
_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _verdict_style(interval: IntervalReport) -> tuple[str, str]:
    outcomes = {m.outcome for m in interval.measurements}
    if Outcome.FAILED in outcomes:
        return VERDICT_STYLES[0]
    if Outcome.ERROR in outcomes:
        return VERDICT_STYLES[1]
    if not outcomes or Outcome.INCONCLUSIVE in outcomes:
        return VERDICT_STYLES[2]
    return VERDICT_STYLES[3]


def _shade_weight_steps(axes: Axes, changes: Sequence[WeightChange], end_s: float) -> None:
    """A band per weight, darker for more candidate traffic, and a dashed line where it changed."""
    ends = [change.t_s for change in changes[1:]] + [max(end_s, changes[-1].t_s)]
    for change, until in zip(changes, ends, strict=True):
        if change.weight:
            axes.axvspan(
                change.t_s, until, color=VARIANT_COLORS["candidate"], alpha=0.06 + 0.18 * change.weight / 100, linewidth=0
            )
        axes.axvline(change.t_s, color="#555555", linestyle="--", linewidth=0.8)
        axes.text(change.t_s, 0.02, f" {change.weight}%", transform=axes.get_xaxis_transform(), fontsize="small", color="#333333")


def _mark_verdicts(axes: Axes, intervals: Sequence[IntervalReport]) -> None:
    """One dot per judged interval near the top of the plot, coloured by its measurements."""
    for label, color in VERDICT_STYLES:
        times = [interval.at_s for interval in intervals if _verdict_style(interval)[1] == color]
        if times:
            axes.scatter(
                times, [0.95] * len(times), color=color, s=36, zorder=5, transform=axes.get_xaxis_transform(), label=label
            )


def _mark_decision(axes: Axes, run: RunSummary) -> None:
    decided_at = run.decided_at_s
    if decided_at is None:
        return
    color = DECISION_COLORS.get(run.outcome, "#555555")
    label = f"decision ({run.outcome.value}) at {run.decision_time_s:.0f} s of canary"
    axes.axvline(decided_at, color=color, linewidth=2.0, label=label)


def _latest_time(report: RunReport) -> float:
    series = report.latency_series
    times = [p.t_s for p in (*series.baseline, *series.candidate)] + [i.at_s for i in report.intervals]
    return max([*times, report.run.decided_at_s or 0.0, 0.0])


def render_latency(report: RunReport, path: Path) -> None:
    """Latency per variant over time, with the weight steps, a dot per judged interval and the decision."""
    figure = _new_figure(12, 5)
    axes = figure.add_subplot()
    series = report.latency_series
    for name, points in (("baseline", series.baseline), ("candidate", series.candidate)):
        if points:
            xs, ys = [p.t_s for p in points], [p.latency_ms for p in points]
            axes.plot(xs, ys, color=VARIANT_COLORS[name], linewidth=1.3, label=name)
    if series.weight_changes:
        _shade_weight_steps(axes, series.weight_changes, _latest_time(report))
    _mark_verdicts(axes, report.intervals)
    _mark_decision(axes, report.run)
    axes.set_ylim(bottom=0, top=max(axes.get_ylim()[1] * 1.12, 1.0))
    axes.set_xlabel("seconds since the run started (bands: candidate's traffic weight)")
    axes.set_ylabel("latency, ms (client-side per-second median)")
    axes.set_title(f"{report.run.model}: latency per variant — {report.run.outcome.value}")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png")


def _no_data(axes: Axes, title: str, text: str) -> None:
    axes.set_title(title)
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="#777777")
    axes.set_axis_off()


def _latency_panel(axes: Axes, benchmark: BenchmarkReport) -> None:
    sizes = sorted({batch.batch_size for variant in benchmark.variants for batch in variant.batches})
    width = 0.8 / max(len(benchmark.variants), 1)
    for offset, variant in enumerate(benchmark.variants):
        p50 = {batch.batch_size: batch.p50_ms for batch in variant.batches}
        xs = [i + offset * width for i, size in enumerate(sizes) if size in p50]
        heights = [p50[size] for size in sizes if size in p50]
        label, color = f"{variant.name} ({variant.runtime})", VARIANT_COLORS.get(variant.name)
        bars = axes.bar(xs, heights, width, label=label, color=color)
        axes.bar_label(bars, fmt="%.3g", fontsize="small")
    axes.set_xticks([i + width * (len(benchmark.variants) - 1) / 2 for i in range(len(sizes))], [f"batch {s}" for s in sizes])
    axes.set_ylabel("p50 latency, ms")
    axes.set_title("Latency (lower is better)")
    axes.legend(fontsize="small")


def _size_panel(axes: Axes, benchmark: BenchmarkReport) -> None:
    names = [variant.name for variant in benchmark.variants]
    sizes = [variant.model_bytes / 1e6 for variant in benchmark.variants]
    bars = axes.bar(names, sizes, color=[VARIANT_COLORS.get(name, "#888888") for name in names])
    axes.bar_label(bars, fmt="%.1f MB", fontsize="small")
    axes.set_ylabel("model size, MB")
    axes.set_title("Size (lower is better)")


def _fidelity_panel(axes: Axes, optimization: OptimizationReport) -> None:
    fidelity = optimization.fidelity
    if fidelity is None:
        _no_data(axes, "Fidelity", "not measured")
        return
    bars = axes.bar(["mean", "worst sample"], [fidelity.mean, fidelity.min], color=VARIANT_COLORS["candidate"])
    axes.bar_label(bars, fmt="%.4f", fontsize="small")
    thresholds = {gate.name: gate.threshold for gate in optimization.gates if gate.name in ("fidelity_mean", "fidelity_worst")}
    for name, threshold in thresholds.items():
        axes.axhline(threshold, color="#d62728", linestyle=":", linewidth=1.0, label=f"gate {name} >= {threshold:g}")
    lowest = min([fidelity.min, *thresholds.values()])
    axes.set_ylim(max(0.0, lowest - 0.25 * (1.0 - lowest) - 1e-3), 1.0 + 0.1 * (1.0 - lowest) + 1e-4)
    axes.set_ylabel(f"{fidelity.metric} vs the baseline (1 = identical)")
    axes.set_title("Fidelity (higher is better)")
    if thresholds:
        axes.legend(fontsize="small", loc="lower right")


def _passes_title(optimization: OptimizationReport) -> str:
    done = " → ".join(p.name for p in optimization.passes if p.status == "ok") or "no pass"
    others = ", ".join(f"{p.name} {p.status}" for p in optimization.passes if p.status != "ok")
    return f"{optimization.model}: {done}" + (f" ({others})" if others else "")


def render_optimization(optimization: OptimizationReport, path: Path) -> None:
    """The trade-off the passes made: p50 latency per batch size, model size and fidelity."""
    figure = _new_figure(13, 4.5)
    latency_axes, size_axes, fidelity_axes = figure.subplots(1, 3)
    if optimization.benchmark is None:
        _no_data(latency_axes, "Latency", "no benchmark")
        _no_data(size_axes, "Size", "no benchmark")
    else:
        _latency_panel(latency_axes, optimization.benchmark)
        _size_panel(size_axes, optimization.benchmark)
    _fidelity_panel(fidelity_axes, optimization)
    figure.suptitle(_passes_title(optimization))
    figure.savefig(path, format="png")


def render_cost(cost: CostReport, path: Path) -> None:
    """Cost per million requests, baseline against candidate."""
    figure = _new_figure(6, 4.5)
    axes = figure.add_subplot()
    names = ["baseline", "candidate"]
    values = [cost.baseline.cost_per_million, cost.candidate.cost_per_million]
    bars = axes.bar(names, values, color=[VARIANT_COLORS[name] for name in names])
    axes.bar_label(bars, labels=[f"{value:.3g} {cost.currency}" for value in values], fontsize="small")
    axes.set_ylim(0, max(values) * 1.15)
    axes.set_ylabel(f"{cost.currency} per million requests")
    axes.set_title(
        f"Cost per million requests at {cost.price_per_replica_hour:g} {cost.currency}/replica-hour\n"
        f"candidate = {cost.ratio:.2f}x baseline"
    )
    figure.savefig(path, format="png")
