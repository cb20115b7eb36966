"""The operator in-process (kopf's KopfRunner) against an emulated Kubernetes API.

The tests play the cluster's part: they finish Jobs (a Complete condition and a pod whose
container terminated with a JobResult) and make Deployments ready, and they watch what the
operator creates, adopts, removes and reports. Waits are bounded polls that fail with the last
state seen; nothing asserts on how fast anything happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner

from optiserve.kube.client import DEPLOYMENTS, JOBS, SERVICES, KubeClient
from optiserve.resources.job import restricted_security_context
from optiserve.settings import Settings
from tests.support.emulated_cluster import (
    DISCOVERY,
    EVENTS,
    MODEL,
    NAMESPACE,
    OPTIMIZED_MODELS,
    WAIT_S,
    conditions_of,
    finish_job,
    make_ready,
    minilm_manifest,
    model_objects,
    promote_first_candidate,
    status_of,
    wait_condition,
    wait_for,
    wait_phase,
)
from tests.support.job_results import GATE_FAILED, PASSED, SHA
from tests.support.kube_emulator import KubeEmulator, RunningEmulator, emulator_fixtures
from tests.support.operator_runner import running_operator

emulator, kube = emulator_fixtures(DISCOVERY)


OperatorFactory = Callable[[], contextlib.AbstractContextManager[KopfRunner]]


@pytest.fixture
def start_operator(emulator: RunningEmulator[KubeEmulator]) -> OperatorFactory:
    """Start the operator in-process; it logs in with the client pointed at the emulator."""

    def start() -> contextlib.AbstractContextManager[KopfRunner]:
        return running_operator(KubeClient.for_host(emulator.url), settings=Settings(resync_seconds=0.2), timeout_s=WAIT_S)

    return start


@pytest.fixture
def operator(start_operator: OperatorFactory) -> Iterator[KopfRunner]:
    with start_operator() as runner:
        yield runner


@pytest.mark.usefixtures("operator")
def test_a_new_model_is_optimized_deployed_and_promoted(kube: KubeClient) -> None:
    kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())

    job = wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
    assert model_objects(kube, JOBS) == ["minilm-optimize-g1"]
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["securityContext"] == restricted_security_context()
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    optimizing = wait_phase(kube, "Optimizing")
    assert conditions_of(optimizing)["Ready"]["status"] == "False"

    finish_job(kube, "minilm-optimize-g1", PASSED)
    candidate = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate"), "the candidate Deployment")
    assert wait_for(lambda: kube.get(SERVICES, NAMESPACE, "minilm-candidate"), "the candidate Service")
    assert candidate["metadata"]["labels"]["optiserve.io/generation"] == "1"
    assert kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline") is None, "the first candidate has no baseline to compare with"
    assert wait_phase(kube, "Deploying")["conditions"]

    make_ready(kube, candidate)
    status = wait_phase(kube, "Promoted")
    conditions = conditions_of(status)
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "BaselineStarting")
    make_ready(kube, wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline Deployment"))
    status = wait_condition(kube, "Ready", "True")
    conditions = conditions_of(status)
    assert conditions["Ready"]["observedGeneration"] == 1
    assert conditions["Optimized"]["status"] == "True" and conditions["Validated"]["status"] == "True"
    assert conditions["Progressing"]["status"] == "False" and conditions["Degraded"]["status"] == "False"
    assert status["observedGeneration"] == 1
    assert status["optimization"] == {"speedup": 2.5, "sizeRatio": 0.26, "fidelityMean": 0.997, "fidelityMin": 0.985}
    assert status["artifact"]["sha256"] == SHA
    baseline = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline Deployment")
    assert baseline["metadata"]["labels"]["optiserve.io/generation"] == "1"
    assert baseline["metadata"]["annotations"]["optiserve.io/artifact-sha256"] == SHA
    assert baseline["spec"]["replicas"] == 2

    def phase_events() -> list[str]:
        return [
            e.get("message", "") for e in kube.select(EVENTS, NAMESPACE, "") if e.get("involvedObject", {}).get("name") == MODEL
        ]

    def with_promotion() -> list[str] | None:
        messages = phase_events()
        return messages if any("-> Promoted" in m for m in messages) else None

    messages = wait_for(with_promotion, "the Promoted event")
    assert any(m.startswith("Pending -> Optimizing") for m in messages), messages


@pytest.mark.usefixtures("operator")
def test_after_promotion_the_baseline_is_kept_and_the_candidate_retired(kube: KubeClient) -> None:
    promote_first_candidate(kube)
    baseline = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline Deployment")
    assert model_objects(kube, DEPLOYMENTS) == ["minilm-baseline", "minilm-candidate"]  # not retired before the baseline serves
    make_ready(kube, baseline)

    def candidate_gone() -> bool | None:
        # The Deployment and then its Service are deleted: wait for both, not the first alone.
        # The replica-ratio router (the default provider) serves the model through one Service over both variants.
        retired = model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"]
        return True if retired and model_objects(kube, SERVICES) == ["minilm", "minilm-baseline"] else None

    wait_for(candidate_gone, "the candidate retired once the baseline is ready")
    kube.delete(DEPLOYMENTS, NAMESPACE, "minilm-baseline")  # someone deletes what serves
    recreated = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline recreated")
    assert recreated["metadata"]["annotations"]["optiserve.io/artifact-sha256"] == SHA
    assert status_of(kube)["phase"] == "Promoted"


@pytest.mark.usefixtures("operator")
def test_a_promoted_baseline_slow_to_start_keeps_its_replicas(kube: KubeClient) -> None:
    """With the replica-ratio router, pinning traffic on the candidate until the baseline is ready
    would scale the baseline to 0 pods, and it would never be ready: the candidate would serve
    for ever. Here the baseline stays unready for many resyncs (0.2 s apart)."""
    promote_first_candidate(kube)
    wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline Deployment")
    seen: set[int] = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        seen.add(int((kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline") or {})["spec"]["replicas"]))
        time.sleep(0.05)
    assert seen == {2}, f"the baseline's replicas while it started: {sorted(seen)}"
    assert kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate") is not None, "the candidate serves meanwhile"
    make_ready(kube, wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline"))
    wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"] or None, "the candidate retired")


@pytest.mark.usefixtures("operator")
def test_an_invalid_spec_fails_with_the_field_named(kube: KubeClient) -> None:
    document = minilm_manifest()
    document["spec"]["optimization"]["passes"] = [{"type": "quantize", "mode": "static"}]  # no calibration
    kube.create(OPTIMIZED_MODELS, NAMESPACE, document)  # the emulator, like a cluster without the CRD's CEL, accepts it

    status = wait_phase(kube, "Failed")
    assert "spec.optimization.passes[0].calibration" in status["message"]
    ready = conditions_of(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert conditions_of(status)["Degraded"]["status"] == "True"
    assert model_objects(kube, JOBS) == []


def _distilled(name: str, deadline_seconds: int) -> dict[str, Any]:
    """The example pruned and distilled before its export, with its own Job deadline."""
    document = minilm_manifest()
    document["metadata"]["name"] = name
    document["spec"]["optimization"] = {
        "passes": [
            {"type": "prune", "heads": 8, "importance": "magnitude"},
            {"type": "distill", "datasetUri": "data/train.txt", "maxTrainingSeconds": 1800, "layers": 4},
            {"type": "export"},
        ],
        "deadlineSeconds": deadline_seconds,
    }
    return document


def test_the_job_takes_the_specs_deadline_and_the_training_resources(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator]
) -> None:
    settings = Settings(resync_seconds=0.2, job_max_deadline_seconds=7200)
    with running_operator(KubeClient.for_host(emulator.url), settings=settings, timeout_s=WAIT_S):
        kube.create(OPTIMIZED_MODELS, NAMESPACE, _distilled("distilled", 5400))
        kube.create(OPTIMIZED_MODELS, NAMESPACE, _distilled("too-long", 9000))

        job = wait_for(lambda: kube.get(JOBS, NAMESPACE, "distilled-optimize-g1"), "the distilled model's Job")
        assert job["spec"]["activeDeadlineSeconds"] == 5400
        resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources == settings.job_settings().training_resources.manifest()
        assert resources["limits"]["memory"] == "12Gi"

        status = wait_phase(kube, "Failed", name="too-long")
        assert status["message"] == (
            "spec.optimization.deadlineSeconds: 9000 s is more than the 7200 s this operator allows an optimization "
            "Job (its OPTISERVE_JOB_MAX_DEADLINE_SECONDS, Helm value optimizer.maxDeadlineSeconds)"
        )
        assert conditions_of(status)["Ready"]["reason"] == "InvalidSpec"
        assert kube.get(JOBS, NAMESPACE, "too-long-optimize-g1") is None


@pytest.mark.usefixtures("operator")
def test_a_failed_gate_fails_and_deploys_nothing(kube: KubeClient) -> None:
    kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
    wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
    finish_job(kube, "minilm-optimize-g1", GATE_FAILED)

    status = wait_phase(kube, "Failed")
    assert "fidelity_mean" in status["message"]
    conditions = conditions_of(status)
    assert (conditions["Validated"]["status"], conditions["Validated"]["reason"]) == ("False", "GatesFailed")
    assert conditions["Ready"]["status"] == "False"
    assert model_objects(kube, DEPLOYMENTS) == []
    assert kube.get(SERVICES, NAMESPACE, "minilm-candidate") is None


def test_a_lost_create_response_is_retried_and_the_job_adopted(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator], start_operator: OperatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # kmock stores a created object even when a reaction answers instead: the API committed the
    # Job but the operator saw a 503, as after a timeout. A retry must find it, not make another.
    job_posts = emulator.emulator[f"post /apis/batch/v1/namespaces/{NAMESPACE}/jobs"]
    job_posts[:1] << 503
    with start_operator():
        kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
        wait_phase(kube, "Optimizing")
        assert model_objects(kube, JOBS) == ["minilm-optimize-g1"]
    retried = [r.getMessage() for r in caplog.records if "failed temporarily" in r.getMessage()]
    assert any("HTTP 503" in message for message in retried), "a 503 is a TransientError: kopf retries after a delay"


@pytest.mark.usefixtures("operator")
def test_a_drifted_candidate_is_patched_back(kube: KubeClient) -> None:
    kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
    wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
    finish_job(kube, "minilm-optimize-g1", PASSED)
    wanted = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate"), "the candidate Deployment")

    drift = {"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "triton", "image": "elsewhere/triton"}]}}}}
    kube.patch(DEPLOYMENTS, NAMESPACE, "minilm-candidate", drift)

    def restored() -> dict[str, Any] | None:
        live = kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate")
        return live if live is not None and live["spec"] == wanted["spec"] else None

    live = wait_for(restored, "the candidate's spec patched back")
    assert live["metadata"]["uid"] == wanted["metadata"]["uid"], "patched in place, not re-created"


def test_a_restarted_operator_adopts_the_job_it_created(kube: KubeClient, start_operator: OperatorFactory) -> None:
    with start_operator():
        kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
        job = wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
        wait_phase(kube, "Optimizing")

    with start_operator():
        finish_job(kube, "minilm-optimize-g1", PASSED)
        candidate = wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate"), "the candidate Deployment")
        make_ready(kube, candidate)
        wait_phase(kube, "Promoted")

    jobs = kube.select(JOBS, NAMESPACE, f"optiserve.io/model={MODEL}")
    assert [j["metadata"]["uid"] for j in jobs] == [job["metadata"]["uid"]], "the Job was created once and kept"


@pytest.mark.usefixtures("operator")
def test_a_spec_change_starts_a_new_generation_and_removes_the_old_children(kube: KubeClient) -> None:
    promote_first_candidate(kube)

    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"validation": {"maxDegradation": 0.01}}})

    wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g2"), "the g2 Job")
    wait_for(lambda: model_objects(kube, JOBS) == ["minilm-optimize-g2"], "only the g2 Job left")
    wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"], "the g1 candidate removed, the baseline kept")
    status = wait_phase(kube, "Optimizing")
    assert status["observedGeneration"] == 2
    assert "optimization" not in status, "the g1 summary no longer describes the spec"
    assert status["artifact"]["sha256"] == SHA, "the baseline still serves the g1 artifact"
    baseline = kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline")
    assert baseline is not None and baseline["metadata"]["labels"]["optiserve.io/generation"] == "1"


def test_the_cli_runs_the_operator_from_a_kubeconfig(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator], tmp_path: Path
) -> None:
    """`optiserve operator` as users start it: its own process, credentials from $KUBECONFIG."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": emulator.url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        "current-context": "emulator",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}  # not "in-cluster"
    env |= {"KUBECONFIG": str(tmp_path / "kubeconfig"), "OPTISERVE_RESYNC_SECONDS": "0.2"}
    log = tmp_path / "operator.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "optiserve.cli", "operator", "--all-namespaces"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
            wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
            wait_phase(kube, "Optimizing")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=WAIT_S) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
