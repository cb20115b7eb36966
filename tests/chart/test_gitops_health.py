"""The GitOps health checks, run for real on the operator's own statuses.

- Argo CD: charts/optiserve/files/argocd-health.lua, run by a real Lua interpreter (lupa).
- Flux: the CEL `healthCheckExprs` in charts/optiserve/files/flux-health-check.yaml, evaluated by
  cel-python; they must give the same verdict as the Lua script on every status.

The status objects are the operator's own: each scenario asks the phase state machine
(`domain.lifecycle.decide`) for a decision from an observation, and the status writer
(`status_writer.build_status`) turns it into the status the operator would write, merged into the
previous one as the API server merges the patch. The script then sees the object as Argo CD does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel
from lupa import LuaRuntime

from optiserve.api.job import ArtifactRef, JobResult
from optiserve.api.status import Phase
from optiserve.domain.lifecycle import CandidateObservation, Decision, JobObservation, JobState, Observed, decide
from optiserve.merge_patch import apply_merge_patch
from optiserve.status_writer import build_status
from tests.support.helm import CHART

HEALTH_LUA = CHART / "files" / "argocd-health.lua"
FLUX_CHECK = CHART / "files" / "flux-health-check.yaml"
ARGO_TO_FLUX = {"Healthy": "current", "Progressing": "inProgress", "Degraded": "failed"}
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SHA = "cd" * 32
PASSED = JobResult(
    passed=True,
    artifact=ArtifactRef(uri="pvc://optiserve-models/minilm/g1/model_repository", sha256=SHA, size_bytes=23_000_000),
    speedup_p50=2.5,
    size_ratio=0.26,
)
GATES_FAILED = JobResult(passed=False, reason="fidelity_mean = 0.97, needs >= 0.995", failed_gates=["fidelity_mean"])


def health(obj: Mapping[str, Any]) -> dict[str, str]:
    """Run the script as Argo CD does: a fresh Lua state, the resource as the global `obj`."""
    lua = LuaRuntime(register_eval=False, register_builtins=False)
    lua.globals().obj = lua.table_from(copy.deepcopy(dict(obj)), recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    answer = {str(k): str(v) for k, v in result.items()}
    assert answer["status"] in ARGO_STATUSES
    return answer


merge = apply_merge_patch  # as the API server applies the operator's status patch


class Model:
    """One OptimizedModel as the API server holds it; `write` plays one reconcile's status write."""

    def __init__(self, generation: int = 1) -> None:
        self.obj: dict[str, Any] = {
            "apiVersion": "optiserve.io/v1alpha1",
            "kind": "OptimizedModel",
            "metadata": {"name": "minilm", "namespace": "ml", "generation": generation},
            "spec": {},
        }
        self.now = NOW

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    def observe(self, **observed: Any) -> Observed:
        generation = self.obj["metadata"]["generation"]
        status = self.status
        return Observed(
            generation=generation,
            phase=Phase(status.get("phase", "Pending")),
            observed_generation=status.get("observedGeneration"),
            phase_since=observed.pop("phase_since", None),
            promoted_sha256=observed.pop("promoted_sha256", None),
            **observed,
        )

    def write(self, decision: Decision, job: JobObservation | None = None) -> Model:
        self.now += timedelta(seconds=15)
        generation = self.obj["metadata"]["generation"]
        patch = build_status(decision, generation=generation, previous=self.status, job=job, now=self.now)
        self.obj["status"] = merge(self.status, patch)
        return self

    def reconcile(self, job: JobObservation | None = None, **observed: Any) -> Model:
        return self.write(decide(self.observe(job=job, **observed), self.now), job)

    def change_spec(self) -> Model:
        self.obj["metadata"]["generation"] += 1
        return self


RUNNING = JobObservation(1, JobState.RUNNING)
SUCCEEDED = JobObservation(1, JobState.SUCCEEDED, PASSED)
READY = CandidateObservation(generation=1, artifact_sha256=SHA, ready=True)
GATE_FAILURE = JobObservation(1, JobState.FAILED, GATES_FAILED)
NOT_LOADING = CandidateObservation(generation=1, artifact_sha256=SHA, ready=False, failure="pod x: CrashLoopBackOff")


def _optimizing() -> Model:
    return Model().reconcile(RUNNING)


def _validating() -> Model:
    return _optimizing().reconcile(SUCCEEDED)


def _deploying() -> Model:
    return _validating().reconcile(SUCCEEDED)


def _promoted_first() -> Model:
    return _deploying().reconcile(SUCCEEDED, candidate=READY)


def _canary() -> Model:
    return _deploying().reconcile(SUCCEEDED, candidate=READY, promoted_sha256="ef" * 32)


SCENARIOS = {
    "optimizing": (_optimizing, "Optimizing", "Progressing"),
    "validating": (_validating, "Validating", "Progressing"),
    "deploying": (_deploying, "Deploying", "Progressing"),
    "canary": (_canary, "Canary", "Progressing"),
    "promoted-baseline-starting": (_promoted_first, "Promoted", "Progressing"),
    "promoted-baseline-still-starting": (lambda: _promoted_first().reconcile(), "Promoted", "Progressing"),
    "promoted": (lambda: _promoted_first().reconcile(baseline_ready=True), "Promoted", "Healthy"),
    "promoted-reconfirmed": (
        lambda: _promoted_first().reconcile(baseline_ready=True).reconcile(baseline_ready=True),
        "Promoted",
        "Healthy",
    ),
    "promoted-baseline-lost": (
        lambda: _promoted_first().reconcile(baseline_ready=True).reconcile(baseline_ready=False),
        "Promoted",
        "Progressing",
    ),
    "gates-failed": (lambda: _optimizing().reconcile(GATE_FAILURE).reconcile(GATE_FAILURE), "Failed", "Degraded"),
    "invalid-spec": (lambda: Model().reconcile(spec_errors=("spec.model.uri: required",)), "Failed", "Degraded"),
    "candidate-crashing": (lambda: _deploying().reconcile(SUCCEEDED, candidate=NOT_LOADING), "Deploying", "Degraded"),
    "deadline-exceeded": (
        lambda: _deploying().reconcile(SUCCEEDED, candidate=NOT_LOADING, phase_since=NOW - timedelta(hours=1)),
        "Failed",
        "Degraded",
    ),
    "rolled-back": (
        lambda: _canary().write(Decision(Phase.ROLLED_BACK, "AnalysisFailed", "latency +40% against the baseline")),
        "RolledBack",
        "Degraded",
    ),
    "pending": (lambda: Model().write(Decision(Phase.PENDING, "Accepted", "waiting for the job")), "Pending", "Progressing"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_health_of_the_operators_own_statuses(scenario: str) -> None:
    build, phase, expected = SCENARIOS[scenario]
    model = build()
    assert model.status["phase"] == phase  # the scenario really produced this phase
    answer = health(model.obj)
    assert answer["status"] == expected, answer
    assert answer["message"].startswith(f"{phase}: ")


def test_degraded_names_the_reason() -> None:
    answer = health(_deploying().reconcile(SUCCEEDED, candidate=NOT_LOADING).obj)
    assert "CrashLoopBackOff" in answer["message"]


def test_no_status_yet_is_progressing() -> None:
    assert health(Model().obj) == {"status": "Progressing", "message": "Waiting for the operator to report status"}


@pytest.mark.parametrize("build", [_promoted_first, lambda: Model().reconcile(spec_errors=("spec.model.uri: required",))])
def test_a_spec_change_not_yet_observed_is_progressing(build: Any) -> None:
    """Promoted or Failed describe the previous spec: until the operator sees the new one, it is in progress."""
    model = build().change_spec()
    assert health(model.obj) == {"status": "Progressing", "message": "Waiting for the operator to observe generation 2"}


def test_a_degraded_condition_of_an_older_generation_is_ignored() -> None:
    """The spec changed and the operator has written the new generation's phase, but not yet replaced every condition."""
    model = _deploying().reconcile(SUCCEEDED, candidate=NOT_LOADING)
    model.obj["metadata"]["generation"] = 2
    model.obj["status"]["observedGeneration"] = 2
    model.obj["status"]["phase"] = "Optimizing"
    degraded = [c for c in model.status["conditions"] if c["type"] == "Degraded"]
    assert degraded[0]["status"] == "True" and degraded[0]["observedGeneration"] == 1
    assert health(model.obj)["status"] == "Progressing"


def test_an_unknown_phase_is_unknown() -> None:
    model = _promoted_first()
    model.obj["status"]["phase"] = "Hibernating"
    assert health(model.obj) == {"status": "Unknown", "message": "Unknown phase Hibernating"}


def test_the_argocd_cm_snippet_carries_the_same_script() -> None:
    """What docs/gitops.md tells users to put in argocd-cm is exactly the tested script."""
    configmap = yaml.safe_load((CHART / "files" / "argocd-cm.yaml").read_text())
    assert configmap["data"]["resource.customizations.health.optiserve.io_OptimizedModel"] == HEALTH_LUA.read_text()


def flux_verdicts(obj: Mapping[str, Any]) -> list[str]:
    """Which of Flux's expressions hold for `obj` (the object's top-level fields are the CEL variables)."""
    (check,) = yaml.safe_load(FLUX_CHECK.read_text())
    assert (check["apiVersion"], check["kind"]) == ("optiserve.io/v1alpha1", "OptimizedModel")
    environment = celpy.Environment()
    activation = {key: json_to_cel(value) for key, value in obj.items()}
    holding = []
    for verdict in ("inProgress", "failed", "current"):
        result = environment.program(environment.compile(check[verdict])).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), f"{verdict}: {result!r}"
        if result:
            holding.append(verdict)
    return holding


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_flux_agrees_with_argocd(scenario: str) -> None:
    """Exactly one of Flux's expressions holds, and it is the one matching Argo CD's verdict."""
    obj = SCENARIOS[scenario][0]().obj
    assert flux_verdicts(obj) == [ARGO_TO_FLUX[health(obj)["status"]]]


def test_flux_waits_for_a_new_generation() -> None:
    obj = _promoted_first().change_spec().obj
    assert flux_verdicts(obj) == ["inProgress"]


def test_flux_ignores_an_older_generations_degraded_condition() -> None:
    model = _deploying().reconcile(SUCCEEDED, candidate=NOT_LOADING)
    assert flux_verdicts(model.obj) == ["failed"]
    model.obj["metadata"]["generation"] = 2
    model.obj["status"]["observedGeneration"] = 2
    model.obj["status"]["phase"] = "Optimizing"
    assert flux_verdicts(model.obj) == ["inProgress"]
