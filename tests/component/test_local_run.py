"""`optiserve run` end to end on real parts: the optimization job, two tritonservers, nginx, the
comparator, Prometheus and a bounded load, judged by the operator's own canary state machine.

The digits example (examples/digits/optimizedmodel.yaml) keeps each run near a minute. The job's
output is cached for the session (--job-cache), as a user repeating the demo would have it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.models import REPO_ROOT, example_without_speed_gate

pytestmark = pytest.mark.slow

DIGITS = REPO_ROOT / "examples/digits/optimizedmodel.yaml"
SERVER_NAMES = ("tritonserver", "nginx", "prometheus", "triton_python_backend_stub")
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def job_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("job-cache")


@pytest.fixture(scope="module")
def digits_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example as it is but for its speed gate: these tests are about the canary, not this machine's load."""
    return example_without_speed_gate(DIGITS, tmp_path_factory.mktemp("digits"))


def _command(manifest: Path, report: Path, cache: Path, *extra: str) -> list[str]:
    run = [sys.executable, "-m", "optiserve.cli", "run", "-f", str(manifest), "--report", str(report)]
    return [*run, "--job-cache", str(cache), "--no-live", *extra]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _servers_started_by(pid: int) -> list[psutil.Process]:
    """The server processes (tritonserver, nginx, Prometheus, backend stubs) below process `pid`."""
    return [
        process
        for process in psutil.process_iter(["name"])
        if any(server in (process.info["name"] or "") for server in SERVER_NAMES) and _descends_from(process, pid)
    ]


def _descends_from(process: psutil.Process, pid: int) -> bool:
    try:
        return any(parent.pid == pid for parent in process.parents())
    except psutil.Error:
        return False


def _report(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / "report.json").read_text()))


class Finished:
    def __init__(self, returncode: int, stdout: str, servers: list[psutil.Process]) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.servers = servers
        """Every server process seen below the run while it ran."""

    def left_running(self) -> list[str]:
        return [f"{p.info['name']} ({p.pid})" for p in self.servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def run(manifest: Path, report: Path, cache: Path, *extra: str) -> Finished:
    """Run the command, watching which servers it starts, so the test can check none is left behind."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        _command(manifest, report, cache, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        seen: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            seen.update({p.pid: p for p in _servers_started_by(process.pid)})
            time.sleep(0.5)
        output = process.communicate(timeout=60)[0]
    time.sleep(0.5)
    return Finished(process.returncode, output, list(seen.values()))


def test_a_healthy_candidate_is_promoted_without_losing_a_request(tmp_path: Path, job_cache: Path, digits_manifest: Path) -> None:
    result = run(digits_manifest, tmp_path / "report", job_cache)
    assert result.returncode == 0, result.stdout[-3000:]
    assert {p.info["name"] for p in result.servers} >= {"tritonserver", "nginx", "prometheus"}
    assert result.left_running() == []
    report = _report(tmp_path / "report")
    run_summary = report["run"]
    assert run_summary["outcome"] == "promoted"
    assert [p["phase"] for p in run_summary["phases"]] == [
        "Pending",
        "Optimizing",
        "Validating",
        "Deploying",
        "Canary",
        "Promoted",
    ]
    assert [s["result"] for s in report["steps"]] == ["passed", "passed", "passed"]
    assert [s["weight"] for s in report["steps"]] == [10, 50, 100]
    traffic = report["traffic"]
    assert traffic["baseline"]["ok"] > 0 and traffic["candidate"]["ok"] > 0
    assert traffic["baseline"]["failed"] == traffic["candidate"]["failed"] == 0
    assert traffic["load_failed_during_transitions"] == 0 and traffic["load_failed_unattributed"] == 0
    last = report["intervals"][-1]
    assert last["decision"] == "promote"
    assert {m["metric"] for m in last["measurements"]} == {"latency", "errorRate", "agreement", "accuracy"}
    assert all(m["outcome"] == "Successful" for m in last["measurements"])
    # The decision time counts from the first canary traffic: at least warm-up + one interval per step.
    assert run_summary["decision_time_s"] >= 10 + 3 * 10
    for name in ("report.md", "report.html", "latency.png", "optimization.png", "cost.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000, name
    assert json.loads(result.stdout.strip().splitlines()[-1])["outcome"] == "promoted"


def test_injected_errors_are_rolled_back_and_the_baseline_keeps_every_request(
    tmp_path: Path, job_cache: Path, digits_manifest: Path
) -> None:
    result = run(digits_manifest, tmp_path / "report", job_cache, "--inject", "errors=5%")
    assert result.returncode == 2, result.stdout[-3000:]
    assert result.servers and result.left_running() == []
    report = _report(tmp_path / "report")
    assert report["run"]["outcome"] == "rolled_back"
    assert report["run"]["inject"] == "errors=5%"
    assert "errorRate" in report["run"]["reason"]
    assert report["run"]["phases"][-1]["phase"] == "RolledBack"
    reached = [s["result"] for s in report["steps"] if s["result"] != "not_reached"]
    assert reached[-1] == "rolled_back" and all(r == "passed" for r in reached[:-1]), reached
    traffic = report["traffic"]
    # The candidate's own counters saw the injected errors (the load's share of them at a 10 % weight is a
    # handful at most; the comparator's requests hit the candidate too).
    assert traffic["candidate"]["server_failures"] > 0
    assert traffic["baseline"]["failed"] == 0
    assert traffic["load_failed_during_transitions"] == 0 and traffic["load_failed_unattributed"] == 0
    failed = [m for i in report["intervals"] for m in i["measurements"] if m["outcome"] == "Failed"]
    assert failed and all(m["metric"] == "errorRate" for m in failed)


def test_ctrl_c_stops_every_process_and_still_writes_the_report(tmp_path: Path, job_cache: Path, digits_manifest: Path) -> None:
    report_dir = tmp_path / "report"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        _command(digits_manifest, report_dir, job_cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # A test run started in the background of a non-interactive shell (`make test &`) inherits
        # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: give the child
        # the default disposition a terminal's Ctrl-C meets.
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for line in process.stdout:  # wait until the canary runs: every server is up
        if line.startswith("step 1/3") or time.monotonic() > deadline:
            break
    running = _servers_started_by(process.pid)
    names = sorted({p.info["name"] for p in running})
    assert {"tritonserver", "nginx", "prometheus"} <= set(names), names
    process.send_signal(signal.SIGINT)
    remaining = process.communicate(timeout=120)[0]
    assert process.returncode == 130, remaining[-3000:]
    left = [f"{p.info['name']} ({p.pid})" for p in running if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"still running after Ctrl-C: {left}"
    report = _report(report_dir)
    assert report["run"]["outcome"] == "failed"
    assert "interrupted" in report["run"]["reason"]
