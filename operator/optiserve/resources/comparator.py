"""The online comparator's Deployment and Service: `optiserve comparator` next to the two Tritons.

It reads the candidate generation's golden set from the artifact volume the Triton pods mount
(read-only), sends it to the baseline and candidate Services, and exposes `/metrics` (scraped by
annotation) and `/healthz` (its probes). One replica, replaced with `Recreate`: two comparators
would only double the probing load. Agreement follows the spec: top-1 for classifiers, otherwise
a per-sample cosine threshold derived from `validation` (see `agreement_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optiserve.api.spec import OptimizedModelSpec
from optiserve.comparator.compare import agreement_threshold
from optiserve.golden import GOLDEN_FILE
from optiserve.resources.job import MODELS_MOUNT, output_dir
from optiserve.resources.names import deployment_name, labels
from optiserve.resources.pod import ContainerResources, Owner, restricted_pod_security, restricted_security_context
from optiserve.resources.triton_deployment import HTTP_PORT as TRITON_HTTP_PORT

COMPONENT_LABEL = "optiserve.io/component"
COMPONENT = "comparator"
HTTP_PORT = 8080
PORT_NAME = "metrics"
"""Named like Triton's metrics port, so one PodMonitor endpoint (the chart's) scrapes both."""
COMPARATOR_UID = 10001  # the optiserve user of the project's images


@dataclass(frozen=True)
class ComparatorDeploymentSettings:
    """What the platform team sets for every comparator (operator flags / Helm values)."""

    image: str
    models_pvc: str = "optiserve-models"
    resources: ContainerResources = field(default_factory=lambda: ContainerResources("100m", "128Mi", "500m", "256Mi"))
    interval: str = "1s"
    sample_size: int = 8
    timeout: str = "5s"


def comparator_labels(model: str, generation: int | None = None) -> dict[str, str]:
    return {**labels(model, generation=generation), COMPONENT_LABEL: COMPONENT}


def triton_url(model: str, namespace: str, variant: str) -> str:
    """The HTTP address of a variant's Triton Service, as `build_triton_service` names it."""
    return f"http://{deployment_name(model, variant)}.{namespace}.svc:{TRITON_HTTP_PORT}"


def comparator_args(
    model: str, namespace: str, generation: int, spec: OptimizedModelSpec, settings: ComparatorDeploymentSettings
) -> list[str]:
    args = [
        f"--baseline={triton_url(model, namespace, 'baseline')}",
        f"--candidate={triton_url(model, namespace, 'candidate')}",
        f"--model={model}",
        f"--golden={output_dir(model, generation)}/{GOLDEN_FILE}",
        f"--task={spec.model.task.value}",
        f"--threshold={agreement_threshold(spec.validation):g}",
        f"--interval={settings.interval}",
        f"--sample-size={settings.sample_size}",
        f"--timeout={settings.timeout}",
        f"--port={HTTP_PORT}",
    ]
    if spec.model.outputs:
        args.append(f"--output={spec.model.outputs[0]}")
    return args


def _container(args: list[str], settings: ComparatorDeploymentSettings) -> dict[str, Any]:
    def health(failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/healthz", "port": PORT_NAME}, "periodSeconds": 10, "failureThreshold": failures}

    return {
        "name": COMPONENT,
        "image": settings.image,
        "command": ["optiserve", "comparator"],
        "args": args,
        "ports": [{"name": PORT_NAME, "containerPort": HTTP_PORT}],
        "resources": settings.resources.manifest(),
        "securityContext": restricted_security_context(),
        "readinessProbe": health(3),
        "livenessProbe": health(6),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def build_comparator_deployment(
    owner: Owner, namespace: str, generation: int, spec: OptimizedModelSpec, settings: ComparatorDeploymentSettings
) -> dict[str, Any]:
    """`generation` is the candidate's: its output directory holds the golden set."""
    model = owner.name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(model, COMPONENT),
            "namespace": namespace,
            "labels": comparator_labels(model, generation),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": comparator_labels(model)},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {
                    "labels": comparator_labels(model, generation),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": restricted_pod_security(COMPARATOR_UID),
                    "containers": [_container(comparator_args(model, namespace, generation, spec, settings), settings)],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": settings.models_pvc, "readOnly": True}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def build_comparator_service(owner: Owner, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": deployment_name(owner.name, COMPONENT),
            "namespace": namespace,
            "labels": comparator_labels(owner.name),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "selector": comparator_labels(owner.name),
            "ports": [{"name": PORT_NAME, "port": HTTP_PORT, "targetPort": PORT_NAME}],
        },
    }
