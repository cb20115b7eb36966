"""The test plays the kubelet: there are no nodes here, so pods never run. The tests write the pod
status a kubelet would report, and the real controllers (Job, ReplicaSet, Deployment) take it from
there: the Job controller marks a Job Complete once its pod Succeeded, the ReplicaSet and
Deployment controllers count ready pods into `readyReplicas`.

Also: where kubectl comes from, and the API helpers the operator tests on a real server share.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from optiserve.api.job import JobResult
from optiserve.kube.client import DEPLOYMENTS, PODS, KubeClient
from tests.support.eventually import eventually
from tests.support.models import REPO_ROOT

HELM_HOME = Path(os.environ.get("OPTISERVE_HELM_HOME", Path.home() / ".cache/optiserve/helm"))
SETUP_HELM = REPO_ROOT / "scripts/setup_helm.sh"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

T = TypeVar("T")


def until(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0, detail: Callable[[], str] | None = None) -> T:
    """`eventually` with the real server's bound and a 0.2 s poll; at the deadline the failure
    also shows `detail()` when given (a process's log tail)."""
    return eventually(probe, timeout_s=timeout_s, interval_s=0.2, description=what, detail=detail)


def kubectl_binary() -> Path:
    """kubectl from the helm cache (`scripts/setup_helm.sh`), installed there when missing."""
    path = HELM_HOME / "bin/kubectl"
    if not path.is_file():
        done = subprocess.run([str(SETUP_HELM)], capture_output=True, text=True, check=False)
        if done.returncode != 0 or not path.is_file():
            pytest.fail(f"{SETUP_HELM} did not install {path}:\n{done.stderr[-2000:]}", pytrace=False)
    return path


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pods(kube: KubeClient, namespace: str, selector: str) -> list[dict[str, Any]]:
    return kube.select(PODS, namespace, selector)


def finish_job_pod(kube: KubeClient, namespace: str, job: str, result: JobResult) -> str:
    """Report the Job's pod as the kubelet would once the container exited: the JobResult in its
    termination message. Returns the pod's name; the Job controller does the rest."""
    (pod,) = until(f"the pod of Job {job}", lambda: pods(kube, namespace, f"{JOB_NAME_LABEL}={job}"))
    container = pod["spec"]["containers"][0]
    exit_code = 0 if result.passed else 1
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": result.to_termination_message(),
        "startedAt": _now(),
        "finishedAt": _now(),
    }
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }
    name = str(pod["metadata"]["name"])
    kube.patch(PODS, namespace, name, {"status": status}, subresource="status")
    return name


def make_pods_ready(kube: KubeClient, namespace: str, deployment: str) -> list[str]:
    """Report every pod of the Deployment Running and Ready (as after a passing readiness probe)."""
    live = until(f"Deployment {deployment}", lambda: kube.get(DEPLOYMENTS, namespace, deployment))
    match = live["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{key}={value}" for key, value in sorted(match.items()))
    wanted = int(live["spec"].get("replicas", 1))

    def all_pods() -> list[dict[str, Any]] | None:
        found = pods(kube, namespace, selector)
        return found if len(found) >= wanted else None

    found = until(f"{wanted} pods of {deployment}", all_pods)
    for pod in found:
        _report_ready(kube, namespace, pod)
    return [str(pod["metadata"]["name"]) for pod in found]


def _report_ready(kube: KubeClient, namespace: str, pod: dict[str, Any]) -> None:
    container = pod["spec"]["containers"][0]
    ready = [{"type": kind, "status": "True", "lastTransitionTime": _now()} for kind in ("Ready", "ContainersReady")]
    status = {
        "phase": "Running",
        "conditions": ready,
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": _now()}},
            }
        ],
    }
    kube.patch(PODS, namespace, pod["metadata"]["name"], {"status": status}, subresource="status")


def ready_new_pods(kube: KubeClient, namespace: str, selector: str) -> int:
    """Report Ready every pod matching `selector` that is not yet (a kubelet's loop, one turn)."""
    started = ("Running", "Succeeded", "Failed")
    fresh = [p for p in pods(kube, namespace, selector) if (p.get("status") or {}).get("phase") not in started]
    for pod in fresh:
        _report_ready(kube, namespace, pod)
    return len(fresh)
