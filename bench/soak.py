"""Soak: `optiserve run` held in the canary phase under steady load, its processes sampled each minute.

The digits example runs with its first step (weight 50) paused for `--minutes`: the judge keeps
judging every interval (a regression would still roll back), the load keeps going through nginx,
and once the pause is over the last step promotes and the run ends by itself, report written.
The analysis interval is 60 s (so a 30-minute soak is 30 judged intervals, not 180) and the
inconclusive limit 10: this is about resources, not about the judge's verdict on a quiet machine.

Each minute: RSS and open file descriptors of every process under the run (tritonservers and
their backend stubs, nginx master and workers, Prometheus, the comparator, the run itself), and
Prometheus's head series. At the end: each process's growth from the first steady sample (3 minutes
into serving) to the last one while serving (flat: within 10 %), the failed client requests from
the run's report, and the series count's range. Prints JSON and a markdown table.

    .venv/bin/python bench/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DIGITS = REPO_ROOT / "examples/digits/optimizedmodel.yaml"
FLAT_WITHIN = 0.10
WARMUP_MINUTES = 3.0
"""Minutes of serving before the baseline of each process's growth (see `steady_samples`)."""
MB = 1024 * 1024


@dataclass
class Sample:
    minute: float
    processes: dict[str, tuple[float, int]]
    """'name[pid]' -> (RSS in MB, open file descriptors)."""
    head_series: int | None


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)


def soak_manifest(minutes: float, root: Path) -> Path:
    """The digits example with its first step paused for the soak, beside links to its files."""
    for entry in DIGITS.parent.iterdir():
        if entry.suffix not in (".yaml", ".yml"):
            (root / entry.name).symlink_to(entry)
    document = yaml.safe_load(DIGITS.read_text())
    document["spec"]["validation"].update({"minSpeedup": 0})  # about resources, not this machine's speed
    rollout = document["spec"]["rollout"]
    rollout["steps"] = [{"weight": 50, "pause": f"{round(minutes * 60)}s"}, {"weight": 100}]
    rollout["analysis"].update({"interval": "60s", "warmup": "10s", "inconclusiveLimit": 10})
    path = root / DIGITS.name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _name(process: psutil.Process) -> str:
    try:
        name = process.name()
        if name.startswith("python"):
            args = process.cmdline()
            name = next((a for a in args if a in ("run", "comparator")), name)
        return f"{name}[{process.pid}]"
    except psutil.Error:
        return f"?[{process.pid}]"


def sample_tree(root: psutil.Process) -> dict[str, tuple[float, int]]:
    found: dict[str, tuple[float, int]] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            with process.oneshot():
                found[_name(process)] = (process.memory_info().rss / MB, process.num_fds())
        except psutil.Error:
            continue  # exited between listing and reading
    return found


def prometheus_url(root: psutil.Process) -> str | None:
    for process in root.children(recursive=True):
        try:
            args = process.cmdline()
        except psutil.Error:
            continue
        if args and "prometheus" in Path(args[0]).name:
            for arg in args:
                if arg.startswith("--web.listen-address="):
                    return "http://" + arg.split("=", 1)[1]
    return None


def head_series(url: str | None) -> int | None:
    """The series in Prometheus's head block (its TSDB status; local mode's Prometheus does not scrape itself)."""
    if url is None:
        return None
    try:
        with urllib.request.urlopen(f"{url}/api/v1/status/tsdb", timeout=5) as answer:
            return int(json.load(answer)["data"]["headStats"]["numSeries"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_soak(minutes: float, sample_s: float, workdir: Path) -> tuple[Soak, int, dict[str, Any]]:
    manifest = soak_manifest(minutes, workdir)
    report = workdir / "report"
    command = [sys.executable, "-m", "optiserve.cli", "run", "-f", str(manifest), "--report", str(report)]
    command += ["--job-cache", str(Path.home() / ".cache/optiserve/soak-jobs"), "--no-live"]
    command += ["--max-canary-seconds", str(minutes * 60 + 600)]
    soak, started = Soak(), time.monotonic()
    with (workdir / "run.log").open("w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(run.pid)
        try:
            while run.poll() is None:
                url = prometheus_url(root)
                soak.samples.append(Sample((time.monotonic() - started) / 60, sample_tree(root), head_series(url)))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.wait(timeout=sample_s)
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGINT)
                run.wait(timeout=120)
    result = json.loads((report / "report.json").read_text()) if (report / "report.json").exists() else {}
    return soak, int(run.returncode), result


def steady_samples(soak: Soak) -> list[Sample]:
    """Samples while the canary serves (a tritonserver is up), after `WARMUP_MINUTES` of it: the
    start-up (model loads, the judge's first import of scipy) and the report at the end are not
    what a soak watches."""
    serving = [s for s in soak.samples if any(name.startswith("tritonserver") for name in s.processes)]
    if not serving:
        return []
    return [s for s in serving if s.minute >= serving[0].minute + WARMUP_MINUTES]


def growth(soak: Soak) -> list[dict[str, Any]]:
    """Per process: RSS and descriptors at the first steady sample and at the last one it was seen."""
    rows = []
    steady = steady_samples(soak)
    names = sorted({name for s in steady for name in s.processes})
    for name in names:
        seen = [s.processes[name] for s in steady if name in s.processes]
        if len(seen) < 2:
            continue
        (rss0, fds0), (rss1, fds1) = seen[0], seen[-1]
        peak = max(r for r, _ in seen)
        rows.append(
            {
                "process": name,
                "samples": len(seen),
                "rss_first_mb": round(rss0, 1),
                "rss_last_mb": round(rss1, 1),
                "rss_peak_mb": round(peak, 1),
                "rss_ratio": round(rss1 / rss0, 3) if rss0 else None,
                "fds_first": fds0,
                "fds_last": fds1,
                "flat": rss1 <= rss0 * (1 + FLAT_WITHIN) and fds1 <= fds0 * (1 + FLAT_WITHIN) + 1,
            }
        )
    return rows


def failed_requests(report: dict[str, Any]) -> dict[str, Any]:
    traffic = report.get("traffic") or {}
    failed = {key: (traffic.get(key) or {}).get("failed") for key in ("baseline", "candidate")}
    return {
        **failed,
        "during_transitions": traffic.get("load_failed_during_transitions"),
        "unattributed": traffic.get("load_failed_unattributed"),
        "sent": sum(int((traffic.get(key) or {}).get("sent") or 0) for key in ("baseline", "candidate")),
    }


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8")
    return [flag for flag in line.split() if flag in wanted]


def markdown(rows: list[dict[str, Any]], failures: dict[str, Any], series: list[int]) -> str:
    lines = [
        "| process | samples | RSS first → last (peak) MB | ratio | fds first → last | flat (10 %) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = f"{r['rss_first_mb']} → {r['rss_last_mb']} ({r['rss_peak_mb']})"
        lines.append(
            f"| {r['process']} | {r['samples']} | {rss} | {r['rss_ratio']} | {r['fds_first']} → {r['fds_last']} | {r['flat']} |"
        )
    lines.append("")
    lines.append(f"failed client requests: {failures}")
    if series:
        lines.append(f"Prometheus head series: {min(series)} - {max(series)} (first {series[0]}, last {series[-1]})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the canary is held (default 30)")
    parser.add_argument("--sample-seconds", type=float, default=60.0, help="time between samples (default 60)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="optiserve-soak-") as tmp:
        soak, code, report = run_soak(args.minutes, args.sample_seconds, Path(tmp))
    rows = growth(soak)
    series = [s.head_series for s in soak.samples if s.head_series is not None]
    summary = {
        "minutes": args.minutes,
        "exit_code": code,
        "outcome": (report.get("run") or {}).get("outcome"),
        "samples": len(soak.samples),
        "processes": rows,
        "all_flat": all(r["flat"] for r in rows),
        "failed_requests": failed_requests(report),
        "head_series": {"min": min(series), "max": max(series), "first": series[0], "last": series[-1]} if series else None,
        "machine": {"cpus": psutil.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version()},
        "timeline": [
            {"minute": round(s.minute, 1), "head_series": s.head_series, "processes": s.processes} for s in soak.samples
        ],
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    print(markdown(rows, summary["failed_requests"], series))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
