"""No credential in the operator's logs, events, status or children.

`optiserve operator` runs as users start it, in its own process with `--verbose`, from a
kubeconfig that holds a bearer token. The emulated API answers some of its calls with errors
(a refused event, a server error on the Job create, a 401 that makes kopf log in again), so the
error paths log too. The model goes to Promoted. Then the token must appear nowhere: not in the
process's output, not in an Event, not in the model (status, annotations), not in any object the
operator wrote. The emulator checks that the operator did present the token, on kopf's calls and
on its own client's, so the absence means something.

Restricted pod security and RBAC without wildcards are covered elsewhere: every pod template the
chart renders and the Job's in tests/chart/test_chart_policy.py, admission under the restricted
profile on the real API server in tests/cluster/test_chart_on_apiserver.py.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from optiserve.kube.client import DEPLOYMENTS, JOBS, SERVICES, KubeClient
from tests.reliability.figures import report_figure
from tests.reliability.harness import (
    DISCOVERY,
    EVENTS,
    MODEL,
    NAMESPACE,
    OPTIMIZED_MODELS,
    first_manifest,
    play_cluster,
)
from tests.support.fault_emulator import Fault, FaultEmulator, Matcher, serve_fault_emulator

pytestmark = pytest.mark.slow

WAIT_S = 90.0


def kubeconfig(path: Path, server: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulated", "cluster": {"server": server}}],
        "users": [{"name": "optiserve", "user": {"token": token}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "optiserve"}}],
        "current-context": "emulated",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def promoted_and_told(kube: KubeClient) -> bool:
    """Promoted, and the event saying so posted (events come after a refused one, in order)."""
    play_cluster(kube)
    status = ((kube.get(OPTIMIZED_MODELS, NAMESPACE, MODEL) or {}).get("status")) or {}
    told = any("-> Promoted" in str(e.get("message")) for e in kube.select(EVENTS, NAMESPACE, ""))
    return status.get("phase") == "Promoted" and told


def faults_on_the_error_paths(emulator: FaultEmulator) -> list[Fault]:
    def by_operator(method: str, plural: str) -> Matcher:
        return lambda call: call.who == "operator" and call.method == method and call.plural == plural

    return [
        emulator.inject(Fault(by_operator("POST", "events"), 403, times=1)),
        emulator.inject(Fault(by_operator("POST", "jobs"), 500, times=1)),
        emulator.inject(Fault(by_operator("GET", "deployments"), 401, times=1)),
    ]


def test_the_token_never_appears_in_logs_events_status_or_children(tmp_path: Path) -> None:
    token = f"optiserve-test-token-{secrets.token_hex(16)}"
    with serve_fault_emulator(DISCOVERY) as running:
        emulator = running.emulator
        emulator.identify(token, "operator")
        faults = faults_on_the_error_paths(emulator)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}  # not "in-cluster"
        env |= {"KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", running.url, token)), "OPTISERVE_RESYNC_SECONDS": "0.2"}
        log = tmp_path / "operator.log"
        kube = KubeClient.for_host(running.url)
        with log.open("w") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "optiserve.cli", "operator", "--all-namespaces", "--verbose"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
            deadline = time.monotonic() + WAIT_S
            while not promoted_and_told(kube) and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=WAIT_S) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        model = kube.get(OPTIMIZED_MODELS, NAMESPACE, MODEL) or {}
        events = kube.select(EVENTS, NAMESPACE, "")
        children = [o for r in (JOBS, DEPLOYMENTS, SERVICES) for o in kube.select(r, NAMESPACE, f"optiserve.io/model={MODEL}")]
        kube.close()

    output = log.read_text()
    assert (model.get("status") or {}).get("phase") == "Promoted", output[-3000:]
    assert events, "the operator posted events (so their absence of the token means something)"
    assert all(len(fault.answered) == fault.times for fault in faults), "every error path was taken"
    presented = emulator.calls_by("operator")
    assert any(c.action == "WATCH" for c in presented) and any(c.method == "POST" and c.plural == "jobs" for c in presented), (
        "kopf and the operator's own client both authenticated with the token"
    )
    assert "HTTP 500" in output and "injected fault" in output, "the error paths logged"
    places = {
        "the operator's log": output,
        "events": json.dumps(events),
        "the model (status, annotations)": json.dumps(model),
        "children": json.dumps(children),
        "request bodies the operator sent": json.dumps([c.data for c in presented]),
        "request parameters": json.dumps([c.params for c in presented]),
    }
    leaks = [where for where, text in places.items() if token in text or token[-16:] in text]
    assert leaks == [], f"the token appears in: {leaks}"
    report_figure(
        "11-credentials",
        log_lines=len(output.splitlines()),
        events=len(events),
        calls_with_the_token=len(presented),
        error_paths=[f"{f.status} x{f.times}" for f in faults],
        places_checked=list(places),
        leaks=0,
    )
