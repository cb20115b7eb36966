"""`optiserve run -f om.yaml --report DIR [--inject ...]`: arguments, the live display, the exit code.

Exit codes: 0 promoted; 2 rolled back or held (the canary did its job: the candidate was refused);
1 the run failed (bad manifest, a failed optimization gate, a process that would not start); 130
interrupted. The report is written in every case.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

EXIT_CODES = {"promoted": 0, "rolled_back": 2, "held": 2, "failed": 1}
DEFAULT_PRICE_PER_REPLICA_HOUR = 0.50
"""USD per replica-hour for the report's cost per million requests (a stand-in: pass your own)."""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--file", type=Path, required=True, help="the OptimizedModel manifest")
    parser.add_argument("--report", type=Path, required=True, help="report.json, report.md, report.html and charts go here")
    parser.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND=VALUE",
        help="make the candidate regress on purpose: latency=2x, errors=5%%, accuracy-drop (repeatable)",
    )
    parser.add_argument("--job-cache", type=Path, help="reuse the optimization output of an identical request kept here")
    parser.add_argument("--interval", help="override rollout.analysis.interval (e.g. 5s) for a quick look")
    parser.add_argument("--warmup", help="override rollout.analysis.warmup")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second of the load (default 20)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at most (default 4)")
    parser.add_argument(
        "--price-per-replica-hour",
        type=float,
        default=DEFAULT_PRICE_PER_REPLICA_HOUR,
        help=f"for the cost per million requests (default {DEFAULT_PRICE_PER_REPLICA_HOUR})",
    )
    parser.add_argument("--max-canary-seconds", type=float, default=900.0, help="give up if the canary has not decided")
    parser.add_argument("--no-live", action="store_true", help="plain progress lines instead of the live display")


def _live_table(view: dict[str, Any]) -> Table:
    table = Table(title=f"canary: {view['state']}", show_header=False, title_justify="left")
    table.add_row("elapsed", f"{view['elapsed_s']:.0f}s")
    table.add_row("step", f"{view['step']} (candidate weight {view['weight']}%)")
    for metric, outcome in view["metrics"].items():
        table.add_row(f"metric {metric}", outcome)
    for variant, (ok, failed) in view["requests"].items():
        table.add_row(f"requests {variant}", f"{ok} ok, {failed} failed")
    table.add_row("latest", view["reason"] or "-")
    return table


@contextmanager
def _display(console: Console, live: bool) -> Iterator[tuple[Callable[[str], None], Callable[[dict[str, Any]], None]]]:
    if not live:
        last: dict[str, str] = {}

        def plain(view: dict[str, Any]) -> None:
            line = f"step {view['step']} weight {view['weight']}% {view['state']}: {view['reason']}"
            if last.get("line") != line:
                console.print(line, highlight=False, soft_wrap=True)
                last["line"] = line

        yield (lambda message: console.print(message, highlight=False, soft_wrap=True)), plain
        return
    with Live(console=console, refresh_per_second=2, transient=False) as screen:
        yield (lambda message: screen.update(f"[bold]{message}[/bold]")), (lambda view: screen.update(_live_table(view)))


def _refuse_what_cannot_be_served(path: Path) -> None:
    """A text-generation model can be optimized (`optiserve optimize`) but not served yet: refused
    before anything starts (ValueError), naming the field and the command that does work."""
    from optiserve.api.manifest import load_manifest
    from optiserve.api.spec import Task

    if load_manifest(path).spec.model.task is Task.TEXT_GENERATION:
        raise ValueError(
            f"{path}: spec.model.task: text-generation models cannot be served and canaried yet; "
            f"`optiserve optimize -f {path} --out DIR` optimizes and publishes one"
        )


def run_command(args: argparse.Namespace) -> int:
    # Imported here: the CLI (and the operator image) loads this module only for its arguments.
    from optiserve.local.run import RunOptions, run_pipeline
    from optiserve.local.run_report import write_report
    from optiserve.local.run_result import build_run_report

    console = Console(stderr=True)
    from optiserve.local.inject import parse_injections

    parse_injections(args.inject)  # a bad --inject value is refused before anything starts (ValueError)
    _refuse_what_cannot_be_served(args.file)
    options = RunOptions(
        manifest=args.file,
        report_dir=args.report,
        inject=tuple(args.inject),
        job_cache=args.job_cache,
        interval=args.interval,
        warmup=args.warmup,
        rate_per_s=args.rate,
        concurrency=args.concurrency,
        price_per_replica_hour=args.price_per_replica_hour,
        max_canary_s=args.max_canary_seconds,
    )
    with _display(console, live=not args.no_live and console.is_terminal) as (progress, display):
        state = run_pipeline(options, progress=progress, display=display)
    report = build_run_report(state)
    written = write_report(report, options.report_dir)
    traffic = report.traffic
    console.print(
        f"{report.run.outcome.value}: {report.run.reason}\n"
        f"requests baseline {traffic.baseline.ok} ok / {traffic.baseline.failed} failed, "
        f"candidate {traffic.candidate.ok} ok / {traffic.candidate.failed} failed; "
        f"failed during transitions: {traffic.load_failed_during_transitions}\n"
        f"report: {', '.join(str(path) for path in written if path.suffix in ('.md', '.html', '.json'))}",
        highlight=False,
        soft_wrap=True,
    )
    summary = {"outcome": report.run.outcome.value, "decision_time_s": report.run.decision_time_s, "report": str(args.report)}
    sys.stdout.write(json.dumps(summary) + "\n")  # the machine-readable result
    interrupted = state.reason.startswith("interrupted")
    return 130 if interrupted else EXIT_CODES[state.outcome]
