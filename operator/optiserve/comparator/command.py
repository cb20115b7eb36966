"""`optiserve comparator`: arguments, their checks (each error names its flag), and the run.

Only the standard library at import time: the parser is built on every `optiserve` call.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optiserve.comparator.service import ComparatorSettings

TASKS = ("classification", "embedding", "generic")


def add_comparator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", required=True, metavar="URL", help="baseline Triton HTTP address (http://HOST:PORT)")
    parser.add_argument("--candidate", required=True, metavar="URL", help="candidate Triton HTTP address (http://HOST:PORT)")
    parser.add_argument("--model", required=True, metavar="NAME", help="Triton model name (also the metrics' model label)")
    parser.add_argument("--golden", required=True, type=Path, metavar="FILE", help="golden.jsonl published by the job")
    parser.add_argument("--output", metavar="NAME", help="output tensor to compare (default: the first the model returns)")
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="classification: agreement is top-1 equality; otherwise cosine >= --threshold "
        "(default: classification when the golden set has labels)",
    )
    parser.add_argument(
        "--threshold", type=float, help="lowest per-sample cosine that agrees (default 0.99 = 1 - default maxDegradation)"
    )
    parser.add_argument("--interval", default="1s", help="time between probe rounds (default 1s)")
    parser.add_argument("--sample-size", type=int, default=8, metavar="N", help="golden samples per round (default 8)")
    parser.add_argument("--timeout", default="5s", help="per-request timeout; a late answer counts as an error (default 5s)")
    parser.add_argument("--concurrency", type=int, default=4, metavar="N", help="samples in flight at once (default 4)")
    parser.add_argument("--port", type=int, default=8080, help="port of /metrics and /healthz (default 8080; 0 picks one)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104 - for Prometheus
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _duration(flag: str, text: str) -> float:
    from optiserve.api.rollout import duration_seconds

    try:
        seconds = duration_seconds(text)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from e
    if seconds <= 0:
        raise ValueError(f"{flag}: must be positive, got {text!r}")
    return seconds


def _check_ranges(args: argparse.Namespace, threshold: float) -> None:
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold: must be within [-1, 1] (a cosine), got {threshold}")
    for flag, value in (("--sample-size", args.sample_size), ("--concurrency", args.concurrency)):
        if value < 1:
            raise ValueError(f"{flag}: must be at least 1, got {value}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: must be within 0..65535, got {args.port}")
    if not args.model:
        raise ValueError("--model: must not be empty")


def settings_from_args(args: argparse.Namespace) -> ComparatorSettings:
    """The settings the flags describe; a ValueError names the first bad flag."""
    from optiserve.api.spec import Task
    from optiserve.comparator.compare import DEFAULT_THRESHOLD
    from optiserve.comparator.probe import ProbeSettings
    from optiserve.comparator.service import ComparatorSettings
    from optiserve.comparator.triton import split_url

    for flag, url in (("--baseline", args.baseline), ("--candidate", args.candidate)):
        try:
            split_url(url)
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from e
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    _check_ranges(args, threshold)
    probe = ProbeSettings(
        interval_s=_duration("--interval", args.interval),
        sample_size=args.sample_size,
        timeout_s=_duration("--timeout", args.timeout),
        concurrency=args.concurrency,
    )
    return ComparatorSettings(
        baseline_url=args.baseline,
        candidate_url=args.candidate,
        model=args.model,
        golden=args.golden,
        output=args.output,
        task=Task(args.task) if args.task else None,
        threshold=threshold,
        probe=probe,
        host=args.host,
        port=args.port,
    )


def run_comparator_command(args: argparse.Namespace, report_errors: Callable[[list[str]], None]) -> int:
    """Run until SIGTERM/SIGINT (exit 0); a bad flag or golden set is reported by name, exit 1."""
    from optiserve.comparator.service import run_comparator
    from optiserve.golden import GoldenSetError, load_golden

    try:
        settings = settings_from_args(args)
        golden = load_golden(settings.golden)
    except ValueError as e:  # GoldenSetError is one, and names the line and field
        report_errors([f"--golden: {e}" if isinstance(e, GoldenSetError) else str(e)])
        return 1
    except OSError as e:
        report_errors([f"--golden: {args.golden}: {e.strerror or e}"])
        return 1
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run_comparator(settings, golden)
    except OSError as e:  # only the listening socket can fail here
        report_errors([f"--port: cannot listen on {args.host}:{args.port}: {e.strerror or e}"])
        return 1
    return 0
