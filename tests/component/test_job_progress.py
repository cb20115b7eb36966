"""The running pass of an optimization Job, read from its pod's log through the API: the emulator
serves `pods/log` as the API server does, the client reads the pass from it or nothing (never an
error), and the operator shows it in status.optimization.currentPass, the message and a PassStarted
Event while the Job runs.

The tests play the kubelet: they start the Job's pod and write its log. Where a test checks that
something did not change, it first waits until the operator has read the log again (counted on the
emulator's requests), never for a time.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner

from optiserve.kube.client import PODS, KubeClient
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
    job_pod,
    minilm_manifest,
    start_job_pod,
    status_of,
    wait_for,
    wait_phase,
)
from tests.support.job_results import PASSED
from tests.support.kube_emulator import KubeEmulator, RunningEmulator, emulator_fixtures
from tests.support.operator_runner import running_operator

emulator, kube = emulator_fixtures(DISCOVERY)

JOB = "minilm-optimize-g1"
POD = job_pod(JOB)
LOG_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}/log"


def _get(emulated: RunningEmulator[KubeEmulator], path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{emulated.url}{path}", timeout=WAIT_S) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


# --- the emulator serves pods/log ---------------------------------------------------------------------------------


def test_the_emulator_serves_a_pods_log_as_text_and_refuses_what_the_api_server_refuses(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator]
) -> None:
    assert _get(emulator, LOG_PATH)[0] == 404, "no such pod"
    start_job_pod(kube, JOB, started=False)
    code, body = _get(emulator, LOG_PATH)
    assert code == 400, body
    assert json.loads(body)["message"] == f'container "optimize" in pod "{POD}" is waiting to start: ContainerCreating'
    start_job_pod(kube, JOB)
    assert _get(emulator, LOG_PATH) == (200, ""), "started, nothing written yet"
    emulator.emulator.write_log(NAMESPACE, POD, "one\ntwo\nthree\n")
    assert _get(emulator, LOG_PATH) == (200, "one\ntwo\nthree\n")
    assert _get(emulator, f"{LOG_PATH}?container=optimize&tailLines=2") == (200, "two\nthree\n")
    assert _get(emulator, f"{LOG_PATH}?container=sidecar")[0] == 400


# --- the client reads the pass, or nothing -------------------------------------------------------------------------


def test_the_client_reads_the_pass_from_the_newest_started_pod(kube: KubeClient, emulator: RunningEmulator[KubeEmulator]) -> None:
    assert kube.observe_running_pass(NAMESPACE, JOB) is None, "no pod yet"
    start_job_pod(kube, JOB, started=False)
    assert kube.observe_running_pass(NAMESPACE, JOB) is None, "a container not started has no log"
    start_job_pod(kube, JOB)
    emulator.emulator.write_log(NAMESPACE, POD, "2026-12-04 02:37:39,101 INFO loading the source model\n")
    assert kube.observe_running_pass(NAMESPACE, JOB) is None, "no pass line yet"
    emulator.emulator.write_log(NAMESPACE, POD, "2026-12-04 02:37:41,512 INFO pass 1/3: prune\n")
    found = kube.observe_running_pass(NAMESPACE, JOB)
    assert found is not None and found.label == "1/3 prune"
    emulator.emulator.write_log(NAMESPACE, POD, "".join(f"distill: step {i}/500\n" for i in range(300)))
    assert kube.observe_running_pass(NAMESPACE, JOB) is None, "the pass line left the tail the client reads"


@pytest.mark.parametrize("refusal", [403, 404, 503])
def test_a_log_the_api_will_not_give_is_no_pass_and_no_error(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator], refusal: int
) -> None:
    start_job_pod(kube, JOB)
    emulator.emulator.write_log(NAMESPACE, POD, "pass 1/3: prune\n")
    emulator.emulator[f"get {LOG_PATH}"] << refusal
    assert kube.observe_running_pass(NAMESPACE, JOB) is None
    assert len(emulator.emulator[f"get {LOG_PATH}"]) == 1, "the log was asked for, and the refusal taken"


def test_an_unreadable_pod_list_is_no_pass_and_no_error(kube: KubeClient, emulator: RunningEmulator[KubeEmulator]) -> None:
    emulator.emulator[f"get /api/v1/namespaces/{NAMESPACE}/pods"] << 503
    assert kube.observe_running_pass(NAMESPACE, JOB) is None


# --- the operator shows it -----------------------------------------------------------------------------------------


@pytest.fixture
def operator(emulator: RunningEmulator[KubeEmulator]) -> Iterator[KopfRunner]:
    with running_operator(KubeClient.for_host(emulator.url), settings=Settings(resync_seconds=0.2), timeout_s=WAIT_S) as runner:
        yield runner


def _pass_events(kube: KubeClient) -> list[str]:
    return [
        e.get("message", "")
        for e in kube.select(EVENTS, NAMESPACE, "")
        if e.get("involvedObject", {}).get("name") == MODEL and e.get("reason") == "PassStarted"
    ]


def _after_more_reads(emulated: RunningEmulator[KubeEmulator], path: str, reads: int = 3) -> None:
    """Wait until the operator has asked the API for `path` `reads` more times (each a later reconcile)."""
    requests = emulated.emulator[f"get {path}"]
    seen = len(requests)
    wait_for(lambda: len(requests) >= seen + reads or None, f"{reads} more reads of {path}")


def _current_pass(kube: KubeClient) -> str | None:
    return (status_of(kube).get("optimization") or {}).get("currentPass")


def test_the_operator_shows_the_running_pass_and_posts_an_event_when_it_changes(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator], operator: KopfRunner
) -> None:
    kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
    wait_phase(kube, "Optimizing")

    start_job_pod(kube, JOB, started=False)
    _after_more_reads(emulator, f"/api/v1/namespaces/{NAMESPACE}/pods")
    start_job_pod(kube, JOB)
    emulator.emulator.write_log(NAMESPACE, POD, "2026-12-04 02:37:39,101 INFO loading the source model\n")
    _after_more_reads(emulator, LOG_PATH)
    status = status_of(kube)
    assert (status["phase"], _current_pass(kube)) == ("Optimizing", None), "a pod not started, a log without a pass"
    assert status["message"] == "optimization job for generation 1 is running"

    emulator.emulator.write_log(NAMESPACE, POD, "2026-12-04 02:37:41,512 INFO pass 1/3: export\n")
    wait_for(lambda: _current_pass(kube) == "1/3 export" or None, "currentPass 1/3 export")
    emulator.emulator.write_log(NAMESPACE, POD, "2026-12-04 02:37:52,007 INFO pass 2/3: quantize\nquantize: calibrating\n")
    wait_for(lambda: _current_pass(kube) == "2/3 quantize" or None, "currentPass 2/3 quantize")
    status = status_of(kube)
    assert status["message"] == "optimization job for generation 1 is running: pass 2/3 quantize"
    assert conditions_of(status)["Optimized"]["message"] == "the optimization job is running: pass 2/3 quantize"

    # The pass line scrolls out of the tail the operator reads: the status keeps the pass it named.
    emulator.emulator.write_log(NAMESPACE, POD, "".join(f"quantize: node {i}\n" for i in range(300)))
    _after_more_reads(emulator, LOG_PATH)
    assert (_current_pass(kube), status_of(kube)["message"]) == (
        "2/3 quantize",
        "optimization job for generation 1 is running: pass 2/3 quantize",
    )
    events = wait_for(lambda: _pass_events(kube) if len(_pass_events(kube)) >= 2 else None, "two PassStarted events")
    assert sorted(events) == ["the optimization job started pass 1/3 export", "the optimization job started pass 2/3 quantize"]

    finish_job(kube, JOB, PASSED)
    status = wait_phase(kube, "Deploying")
    assert status["optimization"] == {"speedup": 2.5, "sizeRatio": 0.26, "fidelityMean": 0.997, "fidelityMin": 0.985}
    assert len(_pass_events(kube)) == 2, "one Event per pass, none for the same pass read again"


def test_the_operator_goes_on_when_it_may_not_read_logs(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator], operator: KopfRunner
) -> None:
    """An installation whose RBAC lacks pods/log: the pipeline runs as before, without the pass."""
    emulator.emulator[f"get {LOG_PATH}"] << 403
    kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
    wait_phase(kube, "Optimizing")
    start_job_pod(kube, JOB)
    emulator.emulator.write_log(NAMESPACE, POD, "pass 1/3: export\n")
    _after_more_reads(emulator, LOG_PATH)
    assert (status_of(kube)["phase"], _current_pass(kube)) == ("Optimizing", None)
    assert kube.get(PODS, NAMESPACE, POD) is not None
    finish_job(kube, JOB, PASSED)
    wait_phase(kube, "Deploying")
