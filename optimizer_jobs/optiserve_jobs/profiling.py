"""ONNX Runtime's per-operator profile, summed by operator type: where the time went."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from optiserve_jobs.runners import ort_session, session_feed

TOP_OPERATORS = 8


def summarize_trace(events: list[dict[str, object]], runs: int) -> list[dict[str, float | str]]:
    """Total kernel time per operator type, per run, largest first (with its share of the total)."""
    totals: dict[str, float] = {}
    for event in events:
        args = event.get("args")
        if event.get("cat") != "Node" or not isinstance(args, dict) or "op_name" not in args:
            continue
        if not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op_type = str(args["op_name"])
        totals[op_type] = totals.get(op_type, 0.0) + float(str(event.get("dur", 0)))
    grand_total = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:TOP_OPERATORS]
    return [{"op_type": op, "ms_per_run": round(us / runs / 1000.0, 4), "share": round(us / grand_total, 4)} for op, us in ranked]


def profile_operators(model: Path | None, threads: int, inputs: dict[str, np.ndarray], runs: int) -> list[dict[str, float | str]]:
    if model is None:
        return []
    with tempfile.TemporaryDirectory(prefix="optiserve-profile-") as tmp:
        session = ort_session(model, threads=threads, profile_prefix=str(Path(tmp) / "profile"))
        feed = session_feed(session, inputs)
        for _ in range(runs):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        return summarize_trace(json.loads(trace.read_text()), runs)
