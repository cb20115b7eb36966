"""Operating the operator, in-process against the emulated API: its metrics and health endpoints, and
deletion through its finalizer (mid-flight, after promotion, while the operator is down).

The emulator runs no garbage collector, so every child that disappears here was deleted by the
operator itself; tests/cluster/test_operator_on_apiserver.py shows the same on a real API server,
where the collector also follows the owner references.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import kopf
import pytest
from kopf.testing import KopfRunner
from prometheus_client.parser import text_string_to_metric_families

from optiserve.handlers import build_registry
from optiserve.kube.client import DEPLOYMENTS, JOBS, SERVICES, KubeClient
from optiserve.observability import parse_time
from optiserve.settings import Settings
from tests.support.emulated_cluster import (
    DISCOVERY,
    MODEL,
    NAMESPACE,
    OPTIMIZED_MODELS,
    WAIT_S,
    finish_job,
    make_ready,
    minilm_manifest,
    model_objects,
    promote_first_candidate,
    wait_for,
    wait_phase,
)
from tests.support.job_results import PASSED
from tests.support.kube_emulator import KubeEmulator, RunningEmulator, emulator_fixtures
from tests.support.operator_runner import KopfRun, running_operator

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


emulator, kube = emulator_fixtures(DISCOVERY)


@pytest.fixture
def settings() -> Settings:
    return Settings(resync_seconds=0.2, metrics_port=free_port(), health_port=free_port(), bind_address="127.0.0.1")


OperatorFactory = Callable[[], contextlib.AbstractContextManager[KopfRunner]]


@pytest.fixture
def start_operator(emulator: RunningEmulator[KubeEmulator], settings: Settings) -> OperatorFactory:
    def start() -> contextlib.AbstractContextManager[KopfRunner]:
        return running_operator(
            KubeClient.for_host(emulator.url),
            settings=settings,
            kopf=KopfRun(verbose=False, extra_args=[f"--liveness={settings.liveness_endpoint()}"]),
            timeout_s=WAIT_S,
        )

    return start


@pytest.fixture
def operator(start_operator: OperatorFactory) -> Iterator[KopfRunner]:
    with start_operator() as runner:
        yield runner


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def scrape(settings: Settings) -> Samples:
    status, body = http_get(f"http://127.0.0.1:{settings.metrics_port}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def sample(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def scraped_when(settings: Settings, what: str, check: Callable[[Samples], bool]) -> Samples:
    def probe() -> Samples | None:
        try:
            samples = scrape(settings)
        except urllib.error.URLError:
            return None  # not listening yet: the operator's startup handler starts it
        return samples if check(samples) else None

    return wait_for(probe, what)


def refused(url: str) -> bool:
    try:
        http_get(url)
    except (urllib.error.URLError, ConnectionError):
        return True
    return False


def test_metrics_follow_reconciles_and_phases(kube: KubeClient, settings: Settings, start_operator: OperatorFactory) -> None:
    with start_operator():
        kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
        wait_phase(kube, "Optimizing")
        samples = scraped_when(
            settings,
            "the model counted as Optimizing",
            lambda s: sample(s, "optiserve_models", phase="Optimizing") == 1,
        )
        assert (sample(samples, "optiserve_reconciles_total", trigger="change", result="success") or 0) >= 1
        assert sample(samples, "optiserve_model_phase", namespace=NAMESPACE, name=MODEL, phase="Optimizing") == 1
        assert sample(samples, "optiserve_models", phase="Promoted") == 0
        assert (sample(samples, "optiserve_reconcile_duration_seconds_count", trigger="change") or 0) >= 1

        finish_job(kube, "minilm-optimize-g1", PASSED)
        make_ready(kube, wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-candidate"), "the candidate"))
        promoted = wait_phase(kube, "Promoted")
        samples = scraped_when(
            settings, "the model counted as Promoted", lambda s: sample(s, "optiserve_models", phase="Promoted") == 1
        )
        assert sample(samples, "optiserve_models", phase="Optimizing") == 0
        assert sample(samples, "optiserve_phase_transitions_total", from_phase="Optimizing", to_phase="Deploying") == 1
        assert sample(samples, "optiserve_phase_transitions_total", from_phase="Deploying", to_phase="Promoted") == 1
        assert sample(samples, "optiserve_phase_duration_seconds_count", phase="Optimizing") == 1
        assert sample(samples, "optiserve_phase_duration_seconds_count", phase="Deploying") == 1
        since = sample(samples, "optiserve_model_phase_since_timestamp_seconds", namespace=NAMESPACE, name=MODEL)
        assert since == parse_time(promoted["phaseSince"]), "the metric shows status.phaseSince"
        assert (sample(samples, "optiserve_reconciles_total", trigger="timer", result="success") or 0) >= 1
    assert refused(f"http://127.0.0.1:{settings.metrics_port}/metrics"), "the metrics server stops with the operator"


def test_api_errors_are_counted_by_kind(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator], settings: Settings, start_operator: OperatorFactory
) -> None:
    job_posts = emulator.emulator[f"post /apis/batch/v1/namespaces/{NAMESPACE}/jobs"]
    job_posts[:1] << 503
    with start_operator():
        kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
        samples = scraped_when(
            settings,
            "a transient error counted",
            lambda s: (sample(s, "optiserve_reconcile_errors_total", kind="transient") or 0) >= 1,
        )
        assert (sample(samples, "optiserve_reconciles_total", trigger="change", result="error") or 0) >= 1
        assert sample(samples, "optiserve_reconcile_errors_total", kind="api") is None


def test_the_health_endpoint_answers_while_the_operator_runs(settings: Settings, start_operator: OperatorFactory) -> None:
    url = str(settings.liveness_endpoint())
    with start_operator():
        status, body = wait_for(lambda: http_get(url) if not refused(url) else None, "the liveness endpoint")
        assert status == 200
        assert isinstance(json.loads(body)["reconciles"], int), "kopf's probe shows the operator's reconcile count"
    assert refused(url), "the liveness endpoint stops with the operator"


def test_a_metrics_port_in_use_stops_the_operator_with_the_setting_named(emulator: RunningEmulator[KubeEmulator]) -> None:
    """kopf.operator() itself, not the KopfRunner: the runner's stop on leaving its block can race the
    failing startup and end the operator cleanly first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        client = KubeClient.for_host(emulator.url)
        registry = build_registry(Settings(metrics_port=port, bind_address="127.0.0.1"), client)
        operator = kopf.operator(registry=registry, standalone=True, clusterwide=True)
        try:
            asyncio.run(asyncio.wait_for(operator, WAIT_S))
        except Exception as e:  # kopf's ActivityError, not public; its cause is the handler's error
            failure = e
        else:
            pytest.fail("the operator started on a port in use")
        finally:
            client.close()
    assert f"OPTISERVE_METRICS_PORT: cannot listen on 127.0.0.1:{port}" in str(failure.__cause__)


# --- deletion ------------------------------------------------------------------------------------------------------


def wait_gone(kube: KubeClient, name: str = MODEL) -> None:
    wait_for(lambda: kube.get(OPTIMIZED_MODELS, NAMESPACE, name) is None, f"OptimizedModel {name} gone")


def children(kube: KubeClient) -> dict[str, list[str]]:
    return {r.kind: model_objects(kube, r) for r in (JOBS, DEPLOYMENTS, SERVICES)}


NO_CHILDREN: dict[str, list[str]] = {"Job": [], "Deployment": [], "Service": []}


@pytest.mark.usefixtures("operator")
def test_deleting_mid_flight_removes_the_running_job_and_releases_the_finalizer(kube: KubeClient) -> None:
    kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
    wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
    wait_phase(kube, "Optimizing")
    live = kube.get(OPTIMIZED_MODELS, NAMESPACE, MODEL)
    assert live is not None and "optiserve.io/finalizer" in live["metadata"]["finalizers"]

    kube.delete(OPTIMIZED_MODELS, NAMESPACE, MODEL)

    wait_gone(kube)
    assert children(kube) == NO_CHILDREN


def test_deleting_after_promotion_removes_what_serves(
    kube: KubeClient, settings: Settings, start_operator: OperatorFactory
) -> None:
    with start_operator():
        promote_first_candidate(kube)
        make_ready(kube, wait_for(lambda: kube.get(DEPLOYMENTS, NAMESPACE, "minilm-baseline"), "the baseline"))
        wait_for(lambda: model_objects(kube, DEPLOYMENTS) == ["minilm-baseline"], "the candidate retired")
        # Someone else's Service with our label, not owned by the model: not ours to delete.
        foreign = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "minilm-dashboard", "labels": {"optiserve.io/model": MODEL}},
        }
        kube.create(SERVICES, NAMESPACE, foreign)

        kube.delete(OPTIMIZED_MODELS, NAMESPACE, MODEL)

        wait_gone(kube)
        assert children(kube) == {"Job": [], "Deployment": [], "Service": ["minilm-dashboard"]}
        samples = scraped_when(settings, "the deletion counted", lambda s: sample(s, "optiserve_deletions_total") == 1)
        assert sample(samples, "optiserve_models", phase="Promoted") == 0, "a deleted model leaves the phase count"
        assert sample(samples, "optiserve_model_phase", namespace=NAMESPACE, name=MODEL, phase="Promoted") is None


def test_a_deletion_while_the_operator_is_down_is_finished_after_restart(
    kube: KubeClient, start_operator: OperatorFactory
) -> None:
    with start_operator():
        kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
        wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
        wait_phase(kube, "Optimizing")

    kube.delete(OPTIMIZED_MODELS, NAMESPACE, MODEL)
    held = kube.get(OPTIMIZED_MODELS, NAMESPACE, MODEL)
    assert held is not None and held["metadata"].get("deletionTimestamp"), "the finalizer holds it while nobody cleans up"
    assert model_objects(kube, JOBS) == ["minilm-optimize-g1"]

    with start_operator():
        wait_gone(kube)
        assert children(kube) == NO_CHILDREN


def test_a_failed_cleanup_keeps_the_finalizer_and_is_retried(
    kube: KubeClient, emulator: RunningEmulator[KubeEmulator], start_operator: OperatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    deletes = emulator.emulator[f"delete /apis/batch/v1/namespaces/{NAMESPACE}/jobs/minilm-optimize-g1"]
    deletes[:1] << 503
    with start_operator():
        kube.create(OPTIMIZED_MODELS, NAMESPACE, minilm_manifest())
        wait_for(lambda: kube.get(JOBS, NAMESPACE, "minilm-optimize-g1"), "the g1 Job")
        kube.delete(OPTIMIZED_MODELS, NAMESPACE, MODEL)
        wait_gone(kube)
        assert children(kube) == NO_CHILDREN
    retried = [r.getMessage() for r in caplog.records if "cleanup" in r.getMessage() and "failed temporarily" in r.getMessage()]
    assert any("HTTP 503" in message for message in retried), retried
