"""The operator as a host of the rollout engine (`optiserve.rollout_engine`, shared with local mode).

`reconcile` calls `canary_decision_for` while the resource is in Canary; everything that decides
lives in `optiserve.domain.canary` (pure) and `optiserve.domain.lifecycle.canary_decision`. The
rollout's state between reconciles is status.canary.progress, so a restarted operator continues
the same rollout: same step, same tallies, same clock.

Person or pipeline input:
- ``kubectl annotate om NAME optiserve.io/promote=true`` approves a rollout waiting for it
  (``promotion: manual``, or a hold);
- ``kubectl annotate om NAME optiserve.io/abort=true`` rolls back at once;
- ``spec.rollout.promoteArtifact: sha256:<digest>`` (GitOps) approves only the candidate whose
  artifact has that digest, so an approval committed for one candidate never promotes the next.
Both annotations are removed once the rollout reaches a final phase, so they never carry over to
the next rollout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from optiserve.api.job import JobResult
from optiserve.api.rollout import PrometheusSpec, duration_seconds
from optiserve.api.spec import OptimizedModel
from optiserve.api.status import OptimizedModelStatus, Phase, artifact_digest
from optiserve.domain.analysis_spec import canary_plan
from optiserve.domain.canary import CanaryProgress, Signals
from optiserve.domain.lifecycle import Child, Decision, canary_decision
from optiserve.domain.pipeline_generation import described_generation
from optiserve.providers.metrics import MetricsProvider
from optiserve.providers.prometheus import PrometheusMetrics, TritonSelector
from optiserve.rollout_engine import RolloutEngine
from optiserve.settings import DEFAULT_PROMETHEUS

logger = logging.getLogger(__name__)

PROMOTE_ANNOTATION = "optiserve.io/promote"
ABORT_ANNOTATION = "optiserve.io/abort"
SIGNAL_ANNOTATIONS = (PROMOTE_ANNOTATION, ABORT_ANNOTATION)
MAX_POLL_S = 15.0

MetricsFactory = Callable[[OptimizedModel, str], MetricsProvider]
"""(manifest, namespace) -> the metrics backend to judge with."""


def prometheus_metrics(manifest: OptimizedModel, namespace: str) -> MetricsProvider:
    """Triton's and the comparator's series of this model, told apart by the `variant` label.

    The scrape configuration must map the pods' `optiserve.io/variant` label to `variant` (the
    chart's PodMonitor does) and keep `namespace`; docs/canary.md shows the relabelling.
    """
    address = manifest.spec.rollout.analysis.prometheus.address or DEFAULT_PROMETHEUS
    selector = TritonSelector(model=manifest.metadata.name, extra=f'namespace="{namespace}"')
    analysis = manifest.spec.rollout.analysis
    scrape_s = duration_seconds(analysis.scrape_interval)
    return PrometheusMetrics(address, selector, scrape_interval_s=scrape_s, latency_source=analysis.latency_source)


def with_prometheus(manifest: OptimizedModel, default_address: str) -> OptimizedModel:
    """The manifest with its Prometheus address filled in from the operator's default when the spec names none."""
    analysis = manifest.spec.rollout.analysis
    if analysis.prometheus.address:
        return manifest
    analysis = analysis.model_copy(update={"prometheus": PrometheusSpec(address=default_address)})
    rollout = manifest.spec.rollout.model_copy(update={"analysis": analysis})
    return manifest.model_copy(update={"spec": manifest.spec.model_copy(update={"rollout": rollout})})


def signals(annotations: Mapping[str, str], manifest: OptimizedModel, candidate_sha256: str | None) -> Signals:
    promote_artifact = manifest.spec.rollout.promote_artifact
    approved_by_git = candidate_sha256 is not None and promote_artifact == artifact_digest(candidate_sha256)
    approved = annotations.get(PROMOTE_ANNOTATION) == "true" or approved_by_git
    return Signals(approved=approved, aborted=annotations.get(ABORT_ANNOTATION) == "true")


def stored_progress(status: OptimizedModelStatus, generation: int) -> CanaryProgress | None:
    """The rollout's state from status, if it belongs to this generation's canary."""
    if described_generation(status) != generation or status.canary is None or status.canary.progress is None:
        return None
    stored = status.canary.progress
    try:
        return CanaryProgress.model_validate(stored)
    except ValidationError:
        logger.warning("status.canary.progress is unreadable; the canary starts again from its first step")
        return None


@dataclass(frozen=True)
class CanaryInputs:
    manifest: OptimizedModel
    namespace: str
    generation: int
    status: OptimizedModelStatus
    annotations: Mapping[str, str]
    result: JobResult
    now: datetime
    default_prometheus: str = DEFAULT_PROMETHEUS
    """The operator's Prometheus (OPTISERVE_PROMETHEUS, the chart's prometheus.address), for a spec that names none."""


def _without_analysis(result: JobResult) -> Decision:
    return Decision(
        Phase.PROMOTED,
        "NoAnalysis",
        "spec.rollout.analysis.metrics is empty: promoted without a canary",
        want=frozenset({Child.JOB, Child.CANDIDATE}),
        remove_stale=True,
        promote=result,
        weight=100,
    )


def canary_decision_for(inputs: CanaryInputs, metrics: MetricsFactory = prometheus_metrics) -> Decision:
    """One step of the rollout engine, hosted by the operator: its state from status, Prometheus in
    the cluster, the person's or pipeline's signals; what the resource does next."""
    rollout = inputs.manifest.spec.rollout
    if not rollout.analysis.metrics:
        return _without_analysis(inputs.result)
    plan = canary_plan(rollout)
    manifest = with_prometheus(inputs.manifest, inputs.default_prometheus)
    queries = {m.name: m.query for m in rollout.analysis.metrics if m.query}
    engine = RolloutEngine(plan, lambda: metrics(manifest, inputs.namespace), queries)
    candidate_sha256 = inputs.result.artifact.sha256 if inputs.result.artifact else None
    wants = signals(inputs.annotations, inputs.manifest, candidate_sha256)
    outcome = engine.tick(stored_progress(inputs.status, inputs.generation), inputs.now, wants)
    return canary_decision(outcome.progress, inputs.result, len(plan.steps), min(plan.interval_s, MAX_POLL_S))
