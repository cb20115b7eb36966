"""The report of a local run (`optiserve run --report DIR`).

`RunReport` holds what the run measured and decided; `write_report` writes it to DIR as
``report.json``, ``report.md``, a self-contained ``report.html`` and the PNG charts
(``latency.png``, ``optimization.png``, ``cost.png``, each only when it has data to show);
`load_report` reads ``report.json`` back. The files are described in docs/local-mode.md.
"""

from __future__ import annotations

from optiserve.local.run_report.cost import DEFAULT_PRICE_PER_REPLICA_HOUR, cost_from_benchmark, cost_per_million
from optiserve.local.run_report.model import (
    RUN_REPORT_SCHEMA,
    CostReport,
    IntervalReport,
    LatencyPoint,
    LatencySeries,
    PhaseEntry,
    RunOutcome,
    RunReport,
    RunSummary,
    StepReport,
    StepResult,
    TrafficReport,
    VariantCost,
    VariantTraffic,
    WeightChange,
)
from optiserve.local.run_report.writer import RunReportError, load_report, write_report

__all__ = [
    "DEFAULT_PRICE_PER_REPLICA_HOUR",
    "RUN_REPORT_SCHEMA",
    "CostReport",
    "IntervalReport",
    "LatencyPoint",
    "LatencySeries",
    "PhaseEntry",
    "RunOutcome",
    "RunReport",
    "RunReportError",
    "RunSummary",
    "StepReport",
    "StepResult",
    "TrafficReport",
    "VariantCost",
    "VariantTraffic",
    "WeightChange",
    "cost_from_benchmark",
    "cost_per_million",
    "load_report",
    "write_report",
]
