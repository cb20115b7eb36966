"""The optimization Job, built as a typed-in-code manifest (never templated text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optiserve.api.job import JobRequest
from optiserve.resources.names import job_name, labels

TERMINATION_LOG = "/dev/termination-log"
MODELS_MOUNT = "/models"


@dataclass(frozen=True)
class JobSettings:
    """What the platform team sets for every optimization Job (operator flags / Helm values)."""

    image: str
    service_account: str = "optiserve-optimizer"
    models_pvc: str = "optiserve-models"
    cpu_request: str = "2"
    memory_request: str = "4Gi"
    cpu_limit: str = "4"
    memory_limit: str = "8Gi"
    backoff_limit: int = 1
    active_deadline_seconds: int = 3600
    allowed_images: tuple[str, ...] = field(default=())


class ImageNotAllowedError(ValueError):
    pass


@dataclass(frozen=True)
class Owner:
    api_version: str
    kind: str
    name: str
    uid: str


def restricted_security_context() -> dict[str, Any]:
    """The container side of the 'restricted' Pod Security Standard."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def output_dir(model: str, generation: int) -> str:
    return f"{MODELS_MOUNT}/{model}/g{generation}"


def build_optimization_job(
    owner: Owner, namespace: str, generation: int, request: JobRequest, settings: JobSettings
) -> dict[str, Any]:
    if settings.allowed_images and settings.image not in settings.allowed_images:
        raise ImageNotAllowedError(f"image {settings.image} is not in the operator's allow-list")
    name = job_name(owner.name, generation)
    meta_labels = labels(owner.name, "optimizer", generation)
    container = {
        "name": "optimize",
        "image": settings.image,
        "args": ["--out", output_dir(owner.name, generation), "--termination-log", TERMINATION_LOG],
        "env": [
            {"name": "OPTISERVE_JOB_REQUEST", "value": request.model_dump_json(by_alias=True)},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"cpu": settings.cpu_limit, "memory": settings.memory_limit},
        },
        "securityContext": restricted_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta_labels,
            "ownerReferences": [
                {
                    "apiVersion": owner.api_version,
                    "kind": owner.kind,
                    "name": owner.name,
                    "uid": owner.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": settings.backoff_limit,
            # Exit code 1 is the job's own verdict (a gate or a bad input): retrying cannot change it.
            # Retries stay for crashes and evictions.
            "podFailurePolicy": {
                "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "optimize", "operator": "In", "values": [1]}}]
            },
            "activeDeadlineSeconds": settings.active_deadline_seconds,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": meta_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.service_account,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": settings.models_pvc}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
