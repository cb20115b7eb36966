"""A candidate tritonserver that cannot load its model (issue 8, item 4).

Local mode: the optimization output is faithfully published (its manifest matches) but the model
is broken, as a faulty exporter or a config the server refuses would leave it, so only Triton can
tell. `optiserve run` must fail naming Triton's load error and send the candidate nothing: nginx
never starts, no weight is set, the candidate receives no request.

Operator: the candidate Deployment's pod crash-loops the way the kubelet reports a tritonserver
that exits on a load error (its log tail kept as the termination message). The resource must stay
in Deploying with reason Degraded and the load error in its message, until the deploy deadline
turns it into ProgressDeadlineExceeded; the router's weight never goes above 0.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kopf.testing import KopfRunner

from optiserve.api.status import Phase
from optiserve.cli import main
from optiserve.kube.client import DEPLOYMENTS, PODS, KubeClient
from optiserve.local.job_cache import JobOutputs, request_digest
from optiserve.local.run_report import load_report
from optiserve.local.triton import load_failures
from optiserve.resources.names import GENERATION_LABEL
from optiserve.settings import Settings
from optiserve_jobs.repository import seal
from tests.reliability.digits import MODEL as DIGITS
from tests.reliability.digits import DigitsWorkspace
from tests.reliability.figures import report_figure
from tests.support.canary_fakes import QUICK_ROLLOUT, Fakes
from tests.support.emulated_cluster import (
    DISCOVERY,
    MODEL,
    NAMESPACE,
    OPTIMIZED_MODELS,
    WAIT_S,
    conditions_of,
    finish_job,
    job_key,
    make_ready,
    model_objects,
    promote_first_candidate,
    status_of,
    wait_for,
    wait_phase,
)
from tests.support.job_results import SECOND, SHA
from tests.support.kube_emulator import KubeEmulator, RunningEmulator, emulator_fixtures
from tests.support.operator_runner import KopfRun, running_operator

emulator, kube = emulator_fixtures(DISCOVERY)
PYTHON_MODEL_DIR = Path("model_repository_python") / DIGITS


# ---------------------------------------------------------------- Triton's own words


TRITON_LOG = (
    'E1123 02:19:13.507901 21729 backend_model.cc:692] "ERROR: Failed to create instance: InvalidProtobuf: ..."\n'
    "E1123 02:19:13.508041 21729 model_lifecycle.cc:642] \"failed to load 'digits' version 1: Internal: InvalidProtobuf: "
    "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from /m/digits/1/model.onnx failed:Protobuf parsing failed."
    '\\n\\nAt:\\n  /m/digits/1/model.py(283): initialize\\n"\n'
    "I1123 02:19:13.508064 21729 model_lifecycle.cc:777] \"failed to load 'digits'\"\n"
    "E1123 02:22:39.501659 25813 model_lifecycle.cc:642] \"failed to load 'digits' version 1: Invalid argument: "
    'instance group digits_0 of model digits has kind KIND_GPU but no GPUs are available"\n'
    "error: creating server: Internal - failed to load all models\n"
)
"""Lines of tritonserver 2.51's log for the two faults below (paths shortened)."""


def test_triton_load_failures_are_read_from_its_log() -> None:
    assert load_failures(TRITON_LOG) == [
        "failed to load 'digits' version 1: Internal: InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : "
        "Load model from /m/digits/1/model.onnx failed:Protobuf parsing failed.",
        "failed to load 'digits' version 1: Invalid argument: instance group digits_0 of model digits has kind "
        "KIND_GPU but no GPUs are available",
    ]
    assert load_failures("I1123 server.cc:674] all models ready\n") == []


# ---------------------------------------------------------------- local mode


def _truncate_model(candidate: Path) -> None:
    model = candidate / PYTHON_MODEL_DIR / "1" / "model.onnx"
    model.write_bytes(model.read_bytes()[:2000])


def _ask_for_a_gpu(candidate: Path) -> None:
    config = candidate / PYTHON_MODEL_DIR / "config.pbtxt"
    text = config.read_text()
    assert "kind: KIND_CPU" in text
    config.write_text(text.replace("kind: KIND_CPU", "kind: KIND_GPU"))


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt-model": (_truncate_model, "Protobuf parsing failed"),
    "config-refused": (_ask_for_a_gpu, "has kind KIND_GPU but no GPUs are available"),
}


@pytest.mark.slow
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_optiserve_run_fails_naming_the_load_error_and_sends_the_candidate_nothing(
    digits_workspace: DigitsWorkspace, digits_outputs: JobOutputs, tmp_path: Path, breakage: str
) -> None:
    manifest = digits_workspace.manifest(DIGITS)
    key = request_digest(digits_workspace.request(manifest))
    cache = tmp_path / "cache"
    shutil.copytree(digits_workspace.cache / key, cache / key)
    candidate = cache / key / "candidate"
    breaking, triton_says = BREAKAGES[breakage]
    breaking(candidate)
    seal(candidate, DIGITS)  # published as it is: the manifest matches, only Triton can tell

    report_dir = tmp_path / "report"
    started = time.monotonic()
    code = main(["run", "-f", str(manifest), "--report", str(report_dir), "--job-cache", str(cache), "--no-live"])
    took_s = time.monotonic() - started

    report = load_report(report_dir)
    assert code == 1
    assert report.run.outcome.value == "failed"
    assert report.run.reason.startswith("TritonStartError: the candidate tritonserver: "), report.run.reason
    assert "failed to load 'digits' version 1" in report.run.reason and triton_says in report.run.reason
    phases = [entry.phase for entry in report.run.phases]
    assert phases[-2:] == [Phase.DEPLOYING, Phase.FAILED] and Phase.CANARY not in phases, "no canary, so no traffic"
    assert report.latency_series.weight_changes == (), "no weight was ever set"
    assert report.traffic.candidate.sent == 0
    assert triton_says in (report_dir / "logs" / "triton-candidate.log").read_text()
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(cache) in " ".join(p.info["cmdline"] or [])]
    assert left == [], "a tritonserver of this run is still running"
    report_figure(f"4-local-{breakage}", exit_code=code, reason=report.run.reason[:160], run_s=round(took_s, 1))


# ---------------------------------------------------------------- operator


DEADLINE_S = 8.0
KUBELET_MESSAGE = "back-off 10s restarting failed container=triton pod=minilm-candidate-5d8f7-x2x9z_ml"
TRITON_LOG_TAIL = (
    "| exit_timeout                     | 30  |\n"
    "+----------------------------------+-----+\n"
    "\n"
    'I1123 02:19:13.511989 1 server.cc:305] "Waiting for in-flight requests to complete."\n'
    "error: creating server: Invalid argument - load failed for model 'minilm': version 1 is at UNAVAILABLE state: "
    "Internal: InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from "
    "/models/minilm/g2/model_repository/minilm/1/model.onnx failed:Protobuf parsing failed.\n"
    "\n"
    "At:\n"
    "  /models/minilm/g2/model_repository/minilm/1/model.py(283): initialize\n"
    ";\n"
)
"""The end of tritonserver's output when the model of `--load-model` fails (explicit model control,
exit on error), as the kubelet keeps it with terminationMessagePolicy FallbackToLogsOnError."""
LOAD_ERROR = "load failed for model 'minilm'"


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def operator(emulator: RunningEmulator[KubeEmulator], fakes: Fakes) -> Iterator[KopfRunner]:
    settings = Settings(resync_seconds=0.2, deploy_deadline_seconds=DEADLINE_S)
    with running_operator(
        KubeClient.for_host(emulator.url), settings=settings, hooks=fakes.hooks(), kopf=KopfRun(verbose=False), timeout_s=WAIT_S
    ) as runner:
        yield runner


def _crash_looping_pod(deployment: dict[str, Any]) -> dict[str, Any]:
    labels = {
        **deployment["spec"]["selector"]["matchLabels"],
        GENERATION_LABEL: deployment["metadata"]["labels"][GENERATION_LABEL],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{deployment['metadata']['name']}-5d8f7-x2x9z", "namespace": NAMESPACE, "labels": labels},
        "spec": {"containers": [{"name": "triton", "image": "nvcr.io/nvidia/tritonserver:24.10-py3"}]},
    }


def _crash_loop_status() -> dict[str, Any]:
    container = {
        "name": "triton",
        "ready": False,
        "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": KUBELET_MESSAGE}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": TRITON_LOG_TAIL}},
    }
    return {"phase": "Running", "containerStatuses": [container]}


def _start_g2_without_a_ready_candidate(kube: KubeClient, rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    promote_first_candidate(kube)
    make_ready(kube, wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline"))
    wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"] or None, "the g1 candidate retired")
    kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"rollout": rollout or QUICK_ROLLOUT}})
    finish_job(kube, wait_for(lambda: kube.get(*job_key(2)), "the g2 Job")["metadata"]["name"], SECOND)

    def g2_candidate() -> dict[str, Any] | None:
        found = kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate")
        return found if found and found["metadata"]["labels"].get(GENERATION_LABEL) == "2" else None

    return wait_for(g2_candidate, "the g2 candidate Deployment")


@pytest.mark.usefixtures("operator")
def test_a_candidate_that_cannot_load_is_degraded_before_the_deadline_and_gets_no_traffic(kube: KubeClient, fakes: Fakes) -> None:
    candidate = _start_g2_without_a_ready_candidate(kube)
    weights_before = len(fakes.router.history)
    pod = _crash_looping_pod(candidate)
    kube.create(PODS, NAMESPACE, pod)
    reported = time.monotonic()
    kube.patch(PODS, NAMESPACE, pod["metadata"]["name"], {"status": _crash_loop_status()}, subresource="status")

    def degraded() -> dict[str, Any] | None:
        status = status_of(kube)
        return status if conditions_of(status).get("Ready", {}).get("reason") == "Degraded" else None

    status = wait_for(degraded, "reason Degraded")
    degraded_after_s = time.monotonic() - reported
    assert status["phase"] == "Deploying"
    assert LOAD_ERROR in status["message"], status["message"]
    conditions = conditions_of(status)
    assert conditions["Degraded"]["status"] == "True"
    assert "CrashLoopBackOff" in status["message"] and "Protobuf parsing failed" in status["message"]

    failed = wait_phase(kube, "Failed")
    assert conditions_of(failed)["Ready"]["reason"] == "ProgressDeadlineExceeded"
    assert LOAD_ERROR in failed["message"], "the deadline's message keeps the reason"
    assert failed["artifact"]["sha256"] == SHA, "the baseline keeps serving the promoted artifact"
    assert all(weight == 0 for weight in fakes.router.history[weights_before:]), fakes.router.history
    assert fakes.router.weight == 0
    report_figure(
        "4-operator", degraded_after_s=round(degraded_after_s, 2), deadline_s=DEADLINE_S, message=status["message"][:200]
    )


@pytest.mark.usefixtures("operator")
def test_a_candidate_that_stops_serving_mid_canary_is_degraded_then_rolled_back(kube: KubeClient, fakes: Fakes) -> None:
    """Its metrics just stop, which the judge alone reads as no data and holds on for a person (found on
    real pods: a corrupted artifact held a canary for 11 minutes). The pod says why: the model is
    Degraded with the cause, the traffic goes back to the baseline, and after the deploy deadline it
    is rolled back."""
    held = {**QUICK_ROLLOUT, "steps": [{"weight": 10, "pause": "1h"}, {"weight": 100}]}
    candidate = _start_g2_without_a_ready_candidate(kube, held)
    make_ready(kube, candidate)
    wait_for(lambda: fakes.router.weight == 10 or None, "the candidate at weight 10")

    stopped = {"observedGeneration": candidate["metadata"]["generation"], "replicas": 1, "readyReplicas": 0}
    kube.patch(DEPLOYMENTS, NAMESPACE, "minilm-candidate", {"status": stopped}, subresource="status")
    pod = _crash_looping_pod(candidate)
    kube.create(PODS, NAMESPACE, pod)
    kube.patch(PODS, NAMESPACE, pod["metadata"]["name"], {"status": _crash_loop_status()}, subresource="status")

    def degraded() -> dict[str, Any] | None:
        status = status_of(kube)
        return status if conditions_of(status).get("Degraded", {}).get("status") == "True" else None

    status = wait_for(degraded, "Degraded")
    assert status["phase"] == "Canary" and LOAD_ERROR in status["message"], status["message"]
    wait_for(lambda: fakes.router.weight == 0 or None, "the candidate's traffic on the baseline")

    rolled_back = wait_phase(kube, "RolledBack")
    assert conditions_of(rolled_back)["Ready"]["reason"] == "CandidateFailed"
    assert LOAD_ERROR in rolled_back["message"] and "baseline serves" in rolled_back["message"]
    assert rolled_back["canary"]["state"] == "RolledBack"
    assert rolled_back["artifact"]["sha256"] == SHA, "the baseline keeps the promoted artifact"
    assert fakes.router.weight == 0
    wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"] or None, "the candidate retired")
