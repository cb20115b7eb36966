"""The operator in-process against the fault emulator, restarted when a kill point fires, and the cluster
played by the test: Jobs finish with a given result, Deployments become ready.

Waits go through `Life.until`, which plays the cluster and restarts a killed operator between
polls, so a scenario reads as the user sees it (apply, wait for Promoted, change the spec, wait)
whatever dies in between. Waits are bounded and fail with the last state seen.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kopf.testing import KopfRunner
from kubernetes import client as k8s

from optiserve.api.job import JobResult
from optiserve.kube.client import DEPLOYMENTS, JOBS, ApiError, KubeClient
from optiserve.reconciler import Hooks
from optiserve.settings import Settings
from tests.support.canary_fakes import QUICK_ROLLOUT, Fakes
from tests.support.emulated_cluster import (
    DISCOVERY,
    EVENTS,
    MODEL,
    NAMESPACE,
    OPTIMIZED_MODELS,
    finish_job,
    make_ready,
    minilm_manifest,
)
from tests.support.eventually import eventually
from tests.support.fault_emulator import FaultEmulator, RunningFaultEmulator, serve_fault_emulator
from tests.support.job_results import PASSED, SECOND
from tests.support.operator_runner import KopfRun, running_operator

__all__ = ["DISCOVERY", "EVENTS", "MODEL", "NAMESPACE", "OPTIMIZED_MODELS", "QUICK_ROLLOUT", "Fakes"]

WAIT_S = 60.0
RESULTS = {1: PASSED, 2: SECOND}
"""What each generation's optimization Job reports."""

T = TypeVar("T")


def client_with_token(url: str, token: str) -> KubeClient:
    """The project's client, authenticating with a bearer token (kopf logs in with the same)."""
    configuration = k8s.Configuration(host=url, api_key={"BearerToken": token}, api_key_prefix={"BearerToken": "Bearer"})
    return KubeClient(k8s.ApiClient(configuration))


@dataclass
class Incarnation:
    who: str
    token: str
    runner: KopfRunner
    stack: contextlib.ExitStack
    """Holds the running operator; closing it stops the operator and closes its client."""


@dataclass
class Operators:
    """Successive incarnations of the operator; each logs in with a token of its own."""

    running: RunningFaultEmulator
    hooks: Hooks | None = None
    settings: Settings = field(default_factory=lambda: Settings(resync_seconds=0.2))
    started: list[Incarnation] = field(default_factory=list)
    current: Incarnation | None = None

    def start(self) -> Incarnation:
        assert self.current is None, "one operator at a time"
        token = secrets.token_urlsafe(24)
        who = f"operator-{len(self.started) + 1}"
        self.running.emulator.identify(token, who)
        stack = contextlib.ExitStack()
        runner = stack.enter_context(
            running_operator(
                client_with_token(self.running.url, token),
                settings=self.settings,
                hooks=self.hooks,
                timeout_s=WAIT_S,
                kopf=KopfRun(killed_on_purpose=True),  # a killed incarnation's errors are the test's doing
            )
        )
        self.current = Incarnation(who, token, runner, stack)
        self.started.append(self.current)
        return self.current

    def stop(self) -> Incarnation:
        """Stop the running incarnation (a clean stop, or the remains of a killed one)."""
        assert self.current is not None
        stopped, self.current = self.current, None
        stopped.stack.close()
        return stopped

    def restart_if_killed(self) -> bool:
        emulator = self.running.emulator
        if self.current is None or self.current.who not in emulator.dead:
            return False
        self.stop()
        self.start()
        return True


def play_cluster(kube: KubeClient, results: dict[int, JobResult] = RESULTS) -> None:
    """What the Job controller, the kubelet and the Deployment controller would do, at once."""
    for job in kube.select(JOBS, NAMESPACE, f"optiserve.io/model={MODEL}"):
        finished = (job.get("status") or {}).get("conditions")
        generation = int(job["metadata"]["labels"].get("optiserve.io/generation", "0"))
        if not finished and not job["metadata"].get("deletionTimestamp") and generation in results:
            finish_job(kube, job["metadata"]["name"], results[generation])
    for deployment in kube.select(DEPLOYMENTS, NAMESPACE, f"optiserve.io/model={MODEL}"):
        status = deployment.get("status") or {}
        if int(status.get("observedGeneration") or 0) < int(deployment["metadata"]["generation"]):
            try:
                make_ready(kube, deployment)
            except ApiError as e:
                # 404: gone since the list (the operator retired it), so there is nothing to make ready.
                if e.status != 404:
                    raise


@dataclass
class Life:
    """One model's life under test: the user's client, the cluster played, the operator restarted."""

    kube: KubeClient
    operators: Operators
    play: bool = True
    restarts: int = 0
    ticks: list[Callable[[], None]] = field(default_factory=list)

    def tick(self) -> None:
        if self.operators.restart_if_killed():
            self.restarts += 1
        if self.play:
            play_cluster(self.kube)
        for extra in self.ticks:
            extra()

    def until(self, probe: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
        """`eventually`, playing the cluster and restarting a killed operator before each probe."""

        def ticked() -> T | None:
            self.tick()
            return probe()

        return eventually(ticked, timeout_s=timeout_s, interval_s=0.05, description=what)

    def model(self) -> dict[str, Any]:
        return dict(self.kube.get(OPTIMIZED_MODELS, NAMESPACE, MODEL) or {})

    def status(self) -> dict[str, Any]:
        return dict(self.model().get("status") or {})

    def events(self) -> list[str]:
        """The messages of the events about the model, oldest first."""
        found = self.kube.select(EVENTS, NAMESPACE, "")
        ours = [e for e in found if (e.get("involvedObject") or {}).get("name") == MODEL]
        return [str(e.get("message", "")) for e in sorted(ours, key=lambda e: str(e.get("eventTime") or ""))]

    def deployments(self) -> list[str]:
        return sorted(d["metadata"]["name"] for d in self.kube.select(DEPLOYMENTS, NAMESPACE, f"optiserve.io/model={MODEL}"))

    def settled(self, generation: int) -> dict[str, Any] | None:
        """Promoted for `generation`, the baseline serving it and ready, the candidate retired."""
        status = self.status()
        promoted = status.get("phase") == "Promoted" and status.get("pipelineGeneration") == generation
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        return status if promoted and ready and self.deployments() == [f"{MODEL}-baseline"] else None


def first_manifest() -> dict[str, Any]:
    return minilm_manifest()


def canary_rollout() -> dict[str, Any]:
    return copy.deepcopy(QUICK_ROLLOUT)


def two_generations(life: Life) -> dict[str, Any]:
    """g1 applied and promoted (no baseline yet: no canary), then a new rollout spec (g2) that
    goes through a canary to promotion. Returns the final status."""
    life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
    life.until(lambda: life.settled(1), "generation 1 promoted and the candidate retired")
    life.kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"rollout": canary_rollout()}})
    return life.until(lambda: life.settled(2), "generation 2 promoted through its canary and the candidate retired")


@contextlib.contextmanager
def emulated_life(hooks: Hooks | None = None, **options: Any) -> Iterator[tuple[Life, FaultEmulator]]:
    """A fault emulator, the test's client, and an operator running (stopped at the end)."""
    with serve_fault_emulator(DISCOVERY, **options) as running:
        kube = KubeClient.for_host(running.url)
        operators = Operators(running, hooks=hooks)
        operators.start()
        try:
            yield Life(kube, operators), running.emulator
        finally:
            try:
                if operators.current is not None:
                    operators.stop()
            finally:
                kube.close()
