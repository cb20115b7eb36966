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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from optiserve.api.job import ArtifactRef, JobResult, job_request_from_manifest
from optiserve.api.manifest import ManifestError, parse_manifest
from optiserve.api.rollout import TrafficProvider
from optiserve.api.spec import API_GROUP, API_VERSION, KIND, OptimizedModel, Task
from optiserve.api.status import OptimizedModelStatus, Phase
from optiserve.canary_reconcile import SIGNAL_ANNOTATIONS, CanaryInputs, MetricsFactory, canary_decision_for, prometheus_metrics
from optiserve.domain.lifecycle import (
    TERMINAL,
    CanaryStep,
    Child,
    Decision,
    JobObservation,
    JobState,
    Observed,
    decide,
    route_weight,
    traffic_failed,
)
from optiserve.domain.pipeline_generation import described_generation, pipeline_generation, spec_digest
from optiserve.errors import PermanentError
from optiserve.kube.client import ARTIFACT_ANNOTATION, BASELINE, CANDIDATE, KubeClient, deployment_ready
from optiserve.merge_patch import apply_merge_patch, compose_merge_patches
from optiserve.providers.traffic import TrafficRouter
from optiserve.providers.traffic_factory import RouterContext, router_for
from optiserve.resources.comparator import build_comparator_deployment, build_comparator_service
from optiserve.resources.job import MODELS_MOUNT, Owner, build_optimization_job
from optiserve.resources.triton_deployment import Variant, build_triton_deployment, build_triton_service
from optiserve.rollout_engine import route
from optiserve.settings import Settings
from optiserve.status_writer import WARNING_PHASES, Tracking, build_status, read_status

logger = logging.getLogger(__name__)

PASS_STARTED = "PassStarted"  # noqa: S105 - an Event reason (an optimization pass), no secret
"""The reason of the Event that says the optimization Job began a pass (status.optimization.currentPass)."""
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
    refused = _platform_refusals(manifest, settings)
    return (None, refused) if refused else (manifest, ())


def _platform_refusals(manifest: OptimizedModel, settings: Settings) -> tuple[str, ...]:
    """What a valid spec asks that this operator's settings do not allow, field by field."""
    refusals = []
    image = manifest.spec.serving.triton.image
    if not settings.image_allowed(image):
        refusals.append(f"spec.serving.triton.image: {image} is not in the operator's allow-list")
    deadline = settings.job_settings().deadline_error(manifest.spec.optimization.deadline_seconds)
    if deadline is not None:
        refusals.append(deadline)
    return tuple(refusals)


Routers = Callable[[OptimizedModel, RouterContext], TrafficRouter]


def _default_router(manifest: OptimizedModel, context: RouterContext) -> TrafficRouter:
    return router_for(manifest.spec, context)


@dataclass(frozen=True)
class Hooks:
    """Where the canary reads metrics and sets traffic, and the clock; tests substitute their own."""

    metrics: MetricsFactory = prometheus_metrics
    routers: Routers = _default_router
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass(frozen=True)
class ReconcileContext:
    """What every reconcile works with: the operator's settings, the API, where the canary reads
    metrics and sets traffic, and the time of this reconcile."""

    settings: Settings
    kube: KubeClient
    hooks: Hooks
    now: datetime


@dataclass(frozen=True)
class Resource:
    """One OptimizedModel as this pass reads it: parsed once, its status as the status model."""

    name: str
    namespace: str
    owner: Owner
    annotations: Mapping[str, str]
    status: OptimizedModelStatus
    generation: int
    """The pipeline's (see `optiserve.domain.pipeline_generation`): an approval does not restart it."""
    metadata_generation: int
    spec: object
    manifest: OptimizedModel | None
    spec_errors: tuple[str, ...]


def _resource(name: str, namespace: str, body: Mapping[str, Any], status: OptimizedModelStatus, settings: Settings) -> Resource:
    meta = body.get("metadata") or {}
    metadata_generation = int(meta.get("generation") or 1)
    manifest, spec_errors = _parse(name, namespace, body, settings)
    return Resource(
        name=name,
        namespace=namespace,
        owner=Owner(api_version=f"{API_GROUP}/{API_VERSION}", kind=KIND, name=name, uid=str(meta.get("uid", ""))),
        annotations=dict(meta.get("annotations") or {}),
        status=status,
        generation=pipeline_generation(metadata_generation, body.get("spec"), status),
        metadata_generation=metadata_generation,
        spec=body.get("spec"),
        manifest=manifest,
        spec_errors=spec_errors,
    )


def _triton_manifests(
    resource: Resource, variant: Variant, artifact: ArtifactRef, settings: Settings
) -> tuple[dict[str, Any], dict[str, Any]]:
    assert resource.manifest is not None
    triton = resource.manifest.spec.serving.triton
    deployment = build_triton_deployment(
        resource.owner, resource.namespace, variant, triton, settings.serving_settings(), artifact.sha256
    )
    deployment["metadata"]["annotations"] = {ARTIFACT_ANNOTATION: artifact.sha256}
    return deployment, build_triton_service(resource.owner, resource.namespace, variant.name)


@dataclass(frozen=True)
class Observation:
    """What this pass read of the cluster, for `decide` and for acting on its decision."""

    observed: Observed
    job: JobObservation | None
    router: TrafficRouter | None
    """Built and read where the decision may route; None where nothing can be routed yet."""
    weight: int | None
    """The candidate weight the router read back."""


def _observe_router(resource: Resource, context: ReconcileContext) -> tuple[TrafficRouter | None, int | None, str]:
    """The router and the weight it reads back, or why it cannot be set up or read."""
    assert resource.manifest is not None
    api = context.kube.traffic_api()
    try:
        router = context.hooks.routers(resource.manifest, RouterContext(resource.owner, resource.namespace, api))
        return router, router.current_weight(), ""
    except PermanentError as e:
        return None, None, str(e)


def _with_known_pass(job: JobObservation | None, status: OptimizedModelStatus) -> JobObservation | None:
    """A running Job whose log said nothing this time (it cannot be read, or the pass line has left
    its tail) is still in the pass the status names, when that status describes the same generation."""
    if job is None or job.state is not JobState.RUNNING or job.current_pass is not None:
        return job
    if described_generation(status) != job.generation or status.optimization is None:
        return job
    return replace(job, current_pass=status.optimization.current_pass)


def _pass_events(previous: OptimizedModelStatus, status: Mapping[str, Any]) -> list[Event]:
    """PassStarted when the status names a pass it did not name before."""
    optimization = status.get("optimization")
    now = optimization.get("currentPass") if isinstance(optimization, Mapping) else None
    before = previous.optimization.current_pass if previous.optimization is not None else None
    if not now or now == before:
        return []
    return [Event("Normal", PASS_STARTED, f"the optimization job started pass {now}")]


def _replica_split(manifest: OptimizedModel | None) -> bool:
    return manifest is not None and manifest.spec.rollout.traffic.provider is TrafficProvider.REPLICAS


def _observe(resource: Resource, context: ReconcileContext) -> Observation:
    kube, name, namespace, generation = context.kube, resource.name, resource.namespace, resource.generation
    phase, observed_generation = resource.status.phase, described_generation(resource.status)
    settled = phase in TERMINAL and observed_generation == generation
    job = candidate = baseline = None
    if resource.manifest is not None and not settled:  # a settled resource needs no job reads until its spec changes
        job = _with_known_pass(kube.observe_job(namespace, name, generation), resource.status)
    if resource.manifest is not None and (not settled or phase is Phase.PROMOTED):  # promoted: keep the baseline serving
        candidate = kube.observe_candidate(namespace, name)
        baseline = kube.observe_baseline(namespace, name)
    # A baseline already serving this generation means the promotion happened and only the status
    # write was lost (a crash in between): decide must see the baseline from before this rollout.
    promoted = baseline.artifact_sha256 or None if baseline is not None and baseline.generation != generation else None
    ours = candidate is not None and candidate.observation.generation == generation
    observed = Observed(
        generation=generation,
        phase=phase,
        observed_generation=observed_generation,
        phase_since=candidate.created if candidate is not None and ours else None,
        promoted_sha256=promoted,
        job=job,
        candidate=candidate.observation if candidate is not None else None,
        spec_errors=resource.spec_errors,
        baseline_ready=baseline is not None and baseline.ready and baseline.generation == generation,
        baseline_exists=baseline is not None,
        replica_split=resource.manifest is not None
        and resource.manifest.spec.rollout.traffic.provider is TrafficProvider.REPLICAS,
        serving_unsupported=_serving_unsupported(resource.manifest),
    )
    router, weight, error = None, None, ""
    if resource.manifest is not None and (ours or baseline is not None):
        router, weight, error = _observe_router(resource, context)
    return Observation(replace(observed, traffic_error=error), job, router, weight)


def _serving_unsupported(manifest: OptimizedModel | None) -> str:
    if manifest is not None and manifest.spec.model.task is Task.TEXT_GENERATION:
        return "serving text-generation models (streaming Triton model, canary on time to first token) is not supported yet"
    return ""


def _canary_step(resource: Resource, context: ReconcileContext) -> CanaryStep:
    """The rollout engine's step, hosted here: status holds its state, Prometheus its data."""

    def step(result: JobResult) -> Decision:
        assert resource.manifest is not None
        inputs = CanaryInputs(
            resource.manifest,
            resource.namespace,
            resource.generation,
            resource.status,
            resource.annotations,
            result,
            context.now,
            context.settings.default_prometheus,
        )
        return canary_decision_for(inputs, context.hooks.metrics)

    return step


def _route(decision: Decision, seen: Observation) -> tuple[Decision, int | None]:
    """Give the router the weight the decision needs, verified by reading it back; before anything
    is retired, so traffic always leaves a variant before the variant goes. Returns the decision
    (failed, where the router refused the weight: the baseline keeps serving) and the weight read back.
    A transient failure propagates as it is (a `TransientError`) and the handler retries it."""
    weight = route_weight(decision, seen.observed)
    if weight is None or seen.router is None:
        return decision, seen.weight
    try:
        return decision, route(seen.router, weight)
    except PermanentError as e:
        return traffic_failed(str(e)), None


def _act(decision: Decision, resource: Resource, seen: Observation, context: ReconcileContext) -> None:
    manifest, kube, settings = resource.manifest, context.kube, context.settings
    namespace, generation, job = resource.namespace, resource.generation, seen.job
    # With the replica-ratio router the split *is* the replica counts: the router owns them.
    scale_owned = not (seen.observed.replica_split and decision.weight is not None)
    if manifest is not None and Child.JOB in decision.want and job is None:
        request = job_request_from_manifest(manifest, base_dir=source_dir(resource.name))
        deadline = manifest.spec.optimization.deadline_seconds
        kube.ensure(build_optimization_job(resource.owner, namespace, generation, request, settings.job_settings(), deadline))
    result = job.result if job is not None else None
    if manifest is not None and Child.CANDIDATE in decision.want and result is not None and result.artifact is not None:
        for child in _triton_manifests(resource, Variant(CANDIDATE, generation, 1), result.artifact, settings):
            kube.ensure(child, scale_owned)
    if manifest is not None and Child.COMPARATOR in decision.want:
        comparator = settings.comparator_settings()
        kube.ensure(build_comparator_deployment(resource.owner, namespace, generation, manifest.spec, comparator))
        kube.ensure(build_comparator_service(resource.owner, namespace))
    if decision.remove_stale:
        kube.remove_stale(namespace, resource.name, generation)
    baseline_still_ready = _serve_baseline(decision, resource, context, scale_owned)
    # The decision saw the baseline before this reconcile wrote it: a write that changed what it
    # serves (a promotion repeated after its status write was lost) starts a new rollout of the
    # baseline, and the candidate stays until a later reconcile sees that rollout ready.
    if decision.retire_candidate and baseline_still_ready:
        kube.retire_candidate(namespace, resource.name)


def _serve_baseline(decision: Decision, resource: Resource, context: ReconcileContext, scale_owned: bool) -> bool:
    """Write the baseline with the promoted artifact (the one promoted now, or the one status names:
    the Job that made it may be long gone); whether it is still ready after the write."""
    promoted = decision.promote.artifact if decision.promote is not None else None
    if promoted is None and Child.BASELINE in decision.want:
        promoted = resource.status.artifact
    if resource.manifest is None or promoted is None:
        return True
    variant = Variant(BASELINE, resource.generation, resource.manifest.spec.serving.replicas)
    still_ready = True
    for child in _triton_manifests(resource, variant, promoted, context.settings):
        written = context.kube.ensure(child, scale_owned)
        if written.get("kind") == "Deployment":
            still_ready = deployment_ready(written)
    return still_ready


def _events(before: Phase, restarted: bool, decision: Decision) -> list[Event]:
    events = [Event("Normal", decision.reason, message) for message in decision.events]
    if decision.phase is not before or restarted:
        kind: Literal["Normal", "Warning"] = "Warning" if decision.phase in WARNING_PHASES else "Normal"
        events.append(Event(kind, decision.reason, f"{before.value} -> {decision.phase.value}: {decision.message}"))
    return events


def _one_pass(resource: Resource, context: ReconcileContext) -> tuple[Decision, dict[str, Any], list[Event]]:
    """Observe, decide once, act, and the status that says so."""
    seen = _observe(resource, context)
    observed = seen.observed
    decision = decide(observed, context.now, context.settings.deploy_deadline_seconds, _canary_step(resource, context))
    decision, verified_weight = _route(decision, seen)
    if decision.phase in TERMINAL and any(key in resource.annotations for key in SIGNAL_ANNOTATIONS):
        context.kube.remove_annotations(resource.namespace, resource.name, SIGNAL_ANNOTATIONS)
    logger.debug(
        "%s/%s generation %d: %s -> %s (%s)",
        resource.namespace,
        resource.name,
        resource.generation,
        observed.phase,
        decision.phase,
        decision.reason,
    )
    _act(decision, resource, seen, context)
    new_status = build_status(
        decision,
        generation=resource.generation,
        previous=resource.status,
        job=seen.job,
        now=context.now,
        tracking=Tracking(resource.metadata_generation, spec_digest(resource.spec), verified_weight),
    )
    restarted = observed.observed_generation is not None and observed.observed_generation != resource.generation
    return decision, new_status, _events(observed.phase, restarted, decision) + _pass_events(resource.status, new_status)


def reconcile(
    name: str,
    namespace: str,
    body: Mapping[str, Any],
    settings: Settings,
    *,
    kube: KubeClient,
    hooks: Hooks | None = None,
) -> StatusPatch:
    """Bring one OptimizedModel's children in line with its spec; return the status to write.

    An invalid spec is not an exception: it becomes phase Failed with every error named by field.
    Transient API errors propagate as `TransientError` for the caller to retry.
    """
    hooks = hooks or Hooks()
    context = ReconcileContext(settings, kube, hooks, hooks.clock())
    raw: dict[str, Any] = dict(body.get("status") or {})
    patch: dict[str, Any] = {}
    events: list[Event] = []
    decision = None
    for _ in range(MAX_PASSES):
        resource = _resource(name, namespace, body, read_status(raw), settings)
        decision, step, step_events = _one_pass(resource, context)
        patch = compose_merge_patches(patch, step)  # a later pass's removals and partial writes both hold
        raw = apply_merge_patch(raw, step)
        events.extend(step_events)
        if decision.requeue_after_s != 0:
            break
    assert decision is not None
    return StatusPatch(status=patch, events=tuple(events), requeue_after_s=decision.requeue_after_s)
