"""Triton Deployments and Services for the baseline and candidate variants.

Model control is explicit (`--model-control-mode=explicit --load-model=NAME`): the server loads
exactly the published model at start and never picks up a half-written directory by polling.
Readiness means ready *and warm*: `config.pbtxt` carries `model_warmup` for each preferred batch
size, the startup probe waits for the model (sized for model load), and the readiness probe sends
a real inference (the `ready_request.json` the job publishes next to the repositories).

Before Triton starts, an init container (`optiserve verify-artifact`, from the operator's image)
checks the artifact on the volume against its manifest and the manifest against the digest the
job reported: a truncated, edited or half-published artifact is never loaded, and the pod's
status says which file is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optiserve.api.spec import TritonSpec
from optiserve.resources.job import MODELS_MOUNT, output_dir
from optiserve.resources.names import deployment_name, labels
from optiserve.resources.pod import ContainerResources, Owner, restricted_pod_security, restricted_security_context

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
TRITON_UID = 1000  # the triton-server user of NVIDIA's image
READY_REQUEST = "ready_request.json"


@dataclass(frozen=True)
class Variant:
    name: str  # "baseline" or "candidate"
    generation: int
    replicas: int


@dataclass(frozen=True)
class ServingSettings:
    models_pvc: str = "optiserve-models"
    resources: ContainerResources = field(default_factory=lambda: ContainerResources("2", "2Gi", "4", "4Gi"))
    startup_seconds: int = 600
    drain_seconds: int = 10
    """How long a Triton pod that is going away keeps serving after it leaves its Service's
    endpoints: a Gateway or proxy learns of the change a moment later and sends it requests until
    then (a preStop sleep, as a rolling update behind any proxy needs)."""
    verifier_image: str = "ghcr.io/optiserve/operator:0.1.0"
    """Runs `optiserve verify-artifact` before Triton starts (the operator's own image)."""
    verifier_resources: ContainerResources = field(default_factory=lambda: ContainerResources("100m", "64Mi", "1", "256Mi"))


def _verify_container(repository_dir: str, artifact_sha256: str, settings: ServingSettings) -> dict[str, Any]:
    return {
        "name": "verify-artifact",
        "image": settings.verifier_image,
        "command": ["optiserve", "verify-artifact", repository_dir, f"--sha256={artifact_sha256}"],
        "resources": settings.verifier_resources.manifest(),
        "securityContext": restricted_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}],
    }


def _probes(model: str, repository_dir: str, startup_seconds: int) -> dict[str, Any]:
    infer = (
        f"curl -sf -X POST -H 'Content-Type: application/json' --data @{repository_dir}/{READY_REQUEST} "
        f"http://127.0.0.1:{HTTP_PORT}/v2/models/{model}/infer -o /dev/null"
    )
    return {
        "startupProbe": {
            "httpGet": {"path": f"/v2/models/{model}/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": max(1, startup_seconds // 5),
        },
        "readinessProbe": {
            "exec": {"command": ["sh", "-c", infer]},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
    }


def build_triton_deployment(
    owner: Owner,
    namespace: str,
    variant: Variant,
    triton: TritonSpec,
    settings: ServingSettings,
    artifact_sha256: str | None = None,
) -> dict[str, Any]:
    """``artifact_sha256``: the digest the job reported; with it, the pod verifies the artifact first."""
    model = owner.name
    repository_dir = output_dir(model, variant.generation)
    meta_labels = labels(model, variant.name, variant.generation)
    selector = labels(model, variant.name)
    container = {
        "name": "triton",
        "image": triton.image,
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={repository_dir}/{triton.backend.repository}",
            "--model-control-mode=explicit",
            f"--load-model={model}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--metrics-config=summary_latencies=true",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": settings.resources.manifest(),
        "securityContext": restricted_security_context(),
        # A model that fails to load ends the server (exit-on-error); its log's tail, kept as the
        # termination message, is how the operator's status can say why the candidate is not ready.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
        **_probes(model, repository_dir, settings.startup_seconds),
        "lifecycle": {"preStop": {"sleep": {"seconds": settings.drain_seconds}}},
    }
    verifier = _verify_container(repository_dir, artifact_sha256, settings) if artifact_sha256 else None
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(model, variant.name),
            "namespace": namespace,
            "labels": meta_labels,
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "replicas": variant.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": meta_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    # The drain, then Triton's own shutdown (it finishes in-flight requests).
                    "terminationGracePeriodSeconds": settings.drain_seconds + 30,
                    "securityContext": restricted_pod_security(TRITON_UID),
                    **({"initContainers": [verifier]} if verifier else {}),
                    "containers": [container],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": settings.models_pvc, "readOnly": True}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def build_triton_service(owner: Owner, namespace: str, variant: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": deployment_name(owner.name, variant),
            "namespace": namespace,
            "labels": labels(owner.name, variant),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "selector": labels(owner.name, variant),
            "ports": [
                {"name": name, "port": port, "targetPort": name}
                for name, port in (("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT))
            ],
        },
    }
