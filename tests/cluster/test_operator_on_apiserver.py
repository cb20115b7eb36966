"""The operator against a REAL kube-apiserver, etcd and kube-controller-manager.

What the emulated API cannot show, shown here: `uid`, `generation` and `resourceVersion` assigned
by the server; the CRD's schema and status subresource; server-side apply field ownership; the
Job controller completing a Job from its pod's status; the ReplicaSet and Deployment controllers
counting ready pods; the garbage collector following owner references; `kubectl wait` and
`kubectl get` on the resource. The tests play the kubelet (tests/support/kubelet_role.py).

The operator runs in-process (kopf's KopfRunner) with the admin credentials of the fixture's
kubeconfig, except in the namespace test, which starts `optiserve operator` as users do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from optiserve.kube.client import DEPLOYMENTS, JOBS, PODS, SERVICES, KubeClient, Resource
from optiserve.local.prometheus import PrometheusServer
from optiserve.settings import Settings
from tests.cluster.triton_exporter import TritonCounters, serve_triton_metrics
from tests.support.control_plane import Cluster, free_ports, kubernetes_client
from tests.support.job_results import SHA
from tests.support.kubelet_role import kubectl_binary, make_pods_ready, pods, ready_new_pods, until
from tests.support.model_on_apiserver import (
    GITOPS_MANAGER,
    MODEL,
    OPTIMIZED_MODELS,
    REPLICA_SETS,
    RUNNER_TIMEOUT_S,
    admin,
    conditions,
    crd,
    drop_namespace,
    finish_job,
    make_namespace,
    managers_of,
    manifest,
    model,
    names,
    namespace,
    promote,
    server_side_apply,
    uids,
    wait_phase,
)
from tests.support.operator_runner import KopfRun, running_operator

__all__ = ["admin", "crd", "namespace"]  # fixtures

pytestmark = pytest.mark.cluster

OperatorFactory = Callable[..., contextlib.AbstractContextManager[KopfRunner]]


@pytest.fixture
def start_operator(control_plane: Cluster, namespace: str) -> OperatorFactory:
    """Start the operator in-process, watching the test's namespace, as the kubeconfig's admin."""

    def start() -> contextlib.AbstractContextManager[KopfRunner]:
        return running_operator(
            KubeClient(kubernetes_client(control_plane)),
            settings=Settings(resync_seconds=0.5),
            namespace=namespace,
            kopf=KopfRun(verbose=False),
            timeout_s=RUNNER_TIMEOUT_S,
        )

    return start


@pytest.fixture
def operator(start_operator: OperatorFactory) -> Iterator[KopfRunner]:
    with start_operator() as runner:
        yield runner


@pytest.fixture(scope="module")
def kubectl(control_plane: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = kubectl_binary()

    def run(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        command = [str(binary), f"--kubeconfig={control_plane.kubeconfig}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    return run


# --- the flow ----------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("operator")
def test_apply_to_promotion_with_real_controllers_and_kubectl(
    control_plane: Cluster, admin: KubeClient, namespace: str, kubectl: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    created = server_side_apply(control_plane, manifest(namespace))
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]

    job = until("the g1 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g1"))
    assert names(admin, JOBS, namespace) == ["minilm-optimize-g1"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    optimizing = wait_phase(admin, namespace, "Optimizing")
    assert optimizing["status"]["observedGeneration"] == 1
    server_side_apply(control_plane, manifest(namespace))  # a GitOps resync mid-flight: no conflict

    # `kubectl wait` started now must return once the model is Ready.
    waiter = subprocess.Popen(
        [str(kubectl_binary()), f"--kubeconfig={control_plane.kubeconfig}", "-n", namespace, "wait",
         "--for=condition=Ready", f"optimizedmodel/{MODEL}", "--timeout=90s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        finish_job(admin, namespace, "minilm-optimize-g1")
        until("the candidate Service", lambda: admin.get(SERVICES, namespace, "minilm-candidate"))
        deploying = wait_phase(admin, namespace, "Deploying")
        assert conditions(deploying)["Optimized"]["status"] == "True"
        assert waiter.poll() is None, "kubectl wait returned before the model was Ready"
        server_side_apply(control_plane, manifest(namespace))

        make_pods_ready(admin, namespace, "minilm-candidate")
        wait_phase(admin, namespace, "Promoted")
        until("the baseline Deployment", lambda: admin.get(DEPLOYMENTS, namespace, "minilm-baseline"))
        assert waiter.poll() is None, "kubectl wait returned while no pod of the baseline was ready"
        make_pods_ready(admin, namespace, "minilm-baseline")
        output, _ = waiter.communicate(timeout=90)
        promoted = until("the model", lambda: admin.get(OPTIMIZED_MODELS, namespace, MODEL))
        assert waiter.returncode == 0, output
        assert f"optimizedmodel.optiserve.io/{MODEL} condition met" in output
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()

    status = promoted["status"]
    assert status["observedGeneration"] == promoted["metadata"]["generation"] == 1
    ready = conditions(promoted)["Ready"]
    assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
    assert status["optimization"]["speedup"] == 2.5 and status["artifact"]["sha256"] == SHA
    assert status["phaseSince"]
    baseline = until("the baseline Deployment", lambda: admin.get(DEPLOYMENTS, namespace, "minilm-baseline"))
    assert baseline["metadata"]["annotations"]["optiserve.io/artifact-sha256"] == SHA

    listed = kubectl("-n", namespace, "get", "om")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "SPEEDUP", "WEIGHT", "READY", "AGE"]
    assert row.split()[:3] == [MODEL, "Promoted", "2.5"] and row.split()[3] == "True", row

    # The GitOps tool's apply never conflicted, and the operator owns no field of the spec.
    final = server_side_apply(control_plane, manifest(namespace))
    for (manager, subresource), fields in managers_of(final).items():
        if manager == GITOPS_MANAGER:
            continue
        assert "f:spec" not in fields, f"{manager} owns spec fields: {fields}"
        if subresource != "status":
            assert set(fields) <= {"f:metadata"} and set(fields["f:metadata"]) <= {"f:annotations", "f:finalizers"}, fields


@pytest.mark.usefixtures("operator")
def test_a_spec_change_bumps_the_generation_and_is_followed(control_plane: Cluster, admin: KubeClient, namespace: str) -> None:
    server_side_apply(control_plane, manifest(namespace))
    promote(admin, namespace)
    make_pods_ready(admin, namespace, "minilm-baseline")
    until("the candidate retired", lambda: names(admin, DEPLOYMENTS, namespace) == ["minilm-baseline"])

    changed = manifest(namespace, validation={**manifest(namespace)["spec"]["validation"], "maxDegradation": 0.02})
    applied = server_side_apply(control_plane, changed)
    assert applied["metadata"]["generation"] == 2, "the server bumps the generation on a spec change"

    until("the g2 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g2"))
    until("only the g2 Job left", lambda: names(admin, JOBS, namespace) == ["minilm-optimize-g2"])
    optimizing = wait_phase(admin, namespace, "Optimizing")
    assert optimizing["status"]["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in optimizing["status"]["conditions"]} == {2}
    baseline = admin.get(DEPLOYMENTS, namespace, "minilm-baseline")
    assert baseline is not None and baseline["metadata"]["labels"]["optiserve.io/generation"] == "1", "g1 keeps serving"


def test_a_restarted_operator_creates_nothing_twice(
    control_plane: Cluster, admin: KubeClient, namespace: str, start_operator: OperatorFactory
) -> None:
    with start_operator():
        server_side_apply(control_plane, manifest(namespace))
        until("the g1 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g1"))
        wait_phase(admin, namespace, "Optimizing")
    jobs = uids(admin, JOBS, namespace)

    with start_operator():
        finish_job(admin, namespace, "minilm-optimize-g1")
        until("the candidate Deployment", lambda: admin.get(DEPLOYMENTS, namespace, "minilm-candidate"))
        wait_phase(admin, namespace, "Deploying")
    candidates = uids(admin, DEPLOYMENTS, namespace)
    services = uids(admin, SERVICES, namespace)

    with start_operator():
        make_pods_ready(admin, namespace, "minilm-candidate")
        wait_phase(admin, namespace, "Promoted")
        until("the baseline Deployment", lambda: admin.get(DEPLOYMENTS, namespace, "minilm-baseline"))

    assert uids(admin, JOBS, namespace) == jobs, "one Job, created once"
    after = uids(admin, DEPLOYMENTS, namespace)
    assert after["minilm-candidate"] == candidates["minilm-candidate"], "the candidate was adopted, not re-created"
    assert sorted(after) == ["minilm-baseline", "minilm-candidate"]
    assert {k: v for k, v in uids(admin, SERVICES, namespace).items() if k in services} == services


# --- deletion ----------------------------------------------------------------------------------------------------


def everything_of_the_model(admin: KubeClient, namespace: str) -> dict[str, list[str]]:
    """Children and grandchildren (a Job's pods, a Deployment's ReplicaSets and pods)."""
    return {r.kind: names(admin, r, namespace, "optiserve.io/model") for r in (JOBS, DEPLOYMENTS, REPLICA_SETS, SERVICES, PODS)}


NOTHING: dict[str, list[str]] = {"Job": [], "Deployment": [], "ReplicaSet": [], "Service": [], "Pod": []}


def gone(admin: KubeClient, namespace: str) -> bool:
    return admin.get(OPTIMIZED_MODELS, namespace, MODEL) is None and everything_of_the_model(admin, namespace) == NOTHING


@pytest.mark.usefixtures("operator")
def test_deleting_mid_flight_stops_the_job_and_its_pod(
    control_plane: Cluster, admin: KubeClient, namespace: str, kubectl: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    server_side_apply(control_plane, manifest(namespace))
    until("the Job's pod", lambda: pods(admin, namespace, "job-name=minilm-optimize-g1"))
    wait_phase(admin, namespace, "Optimizing")

    deleted = kubectl("-n", namespace, "delete", "om", MODEL, "--timeout=60s")  # waits for the finalizer

    assert deleted.returncode == 0, deleted.stderr
    assert admin.get(OPTIMIZED_MODELS, namespace, MODEL) is None
    until("the Job and its pod gone", lambda: gone(admin, namespace))


@pytest.mark.usefixtures("operator")
def test_deleting_after_promotion_removes_every_child(control_plane: Cluster, admin: KubeClient, namespace: str) -> None:
    server_side_apply(control_plane, manifest(namespace))
    promote(admin, namespace)
    make_pods_ready(admin, namespace, "minilm-baseline")
    before = everything_of_the_model(admin, namespace)
    assert before["Deployment"] and before["ReplicaSet"] and before["Pod"] and before["Service"]

    admin.delete(OPTIMIZED_MODELS, namespace, MODEL)

    until("the model and everything it owned gone", lambda: gone(admin, namespace))


def test_a_deletion_while_the_operator_is_down_finishes_after_restart(
    control_plane: Cluster, admin: KubeClient, namespace: str, start_operator: OperatorFactory
) -> None:
    with start_operator():
        server_side_apply(control_plane, manifest(namespace))
        until("the g1 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g1"))
        wait_phase(admin, namespace, "Optimizing")

    admin.delete(OPTIMIZED_MODELS, namespace, MODEL)
    held = model(admin, namespace)
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["optiserve.io/finalizer"]

    with start_operator():
        until("the model and its Job gone", lambda: gone(admin, namespace))


def test_the_garbage_collector_alone_removes_the_children_through_owner_references(
    control_plane: Cluster, admin: KubeClient, namespace: str, start_operator: OperatorFactory
) -> None:
    """The operator uninstalled mid-flight and its finalizer removed by hand: owner references
    alone must take every child with the model."""
    with start_operator():
        server_side_apply(control_plane, manifest(namespace))
        until("the g1 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g1"))
        finish_job(admin, namespace, "minilm-optimize-g1")
        until("the candidate's pod", lambda: pods(admin, namespace, "optiserve.io/variant=candidate"))
    assert everything_of_the_model(admin, namespace)["Service"] == ["minilm-candidate"]

    admin.delete(OPTIMIZED_MODELS, namespace, MODEL)
    admin.patch(OPTIMIZED_MODELS, namespace, MODEL, {"metadata": {"finalizers": None}})

    until("the garbage collector to remove every child", lambda: gone(admin, namespace))


@pytest.mark.usefixtures("operator")
def test_an_orphaning_deletion_keeps_the_children(
    control_plane: Cluster, admin: KubeClient, namespace: str, kubectl: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    server_side_apply(control_plane, manifest(namespace))
    until("the g1 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g1"))
    finish_job(admin, namespace, "minilm-optimize-g1")
    until("the candidate Deployment", lambda: admin.get(DEPLOYMENTS, namespace, "minilm-candidate"))

    deleted = kubectl("-n", namespace, "delete", "om", MODEL, "--cascade=orphan", "--timeout=60s")

    assert deleted.returncode == 0, deleted.stderr
    until("the model gone", lambda: admin.get(OPTIMIZED_MODELS, namespace, MODEL) is None)

    def orphaned() -> dict[str, Any] | None:
        found = admin.get(DEPLOYMENTS, namespace, "minilm-candidate")
        return found if found is not None and not found["metadata"].get("ownerReferences") else None

    until("the candidate kept, its owner reference removed", orphaned)
    assert admin.get(SERVICES, namespace, "minilm-candidate") is not None


# --- `optiserve operator` as a process, namespaces, metrics and health ---------------------------------------------


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def test_the_cli_watches_only_the_namespaces_it_is_given(
    control_plane: Cluster, admin: KubeClient, crd: None, controller_manager: Any, tmp_path: Path
) -> None:
    watched, ignored = "om-watched-a", "om-ignored-b"
    for name in (watched, ignored):
        make_namespace(control_plane, admin, name)
    metrics_port, health_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env |= {"KUBECONFIG": str(control_plane.kubeconfig), "OPTISERVE_RESYNC_SECONDS": "0.5"}
    command = [
        sys.executable, "-m", "optiserve.cli", "operator", "--namespace", watched,
        "--metrics-port", str(metrics_port), "--health-port", str(health_port), "--bind-address", "127.0.0.1",
    ]  # fmt: skip
    log = tmp_path / "operator.log"
    try:
        server_side_apply(control_plane, manifest(ignored))  # exists before the operator starts
        with log.open("w") as sink:
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            server_side_apply(control_plane, manifest(watched))
            wait_phase(admin, watched, "Optimizing")
            # The count grows when a reconcile ends, after its status write, and kopf keeps a probe's
            # answer for a while: a read right after Optimizing may still say 0, a later one may not.
            health = until(
                "/healthz to count a reconcile",
                lambda: _reconciled(_answer(f"http://127.0.0.1:{health_port}/healthz")),
                timeout_s=60,
            )
            assert health["reconciles"] >= 1
            metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert f'optiserve_model_phase{{name="{MODEL}",namespace="{watched}",phase="Optimizing"}} 1.0' in metrics
            assert f'namespace="{ignored}"' not in metrics

            untouched = model(admin, ignored)
            assert "status" not in untouched and not untouched["metadata"].get("finalizers"), untouched["metadata"]
            assert names(admin, JOBS, ignored) == []
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=RUNNER_TIMEOUT_S) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        for name in (watched, ignored):
            drop_namespace(control_plane, admin, name)


def _reconciled(answer: str | None) -> dict[str, Any] | None:
    """The liveness answer once it counts at least one reconcile."""
    health = json.loads(answer) if answer is not None else None
    return health if isinstance(health, dict) and int(health.get("reconciles") or 0) >= 1 else None


def _answer(url: str) -> str | None:
    try:
        return http_get(url)
    except OSError:
        return None


# --- two replicas: one acts, the other takes over ----------------------------------------------------------------

LEASE_ENV = {
    "OPTISERVE_LEADER_ELECTION": "true",
    "OPTISERVE_LEASE_DURATION_SECONDS": "4",
    "OPTISERVE_LEASE_RENEW_DEADLINE_SECONDS": "3",
    "OPTISERVE_LEASE_RETRY_SECONDS": "0.5",
    "OPTISERVE_RESYNC_SECONDS": "0.5",
}
LEASES = Resource("coordination.k8s.io/v1", "Lease", "leases")
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


class Replica:
    """`optiserve operator` as one replica of the chart's Deployment would run it."""

    def __init__(self, pod_name: str, cluster: Cluster, namespace: str, workdir: Path) -> None:
        self.pod_name, self.log = pod_name, workdir / f"{pod_name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env |= LEASE_ENV | {"KUBECONFIG": str(cluster.kubeconfig), "POD_NAME": pod_name, "POD_NAMESPACE": namespace}
        command = [sys.executable, "-m", "optiserve.cli", "operator", "--verbose", "--namespace", namespace]
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def reconcile_times(self) -> list[datetime]:
        """When this replica's reconciler decided something (its debug lines)."""
        times = []
        for line in self.text().splitlines():
            if "optiserve.reconciler" in line and " generation " in line and line.startswith("["):
                times.append(datetime.strptime(line[1 : line.index("]")], LOG_TIME))
        return times

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Timeline:
    """The model's canary as polled every 0.1 s, and the Lease's holder."""

    rows: list[tuple[float, str, int, int, str]] = dataclasses.field(default_factory=list)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def follow(self, admin: KubeClient, namespace: str) -> None:
        selector = f"optiserve.io/model={MODEL},optiserve.io/variant"  # the serving pods, not the Job's
        while not self.stop.wait(0.1):
            found = admin.get(OPTIMIZED_MODELS, namespace, MODEL) or {}
            status = found.get("status") or {}
            canary = status.get("canary") or {}
            lease = admin.get(LEASES, namespace, "optiserve-operator") or {}
            holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
            row = (
                time.monotonic(),
                str(status.get("phase")),
                int(canary.get("step") or 0),
                int(canary.get("weight") or 0),
                holder,
            )
            self.rows.append(row)
            ready_new_pods(admin, namespace, selector)  # and play the kubelet

    def holder(self) -> str:
        return self.rows[-1][4] if self.rows else ""


def changes(values: list[int]) -> list[int]:
    """The values in order, each run of repeats kept once."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def stop_all_replicas(replicas: dict[str, Replica]) -> None:
    for replica in list(replicas.values()):
        replica.stop()


def canary_spec(namespace: str, prometheus: str) -> dict[str, Any]:
    document = manifest(namespace)
    document["spec"]["rollout"]["steps"] = [{"weight": 10}, {"weight": 50}, {"weight": 100}]
    document["spec"]["rollout"]["analysis"] = {
        "interval": "4s",
        "warmup": "2s",
        "scrapeInterval": "1s",
        "prometheus": {"address": prometheus},
        "metrics": [{"name": "latency", "maxRelativeIncrease": 0.5}, {"name": "errorRate", "maxAbsoluteIncrease": 0.05}],
    }
    return document


def test_two_replicas_one_acts_and_the_standby_takes_over_mid_canary(
    control_plane: Cluster, admin: KubeClient, namespace: str, tmp_path: Path
) -> None:
    """Two operators started together on the real API server: one leads, the other waits and does
    nothing. The leader is killed (SIGKILL) mid-canary: the standby takes the Lease once it
    expires and carries the same rollout on from `status.canary`, creating nothing twice. The
    killed one comes back as a standby; a SIGTERM to the leader (a rolling update) releases the
    Lease, and the other takes over at its next try."""
    counters = {v: TritonCounters(MODEL, namespace, seed=i) for i, v in enumerate(("candidate", "baseline"))}
    with contextlib.ExitStack() as stack:
        targets = {variant: stack.enter_context(serve_triton_metrics(c)) for variant, c in counters.items()}
        prometheus = stack.enter_context(PrometheusServer(targets, scrape_interval_s=1.0).start())
        document = canary_spec(namespace, prometheus.url)
        replicas = {name: Replica(name, control_plane, namespace, tmp_path) for name in ("op-a", "op-b")}
        stack.callback(stop_all_replicas, replicas)
        timeline = Timeline()
        follower = threading.Thread(target=timeline.follow, args=(admin, namespace), daemon=True)
        follower.start()
        stack.callback(follower.join, 10)
        stack.callback(timeline.stop.set)

        # Generation 1, promoted without a canary; then a new spec rolls out through one.
        server_side_apply(control_plane, document)
        until("the g1 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g1"))
        finish_job(admin, namespace, "minilm-optimize-g1")
        wait_phase(admin, namespace, "Promoted")
        until("the g1 candidate retired", lambda: names(admin, DEPLOYMENTS, namespace) == ["minilm-baseline"], timeout_s=90)
        changed = canary_spec(namespace, prometheus.url)
        changed["spec"]["validation"]["maxDegradation"] = 0.02
        server_side_apply(control_plane, changed)
        until("the g2 Job", lambda: admin.get(JOBS, namespace, "minilm-optimize-g2"))
        finish_job(admin, namespace, "minilm-optimize-g2")
        until("the canary at its second step", lambda: timeline.rows and timeline.rows[-1][2] >= 2, timeout_s=120)

        leader = next(r for r in replicas.values() if timeline.holder().startswith(f"{r.pod_name}_"))
        standby = next(r for r in replicas.values() if r is not leader)
        before = {r: uids(admin, r, namespace) for r in (JOBS, DEPLOYMENTS)}
        step_at_kill = timeline.rows[-1][2]
        started_at = model(admin, namespace)["status"]["canary"]["progress"]["started_at"]
        assert standby.reconcile_times() == [], "the standby acted while the other held the Lease"
        assert "standby: waiting for Lease" in standby.text()

        leader.process.kill()  # the node is gone: no release, the Lease must expire
        killed_at, killed_wall = time.monotonic(), datetime.now()
        leader.process.wait()
        until("the standby to hold the Lease", lambda: timeline.holder().startswith(f"{standby.pod_name}_"), timeout_s=60)
        took_over_s = time.monotonic() - killed_at
        promoted = wait_phase(admin, namespace, "Promoted")
        assert promoted["status"]["pipelineGeneration"] == 2 and promoted["status"]["canary"]["state"] == "Promoted"
        assert promoted["status"]["canary"]["progress"]["started_at"] == started_at, "the canary started again"

        after_kill = [row for row in timeline.rows if row[0] > killed_at]
        steps = [row[2] for row in after_kill if row[1] == "Canary"]
        assert steps and min(steps) >= step_at_kill, f"the rollout went back: {step_at_kill} then {steps}"
        first_act = min(standby.reconcile_times())
        assert first_act > killed_wall, "the standby acted before the leader was gone"
        assert names(admin, JOBS, namespace) == ["minilm-optimize-g2"]
        assert uids(admin, JOBS, namespace) == before[JOBS], "the Job was created again"
        kept = {name: uid for name, uid in before[DEPLOYMENTS].items() if name in uids(admin, DEPLOYMENTS, namespace)}
        assert kept == {n: u for n, u in uids(admin, DEPLOYMENTS, namespace).items() if n in before[DEPLOYMENTS]}
        canary_steps = [row[2] for row in timeline.rows if row[1] == "Canary"]
        assert canary_steps == sorted(canary_steps), "the canary's steps went back and forth"
        weight_changes = changes([row[3] for row in timeline.rows if row[1] == "Canary"])
        assert weight_changes == sorted(set(weight_changes)), f"a weight was set more than once: {weight_changes}"

        # The killed pod restarts as a standby; a rolling update then stops the leader cleanly.
        returned = Replica("op-a2", control_plane, namespace, tmp_path)
        replicas["op-a2"] = returned
        until("the restarted replica to wait", lambda: "standby: waiting for Lease" in returned.text(), timeout_s=60)
        standby.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert standby.process.wait(timeout=RUNNER_TIMEOUT_S) == 0, standby.text()[-3000:]
        until("the restarted replica to hold the Lease", lambda: timeline.holder().startswith("op-a2_"), timeout_s=60)
        handed_over_s = time.monotonic() - stopped_at
        admin.delete(DEPLOYMENTS, namespace, "minilm-baseline")  # the new leader acts: it recreates what serves
        until("the baseline recreated by the new leader", lambda: admin.get(DEPLOYMENTS, namespace, "minilm-baseline"))

    figures = {"took_over_after_kill_s": round(took_over_s, 1), "handed_over_after_sigterm_s": round(handed_over_s, 1)}
    print(f"FIGURE {json.dumps({'item': 'standby', 'lease_duration_s': 4, **figures})}", file=sys.__stdout__, flush=True)
