"""Observe -> decide -> act, for one OptimizedModel.

`reconcile` is the single path that create, update, resume and the timer all call: it reads the
cluster, asks the pure `decide()` what should be true, makes it so and returns the status to
write. It keeps nothing between calls; everything it needs is in the resource and its children
(deterministic names, labels), so it can crash at any point and the next call carries on,
adopting what the last one created.

Where time is needed, it comes from the cluster too: the deploy deadline counts from the
candidate Deployment's `creationTimestamp`. That survives restarts and needs no extra status
field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from optiserve.api.job import ArtifactRef, JobResult, job_request_from_manifest
from optiserve.api.manifest import ManifestError, parse_manifest
from optiserve.api.rollout import TrafficProvider
from optiserve.api.spec import API_GROUP, API_VERSION, KIND, OptimizedModel
from optiserve.api.status import Phase
from optiserve.canary_reconcile import SIGNAL_ANNOTATIONS, CanaryInputs, MetricsFactory, canary_decision_for, prometheus_metrics
from optiserve.domain.lifecycle import TERMINAL, Child, Decision, JobObservation, Observed, decide, guard_failing_candidate
from optiserve.domain.pipeline_generation import described_generation, pipeline_generation, spec_digest
from optiserve.errors import PermanentError
from optiserve.kube.client import ARTIFACT_ANNOTATION, BASELINE, CANDIDATE, KubeClient, deployment_ready
from optiserve.merge_patch import apply_merge_patch
from optiserve.providers.traffic import TrafficRouter
from optiserve.providers.traffic_factory import RouterContext, router_for
from optiserve.resources.comparator import build_comparator_deployment, build_comparator_service
from optiserve.resources.job import MODELS_MOUNT, Owner, build_optimization_job
from optiserve.resources.triton_deployment import Variant, build_triton_deployment, build_triton_service
from optiserve.rollout_engine import route
from optiserve.settings import Settings
from optiserve.status_writer import WARNING_PHASES, build_status

logger = logging.getLogger(__name__)

MAX_PASSES = 3
"""Decisions that ask to be re-run at once (a finished Job -> deploy) are followed within the
same call, up to this many passes, instead of waiting for the next timer tick."""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class StatusPatch:
    status: dict[str, Any]
    """A JSON merge patch for `.status` (None removes a field)."""
    events: tuple[Event, ...] = ()
    requeue_after_s: float | None = None


def source_dir(model: str) -> str:
    """Where relative URIs in a spec point: the model's folder on the models volume."""
    return f"{MODELS_MOUNT}/{model}"


def _phase(value: object) -> Phase:
    try:
        return Phase(str(value))
    except ValueError:
        return Phase.PENDING


def _parse(
    name: str, namespace: str, body: Mapping[str, Any], settings: Settings
) -> tuple[OptimizedModel | None, tuple[str, ...]]:
    document = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": name, "namespace": namespace},
        "spec": body.get("spec"),
    }
    try:
        manifest = parse_manifest(document, source=f"{namespace}/{name}")
    except ManifestError as e:
        return None, tuple(e.errors)
    image = manifest.spec.serving.triton.image
    if not settings.image_allowed(image):
        return None, (f"spec.serving.triton.image: {image} is not in the operator's allow-list",)
    return manifest, ()


def _triton_manifests(
    owner: Owner, namespace: str, variant: Variant, manifest: OptimizedModel, result: JobResult, settings: Settings
) -> tuple[dict[str, Any], dict[str, Any]]:
    assert result.artifact is not None
    deployment = build_triton_deployment(
        owner, namespace, variant, manifest.spec.serving.triton, settings.serving_settings(), result.artifact.sha256
    )
    deployment["metadata"]["annotations"] = {ARTIFACT_ANNOTATION: result.artifact.sha256}
    return deployment, build_triton_service(owner, namespace, variant.name)


def _act(
    decision: Decision,
    *,
    owner: Owner,
    namespace: str,
    generation: int,
    manifest: OptimizedModel | None,
    job: JobObservation | None,
    settings: Settings,
    kube: KubeClient,
    promoted: JobResult | None,
) -> None:
    # With the replica-ratio router the split *is* the replica counts: the router owns them.
    scale_owned = not (
        manifest is not None
        and manifest.spec.rollout.traffic.provider is TrafficProvider.REPLICAS
        and decision.weight is not None
    )
    if manifest is not None and Child.JOB in decision.want and job is None:
        request = job_request_from_manifest(manifest, base_dir=source_dir(owner.name))
        kube.ensure(build_optimization_job(owner, namespace, generation, request, settings.job_settings()))
    result = job.result if job is not None else None
    if manifest is not None and Child.CANDIDATE in decision.want and result is not None:
        for child in _triton_manifests(owner, namespace, Variant(CANDIDATE, generation, 1), manifest, result, settings):
            kube.ensure(child, scale_owned)
    if manifest is not None and Child.COMPARATOR in decision.want:
        comparator = settings.comparator_settings()
        kube.ensure(build_comparator_deployment(owner, namespace, generation, manifest.spec, comparator))
        kube.ensure(build_comparator_service(owner, namespace))
    if decision.remove_stale:
        kube.remove_stale(namespace, owner.name, generation)
    serve = decision.promote or (promoted if Child.BASELINE in decision.want else None)
    baseline_still_ready = True
    if manifest is not None and serve is not None:
        variant = Variant(BASELINE, generation, manifest.spec.serving.replicas)
        for child in _triton_manifests(owner, namespace, variant, manifest, serve, settings):
            written = kube.ensure(child, scale_owned)
            if written.get("kind") == "Deployment":
                baseline_still_ready = deployment_ready(written)
    # The decision saw the baseline before this reconcile wrote it: a write that changed what it
    # serves (a promotion repeated after its status write was lost) starts a new rollout of the
    # baseline, and the candidate stays until a later reconcile sees that rollout ready.
    if decision.retire_candidate and baseline_still_ready:
        kube.retire_candidate(namespace, owner.name)


Routers = Callable[[OptimizedModel, RouterContext], TrafficRouter]


def _default_router(manifest: OptimizedModel, context: RouterContext) -> TrafficRouter:
    return router_for(manifest.spec, context)


def _route_weight(decision: Decision, candidate_deployed: bool, *, baseline_exists: bool) -> int | None:
    """The candidate weight the router must have now; None to leave it alone.

    While this generation's candidate is deployed, the decision's. Without it, once a baseline exists,
    0: nothing else can serve. That makes an owned route exist from the first promotion on (clients
    use the Gateway before any canary runs), and it takes the traffic off a candidate of an earlier
    generation (a spec changed mid-canary) before that candidate is removed as stale. Both were
    found on real pods: every request through the Gateway answered 404 until a canary began.
    """
    if candidate_deployed:
        return decision.weight
    return 0 if baseline_exists else None


def _route(
    decision: Decision,
    weight: int,
    manifest: OptimizedModel,
    owner: Owner,
    namespace: str,
    kube: KubeClient,
    routers: Routers,
) -> Decision:
    """Give the router `weight`, verified by reading it back; before anything is retired,
    so traffic always leaves a variant before the variant goes.

    A router that cannot be set up (a missing HTTPRoute, a provider that does not fit) fails the
    rollout with the field named; the baseline keeps serving. A transient failure propagates as it
    is (a `TransientError`) and the handler retries it.
    """
    try:
        router = routers(manifest, RouterContext(owner=owner, namespace=namespace, api=kube.traffic_api()))
        route(router, weight)
    except PermanentError as e:
        message = f"{e}; the baseline keeps serving"
        return Decision(
            Phase.FAILED, "TrafficError", message, want=frozenset({Child.JOB}), remove_stale=True, retire_candidate=True
        )
    return decision


def _promoted_result(status: Mapping[str, Any]) -> JobResult | None:
    """The promoted artifact, from status: the Job that made it may be long gone (TTL)."""
    artifact = status.get("artifact")
    if not isinstance(artifact, Mapping):
        return None
    return JobResult(passed=True, artifact=ArtifactRef.model_validate(artifact))


def _events(before: Phase, restarted: bool, decision: Decision) -> list[Event]:
    events = [Event("Normal", decision.reason, message) for message in decision.events]
    if decision.phase is not before or restarted:
        kind: Literal["Normal", "Warning"] = "Warning" if decision.phase in WARNING_PHASES else "Normal"
        events.append(Event(kind, decision.reason, f"{before.value} -> {decision.phase.value}: {decision.message}"))
    return events


@dataclass(frozen=True)
class Hooks:
    """Where the canary reads metrics and sets traffic; tests substitute their own."""

    metrics: MetricsFactory = prometheus_metrics
    routers: Routers = _default_router


def _one_pass(
    name: str,
    namespace: str,
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    settings: Settings,
    kube: KubeClient,
    now: datetime,
    hooks: Hooks,
) -> tuple[Decision, dict[str, Any], list[Event]]:
    meta = body.get("metadata") or {}
    metadata_generation = int(meta.get("generation") or 1)
    # The pipeline's generation: a new spec restarts it, an approval (promoteArtifact) does not.
    generation = pipeline_generation(metadata_generation, body.get("spec"), status)
    phase = _phase(status.get("phase"))
    observed_generation = described_generation(status)
    manifest, spec_errors = _parse(name, namespace, body, settings)
    owner = Owner(api_version=f"{API_GROUP}/{API_VERSION}", kind=KIND, name=name, uid=str(meta.get("uid", "")))

    settled = phase in TERMINAL and observed_generation == generation
    job = candidate = baseline = None
    if manifest is not None and not settled:  # a settled resource needs no job reads until its spec changes
        job = kube.observe_job(namespace, name, generation)
    if manifest is not None and (not settled or phase is Phase.PROMOTED):  # promoted: keep the baseline serving
        candidate = kube.observe_candidate(namespace, name)
        baseline = kube.observe_baseline(namespace, name)
    # A baseline already serving this generation means the promotion happened and only the status
    # write was lost (a crash in between): decide must see the baseline from before this rollout.
    promoted = None
    if baseline is not None and baseline.generation != generation:
        promoted = baseline.artifact_sha256 or None
    phase_since = candidate.created if candidate is not None and candidate.observation.generation == generation else None
    observed = Observed(
        generation=generation,
        phase=phase,
        observed_generation=observed_generation,
        phase_since=phase_since,
        promoted_sha256=promoted,
        job=job,
        candidate=candidate.observation if candidate is not None else None,
        spec_errors=spec_errors,
        baseline_ready=baseline is not None and baseline.ready and baseline.generation == generation,
    )
    decision = decide(observed, now, settings.deploy_deadline_seconds)
    ours = job if job is not None and job.generation == generation else None
    if decision.phase is Phase.CANARY and manifest is not None and ours is not None and ours.result is not None:
        annotations = dict(meta.get("annotations") or {})
        inputs = CanaryInputs(manifest, namespace, generation, status, annotations, ours.result, now, settings.default_prometheus)
        decision = canary_decision_for(inputs, hooks.metrics)
        replica_split = manifest.spec.rollout.traffic.provider is TrafficProvider.REPLICAS
        decision = guard_failing_candidate(
            decision, observed, now, settings.deploy_deadline_seconds, traffic_off=None if replica_split else 0
        )
    candidate_deployed = candidate is not None and candidate.observation.generation == generation
    weight = _route_weight(decision, candidate_deployed, baseline_exists=baseline is not None)
    if weight is not None and manifest is not None:
        decision = _route(decision, weight, manifest, owner, namespace, kube, hooks.routers)
    if decision.phase in TERMINAL and any(key in (meta.get("annotations") or {}) for key in SIGNAL_ANNOTATIONS):
        kube.remove_annotations(namespace, name, SIGNAL_ANNOTATIONS)
    logger.debug("%s/%s generation %d: %s -> %s (%s)", namespace, name, generation, phase, decision.phase, decision.reason)
    _act(
        decision,
        owner=owner,
        namespace=namespace,
        generation=generation,
        manifest=manifest,
        job=job,
        settings=settings,
        kube=kube,
        promoted=_promoted_result(status),
    )
    new_status = build_status(
        decision,
        generation=generation,
        previous=status,
        job=job,
        now=now,
        observed_generation=metadata_generation,
        spec_digest=spec_digest(body.get("spec")),
    )
    restarted = observed_generation is not None and observed_generation != generation
    return decision, new_status, _events(phase, restarted, decision)


def reconcile(
    name: str,
    namespace: str,
    body: Mapping[str, Any],
    settings: Settings,
    *,
    kube: KubeClient,
    now: datetime | None = None,
    hooks: Hooks | None = None,
) -> StatusPatch:
    """Bring one OptimizedModel's children in line with its spec; return the status to write.

    An invalid spec is not an exception: it becomes phase Failed with every error named by field.
    Transient API errors propagate as `kube.TransientError` for the caller to retry.
    """
    status: dict[str, Any] = dict(body.get("status") or {})
    patch: dict[str, Any] = {}
    events: list[Event] = []
    decision = None
    for _ in range(MAX_PASSES):
        decision, step, step_events = _one_pass(
            name, namespace, body, status, settings, kube, now or datetime.now(UTC), hooks or Hooks()
        )
        patch = {**patch, **step}  # each pass writes whole top-level fields; None (remove) is kept
        status = apply_merge_patch(status, step)
        events.extend(step_events)
        if decision.requeue_after_s != 0:
            break
    assert decision is not None
    return StatusPatch(status=patch, events=tuple(events), requeue_after_s=decision.requeue_after_s)
