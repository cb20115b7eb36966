"""Write a `RunReport` to a directory (JSON, Markdown, HTML, charts) and read its JSON back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from optiserve.local.run_report import charts
from optiserve.local.run_report.content import COST_CHART, LATENCY_CHART, OPTIMIZATION_CHART, build_document
from optiserve.local.run_report.document import to_html, to_markdown
from optiserve.local.run_report.model import RunReport
from optiserve_jobs.report import write_json_atomically

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"


class RunReportError(ValueError):
    """report.json is missing, not JSON, or not a valid run report; the message names the file and field."""


def _charts_to_draw(report: RunReport) -> dict[str, Callable[[Path], None]]:
    """The charts that have data to show, by file name."""
    drawers: dict[str, Callable[[Path], None]] = {}
    if not report.latency_series.empty or report.intervals:
        drawers[LATENCY_CHART] = lambda path: charts.render_latency(report, path)
    if (optimization := report.optimization) is not None and (optimization.benchmark or optimization.fidelity):
        drawers[OPTIMIZATION_CHART] = lambda path: charts.render_optimization(optimization, path)
    if (cost := report.cost) is not None:
        drawers[COST_CHART] = lambda path: charts.render_cost(cost, path)
    return drawers


def write_report(report: RunReport, out_dir: Path) -> list[Path]:
    """Write report.json, the charts, report.md and report.html into `out_dir`; return the paths written.

    Each file is written to a temporary name and renamed into place, so a reader never sees half a file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / REPORT_JSON
    write_json_atomically(json_path, report.model_dump_json(indent=2) + "\n")
    written = [json_path]
    for name, draw in _charts_to_draw(report).items():
        partial = out_dir / f".{name}.partial"
        draw(partial)
        written.append(partial.replace(out_dir / name))
    images = {path.name: path.read_bytes() for path in written[1:]}
    document = build_document(report, charts=images.keys())
    for name, text in ((REPORT_MARKDOWN, to_markdown(document)), (REPORT_HTML, to_html(document, images))):
        write_json_atomically(out_dir / name, text)
        written.append(out_dir / name)
    return written


def load_report(path: Path) -> RunReport:
    """Read a run report from its report.json, or from the directory that holds it."""
    file = path / REPORT_JSON if path.is_dir() else path
    try:
        return RunReport.model_validate_json(file.read_bytes())
    except OSError as e:
        raise RunReportError(f"{file}: cannot read the run report: {e.strerror}") from e
    except ValidationError as e:
        raise RunReportError(f"{file}: not a valid run report: {e}") from e
