"""End to end on real pods: the operator upgraded with Helm mid-canary, then uninstalled, leaving nothing behind.

5. `helm upgrade` to a new operator image while a canary runs: the new pods take over the Lease and
   finish the same rollout (one clock, the step never goes back). Then `helm uninstall`: none of the
   chart's objects is left in the cluster and no operator holds the Lease (released, or expired). The suite installs the
   operator again afterwards, for the scenarios that follow.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from e2e.canary_watch import CanaryWatch
from e2e.cluster import HELM_BIN, RELEASE, RELEASE_NAMESPACE, Cluster, run, until
from e2e.digits import CANARY_S, OPTIMIZE_AND_SERVE_S, given_digits_promoted, without_quantization
from e2e.steps import Scenario

pytestmark = pytest.mark.timeout(3600)

NEXT_TAG = "e2e-next"
RELEASE_LABEL = f"app.kubernetes.io/instance={RELEASE}"
CLUSTER_KINDS = "clusterroles,clusterrolebindings"
NAMESPACED_KINDS = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies"


def _operator_images(cluster: Cluster) -> set[str]:
    pods = cluster.kubectl_json("-n", RELEASE_NAMESPACE, "get", "pods", "-l", RELEASE_LABEL)
    return {c["image"] for pod in pods.get("items") or [] for c in pod["spec"]["containers"]}


def _lease_holders(cluster: Cluster) -> dict[str, str]:
    """The Leases of the release's namespace someone holds now: a holder, renewed within its duration."""
    held = {}
    for lease in cluster.kubectl_json("-n", RELEASE_NAMESPACE, "get", "leases").get("items") or []:
        spec = lease.get("spec") or {}
        renewed = spec.get("renewTime")
        if not spec.get("holderIdentity") or not renewed:
            continue
        until_s = datetime.fromisoformat(renewed.replace("Z", "+00:00")).timestamp() + float(
            spec.get("leaseDurationSeconds") or 0
        )
        if until_s > time.time():
            held[lease["metadata"]["name"]] = str(spec["holderIdentity"])
    return held


@contextlib.contextmanager
def _operator_logs(cluster: Cluster, path: Path) -> Iterator[Path]:
    """Follow every operator pod's log into `path` while the block runs (the pods are gone after)."""
    command = [str(HELM_BIN / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "-n", RELEASE_NAMESPACE, "logs", "-f"]
    with path.open("w") as out:
        follower = subprocess.Popen(
            [*command, "--prefix", "--max-log-requests=4", "-l", RELEASE_LABEL, "--tail=20"], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield path
            time.sleep(2)
        finally:
            follower.terminate()
            follower.wait(timeout=30)


def _left_behind(cluster: Cluster) -> list[str]:
    cluster_wide = cluster.kubectl("get", CLUSTER_KINDS, "-l", RELEASE_LABEL, "-o", "name").split()
    namespaced = cluster.kubectl("get", NAMESPACED_KINDS, "-A", "-l", RELEASE_LABEL, "-o", "name").split()
    return cluster_wide + namespaced


def test_helm_upgrade_mid_canary_then_uninstall_leaves_no_orphans(scenario: Scenario, cluster: Cluster, tmp_path: Path) -> None:
    manifest = given_digits_promoted(scenario, cluster.images.triton, tmp_path)
    next_image = cluster.images.operator.rpartition(":")[0] + f":{NEXT_TAG}"
    run(["docker", "tag", cluster.images.operator, next_image])
    cluster.import_image(next_image)
    try:
        with (
            scenario.when_clients_send_through_the_gateway("digits"),
            CanaryWatch(lambda: scenario.model("digits"), lambda: None) as watch,
        ):
            scenario.when_spec_changed("digits", without_quantization(manifest))
            scenario.then_canary_at_step("digits", 1, within_s=OPTIMIZE_AND_SERVE_S)
            cluster.install_operator({"image": {**cluster.operator_values()["image"], "tag": NEXT_TAG}})
            until("the operator pods to run the new image", lambda: _operator_images(cluster) == {next_image}, timeout_s=300)
            scenario.then_phase("digits", "Promoted", within_s=CANARY_S)
        assert not watch.steps_went_back(), f"the canary's step went back: {watch.steps_went_back()}"
        assert len(watch.clocks()) == 1, f"the canary was restarted: its clock read {sorted(watch.clocks())}"

        with _operator_logs(cluster, tmp_path / "operator-at-uninstall.log") as log:
            cluster.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout=300s")
        lease_lines = [line for line in log.read_text().splitlines() if "ease" in line][-6:]
        print("e2e: the operator's last words on its Lease:", *lease_lines, sep="\n")  # noqa: T201
        left = until("the chart's objects to be gone", lambda: not _left_behind(cluster) or None, timeout_s=120, every_s=5)
        assert left, _left_behind(cluster)
        # The leader releases the Lease when it stops, but `helm uninstall` deletes the chart's Role in
        # the same call as the Deployment, before the pods get SIGTERM, so that release is refused (403).
        # What must hold: nobody holds it once its duration has passed, so a new install leads at once.
        free = until("no operator holding the Lease", lambda: not _lease_holders(cluster) or None, timeout_s=60, every_s=2)
        assert free, _lease_holders(cluster)
        # The model and what it owns stay: uninstalling an operator does not delete its users' models.
        scenario.then_serving("digits-baseline")
    finally:
        cluster.install_operator()
