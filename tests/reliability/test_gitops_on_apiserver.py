"""The GitOps re-apply of test_gitops_reapply.py on the REAL kube-apiserver: server-side apply of the
Git copy, as the field manager `argocd-controller`, every 0.5 s through a canary.

The real server decides what a re-apply changes (nothing: same generation), checks field
ownership (a conflict would refuse the apply), and records in `managedFields` who owns what, so
"the operator writes only status and its own metadata" is read from the server itself. The canary
judges fake metrics and moves an in-memory router (the operator's `Hooks`), the test plays the
kubelet (pods ready, the Job's pod finished) and the real Job, ReplicaSet and Deployment controllers
do the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner

from optiserve.kube.client import DEPLOYMENTS, JOBS, PODS, KubeClient
from optiserve.settings import Settings
from tests.reliability.figures import report_figure
from tests.support.canary_fakes import QUICK_ROLLOUT, Fakes
from tests.support.control_plane import Cluster, control_plane, controller_manager, kubernetes_client
from tests.support.job_results import SECOND
from tests.support.kubelet_role import finish_job_pod, pods, until
from tests.support.model_on_apiserver import (
    GITOPS_MANAGER,
    MODEL,
    RUNNER_TIMEOUT_S,
    admin,
    crd,
    managers_of,
    manifest,
    model,
    names,
    namespace,
    promote,
    server_side_apply,
)
from tests.support.operator_runner import KopfRun, running_operator

__all__ = ["admin", "control_plane", "controller_manager", "crd", "namespace"]  # fixtures

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REAPPLY_EVERY_S = 0.5


@contextlib.contextmanager
def operator_with_fakes(cluster: Cluster, namespace: str, fakes: Fakes) -> Iterator[KopfRunner]:
    with running_operator(
        KubeClient(kubernetes_client(cluster)),
        settings=Settings(resync_seconds=0.5),
        hooks=fakes.hooks(),
        namespace=namespace,
        kopf=KopfRun(verbose=False),
        timeout_s=RUNNER_TIMEOUT_S,
    ) as runner:
        yield runner


def play_kubelet(admin: KubeClient, namespace: str) -> None:
    """Every pod of the model's Deployments Running and Ready; the g2 Job's pod finished."""
    for pod in pods(admin, namespace, "optiserve.io/model"):
        labels = pod["metadata"].get("labels") or {}
        status = pod.get("status") or {}
        if labels.get("optiserve.io/variant") == "optimizer":
            job = labels.get("batch.kubernetes.io/job-name", "")
            if job.endswith("-g2") and not status.get("containerStatuses"):
                finish_job_pod(admin, namespace, job, SECOND)
            continue
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            container = pod["spec"]["containers"][0]
            ready = [{"type": kind, "status": "True"} for kind in ("Ready", "ContainersReady")]
            running = {"name": container["name"], "image": container["image"], "imageID": "", "ready": True, "started": True}
            body = {
                "status": {
                    "phase": "Running",
                    "conditions": ready,
                    "containerStatuses": [{**running, "restartCount": 0, "state": {"running": {}}}],
                }
            }
            with contextlib.suppress(Exception):  # a pod deleted meanwhile
                admin.patch(PODS, namespace, pod["metadata"]["name"], body, subresource="status")


def git_copy(namespace: str) -> dict[str, Any]:
    return manifest(namespace, rollout=QUICK_ROLLOUT)


def test_server_side_reapplies_during_a_canary_change_nothing(control_plane: Cluster, admin: KubeClient, namespace: str) -> None:
    fakes = Fakes()
    applied: list[float] = []
    with operator_with_fakes(control_plane, namespace, fakes):
        server_side_apply(control_plane, manifest(namespace))
        promote(admin, namespace)

        def settled(generation: int) -> dict[str, Any] | None:
            play_kubelet(admin, namespace)
            if applied and time.monotonic() - applied[-1] >= REAPPLY_EVERY_S:
                server_side_apply(control_plane, git_copy(namespace))
                applied.append(time.monotonic())
            found = model(admin, namespace)
            status = found.get("status") or {}
            done = status.get("phase") == "Promoted" and status.get("pipelineGeneration") == generation
            return found if done and names(admin, DEPLOYMENTS, namespace) == [f"{MODEL}-baseline"] else None

        until("generation 1 promoted and the candidate retired", lambda: settled(1), timeout_s=120)
        server_side_apply(control_plane, git_copy(namespace))  # the commit: generation 2
        applied.append(time.monotonic())

        def canary_started() -> Any:
            settled(2)
            return ((model(admin, namespace).get("status") or {}).get("canary") or {}).get("progress")

        started = until("the canary started", canary_started, timeout_s=120)["started_at"]
        final = until("generation 2 promoted through its canary", lambda: settled(2), timeout_s=180)

    status = final["status"]
    weights = [w for i, w in enumerate(fakes.router.history) if i == 0 or fakes.router.history[i - 1] != w]
    assert len(applied) >= 5, f"only {len(applied)} applies"
    assert final["metadata"]["generation"] == 2, "a re-apply of the same spec is no new generation"
    assert status["pipelineGeneration"] == 2 and status["observedGeneration"] == 2
    assert status["canary"]["progress"]["started_at"] == started, "the canary restarted"
    assert weights == [10, 50, 100, 0], f"weights flapped: {fakes.router.history}"
    assert names(admin, JOBS, namespace) == [f"{MODEL}-optimize-g2"]
    owners = managers_of(final)
    assert "f:spec" in owners[(GITOPS_MANAGER, None)], "Git owns the spec"
    for (manager, subresource), fields in owners.items():
        if manager == GITOPS_MANAGER:
            continue
        assert "f:spec" not in fields, f"{manager} owns spec fields: {fields}"
        if subresource != "status":
            assert set(fields) <= {"f:metadata"} and set(fields["f:metadata"]) <= {"f:annotations", "f:finalizers"}, fields
    assert ("kopf", "status") in owners, owners.keys()
    report_figure(
        "10-gitops-apiserver",
        server_side_applies=len(applied),
        every_s=REAPPLY_EVERY_S,
        generation=final["metadata"]["generation"],
        weights=weights,
        managers=sorted(f"{m}/{s or 'main'}" for m, s in owners),
    )
