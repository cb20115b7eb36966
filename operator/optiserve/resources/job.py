"""The optimization Job, built as a typed-in-code manifest (never templated text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optiserve.api.job import JobRequest
from optiserve.api.spec import OptimizationSpec, trains
from optiserve.resources.names import job_name, labels
from optiserve.resources.pod import ContainerResources, Owner, restricted_pod_security, restricted_security_context

__all__ = ["JobSettings", "Owner", "build_optimization_job", "output_dir", "restricted_security_context"]

TERMINATION_LOG = "/dev/termination-log"
JOB_UID = 10001  # the optiserve user of the job images
MODELS_MOUNT = "/models"
DEFAULT_DEADLINE_SECONDS: int = OptimizationSpec.model_fields["deadline_seconds"].default
"""A Job's activeDeadlineSeconds when the spec sets none: the spec's own default."""
DEFAULT_MAX_DEADLINE_SECONDS = 86400
"""The longest deadline a spec may ask for, unless the platform sets another ceiling."""


@dataclass(frozen=True)
class JobSettings:
    """What the platform team sets for every optimization Job (operator flags / Helm values)."""

    image: str
    service_account: str = "optiserve-optimizer"
    models_pvc: str = "optiserve-models"
    resources: ContainerResources = field(default_factory=lambda: ContainerResources("2", "4Gi", "4", "8Gi"))
    training_resources: ContainerResources = field(default_factory=lambda: ContainerResources("2", "6Gi", "4", "12Gi"))
    """For a Job whose passes train (distill): the teacher, the student, their gradients and the
    optimizer state are in memory at once."""
    backoff_limit: int = 1
    max_deadline_seconds: int = DEFAULT_MAX_DEADLINE_SECONDS
    """The ceiling of a spec's optimization.deadlineSeconds (the Job's activeDeadlineSeconds)."""
    allowed_images: tuple[str, ...] = field(default=())

    def deadline_error(self, deadline_seconds: int) -> str | None:
        """Why a spec's deadline cannot be used (it is over the ceiling), naming both; None when it can."""
        if deadline_seconds <= self.max_deadline_seconds:
            return None
        return (
            f"spec.optimization.deadlineSeconds: {deadline_seconds} s is more than the {self.max_deadline_seconds} s "
            "this operator allows an optimization Job (its OPTISERVE_JOB_MAX_DEADLINE_SECONDS, Helm value "
            "optimizer.maxDeadlineSeconds)"
        )


class ImageNotAllowedError(ValueError):
    pass


class DeadlineNotAllowedError(ValueError):
    pass


def output_dir(model: str, generation: int) -> str:
    return f"{MODELS_MOUNT}/{model}/g{generation}"


def build_optimization_job(
    owner: Owner,
    namespace: str,
    generation: int,
    request: JobRequest,
    settings: JobSettings,
    deadline_seconds: int = DEFAULT_DEADLINE_SECONDS,
) -> dict[str, Any]:
    """The Job of one generation: `deadline_seconds` (the spec's optimization.deadlineSeconds) is its
    activeDeadlineSeconds, and a request whose passes train gets the training resources."""
    if settings.allowed_images and settings.image not in settings.allowed_images:
        raise ImageNotAllowedError(f"image {settings.image} is not in the operator's allow-list")
    refused = settings.deadline_error(deadline_seconds)
    if refused is not None:
        raise DeadlineNotAllowedError(refused)
    resources = settings.training_resources if trains(request.passes) else settings.resources
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
        "resources": resources.manifest(),
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
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "backoffLimit": settings.backoff_limit,
            # Exit code 1 is the job's own verdict (a gate or a bad input): retrying cannot change it.
            # Retries stay for crashes and evictions.
            "podFailurePolicy": {
                "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "optimize", "operator": "In", "values": [1]}}]
            },
            "activeDeadlineSeconds": deadline_seconds,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": meta_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.service_account,
                    "automountServiceAccountToken": False,
                    "securityContext": restricted_pod_security(JOB_UID),
                    "containers": [container],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": settings.models_pvc}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
