"""Operator settings: what the platform team sets for the whole operator (Helm values -> env)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from optiserve.resources.comparator import ComparatorDeploymentSettings
from optiserve.resources.job import DEFAULT_DEADLINE_SECONDS, DEFAULT_MAX_DEADLINE_SECONDS, JobSettings
from optiserve.resources.pod import ContainerResources
from optiserve.resources.triton_deployment import ServingSettings

DEFAULT_JOB_IMAGE = "ghcr.io/optiserve/optimizer:0.1.0"
DEFAULT_OPERATOR_IMAGE = "ghcr.io/optiserve/operator:0.1.0"
"""The operator's own image: the canary's comparator and the Triton pods' artifact check run `optiserve` from it."""
DEFAULT_MODELS_PVC = "optiserve-models"
DEFAULT_PROMETHEUS = "http://prometheus.monitoring:9090"
DEFAULT_BIND_ADDRESS = "0.0.0.0"  # noqa: S104 - in a pod, the kubelet and Prometheus reach it from outside
MAX_PORT = 65535
DEFAULT_RECONCILE_WORKERS = 16
DEFAULT_LEASE_NAME = "optiserve-operator"


class SettingsError(ValueError):
    """An operator setting that cannot be used; the message names the environment variable."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


def _resources(env: Mapping[str, str], name: str) -> ContainerResources | None:
    """`{"requests": {"cpu", "memory"}, "limits": {"cpu", "memory"}}` as JSON (the chart writes it), or None."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
        quantities = [str(value[side][kind]) for side in ("requests", "limits") for kind in ("cpu", "memory")]
    except (ValueError, KeyError, TypeError) as e:
        raise SettingsError(f"{name}: requests and limits, each with cpu and memory, as JSON; got {raw!r}") from e
    for quantity in quantities:
        if not _QUANTITY.match(quantity):
            raise SettingsError(f"{name}: {quantity!r} is not a Kubernetes quantity")
    return ContainerResources(*quantities)


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from e
    if value <= 0:
        raise SettingsError(f"{name}: must be positive, got {raw!r}")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from e


def _port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port to listen on; empty or 0 means the server is off."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError as e:
        raise SettingsError(f"{name}: expected a port number, got {raw!r}") from e
    if not 0 <= value <= MAX_PORT:
        raise SettingsError(f"{name}: a port is 1-{MAX_PORT} (0 turns it off), got {raw!r}")
    return value or None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


@dataclass(frozen=True)
class LeaderElectionSettings:
    """Of several operator replicas, the one holding the Lease acts (see `optiserve.leader`)."""

    enabled: bool = False
    namespace: str = ""
    """Where the Lease lives: the operator's own namespace (the chart passes the pod's)."""
    name: str = DEFAULT_LEASE_NAME
    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0

    def __post_init__(self) -> None:
        if self.enabled and not self.namespace:
            raise SettingsError("OPTISERVE_LEASE_NAMESPACE: leader election needs the Lease's namespace (or POD_NAMESPACE)")
        if not self.retry_s < self.renew_deadline_s < self.duration_s:
            raise SettingsError(
                "OPTISERVE_LEASE_RENEW_DEADLINE_SECONDS: need retry < renew deadline < duration, got "
                f"{self.retry_s:g} < {self.renew_deadline_s:g} < {self.duration_s:g}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LeaderElectionSettings:
        return cls(
            enabled=_flag(env, "OPTISERVE_LEADER_ELECTION"),
            namespace=(env.get("OPTISERVE_LEASE_NAMESPACE", "").strip() or env.get("POD_NAMESPACE", "").strip()),
            name=env.get("OPTISERVE_LEASE_NAME", "").strip() or DEFAULT_LEASE_NAME,
            duration_s=_positive(env, "OPTISERVE_LEASE_DURATION_SECONDS", 15.0),
            renew_deadline_s=_positive(env, "OPTISERVE_LEASE_RENEW_DEADLINE_SECONDS", 10.0),
            retry_s=_positive(env, "OPTISERVE_LEASE_RETRY_SECONDS", 2.0),
        )


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all namespaces."""
    job_image: str = DEFAULT_JOB_IMAGE
    operator_image: str = DEFAULT_OPERATOR_IMAGE
    allowed_images: tuple[str, ...] = field(default=())
    """Images the operator may run (the job image and Triton images); empty allows any."""
    models_pvc: str = DEFAULT_MODELS_PVC
    default_prometheus: str = DEFAULT_PROMETHEUS
    resync_seconds: float = 10.0
    """How often every resource is reconciled even when nothing changed (the level-based timer)."""
    deploy_deadline_seconds: float = 600.0
    metrics_port: int | None = None
    """Where the operator's Prometheus metrics are served (`/metrics`); None: not served."""
    health_port: int | None = None
    """Where kopf's liveness endpoint answers (`/healthz`); None: not served."""
    bind_address: str = DEFAULT_BIND_ADDRESS
    """The address the metrics and health servers listen on."""
    reconcile_workers: int = DEFAULT_RECONCILE_WORKERS
    """Threads that run reconciles (kopf's executor for sync handlers) and API connections kept
    open for them. A reconcile mostly waits on the API, so this, not CPU, bounds throughput."""
    leader_election: LeaderElectionSettings = field(default_factory=LeaderElectionSettings)
    job_resources: ContainerResources | None = None
    """The optimization Job's requests and limits; None: JobSettings' defaults."""
    job_training_resources: ContainerResources | None = None
    """The same for a Job whose passes train (distill); None: JobSettings' defaults."""
    job_max_deadline_seconds: int = DEFAULT_MAX_DEADLINE_SECONDS
    """The longest optimization.deadlineSeconds a spec may ask for; a spec over it fails, naming both."""
    triton_resources: ContainerResources | None = None
    """Each Triton container's requests and limits; None: ServingSettings' defaults."""

    def __post_init__(self) -> None:
        # Checked here, not per Job: a misconfigured operator should fail at start, not on every reconcile.
        if self.allowed_images and self.job_image not in self.allowed_images:
            raise SettingsError(f"OPTISERVE_JOB_IMAGE: {self.job_image} is not in OPTISERVE_ALLOWED_IMAGES")
        if self.allowed_images and self.operator_image not in self.allowed_images:
            raise SettingsError(f"OPTISERVE_OPERATOR_IMAGE: {self.operator_image} is not in OPTISERVE_ALLOWED_IMAGES")
        for name, port in (("OPTISERVE_METRICS_PORT", self.metrics_port), ("OPTISERVE_HEALTH_PORT", self.health_port)):
            if port is not None and not 1 <= port <= MAX_PORT:
                raise SettingsError(f"{name}: a port is 1-{MAX_PORT}, got {port}")
        if self.reconcile_workers < 1:
            raise SettingsError(f"OPTISERVE_RECONCILE_WORKERS: must be at least 1, got {self.reconcile_workers}")
        if self.metrics_port is not None and self.metrics_port == self.health_port:
            raise SettingsError(f"OPTISERVE_HEALTH_PORT: {self.health_port} is already the metrics port")
        if self.job_max_deadline_seconds < DEFAULT_DEADLINE_SECONDS:
            raise SettingsError(
                f"OPTISERVE_JOB_MAX_DEADLINE_SECONDS: at least {DEFAULT_DEADLINE_SECONDS} (the deadline of a spec that "
                f"sets none, which a lower ceiling would refuse), got {self.job_max_deadline_seconds}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        return cls(
            namespaces=_split(source.get("OPTISERVE_NAMESPACES", "")),
            job_image=source.get("OPTISERVE_JOB_IMAGE", "").strip() or DEFAULT_JOB_IMAGE,
            operator_image=source.get("OPTISERVE_OPERATOR_IMAGE", "").strip() or DEFAULT_OPERATOR_IMAGE,
            allowed_images=_split(source.get("OPTISERVE_ALLOWED_IMAGES", "")),
            models_pvc=source.get("OPTISERVE_MODELS_PVC", "").strip() or DEFAULT_MODELS_PVC,
            default_prometheus=source.get("OPTISERVE_PROMETHEUS", "").strip() or DEFAULT_PROMETHEUS,
            resync_seconds=_positive(source, "OPTISERVE_RESYNC_SECONDS", 10.0),
            deploy_deadline_seconds=_positive(source, "OPTISERVE_DEPLOY_DEADLINE_SECONDS", 600.0),
            metrics_port=_port(source, "OPTISERVE_METRICS_PORT"),
            health_port=_port(source, "OPTISERVE_HEALTH_PORT"),
            bind_address=source.get("OPTISERVE_BIND_ADDRESS", "").strip() or DEFAULT_BIND_ADDRESS,
            reconcile_workers=_count(source, "OPTISERVE_RECONCILE_WORKERS", DEFAULT_RECONCILE_WORKERS),
            leader_election=LeaderElectionSettings.from_env(source),
            job_resources=_resources(source, "OPTISERVE_JOB_RESOURCES"),
            job_training_resources=_resources(source, "OPTISERVE_JOB_TRAINING_RESOURCES"),
            job_max_deadline_seconds=_count(source, "OPTISERVE_JOB_MAX_DEADLINE_SECONDS", DEFAULT_MAX_DEADLINE_SECONDS),
            triton_resources=_resources(source, "OPTISERVE_TRITON_RESOURCES"),
        )

    def liveness_endpoint(self) -> str | None:
        """kopf's liveness URL (it serves it from its own event loop), or None when off."""
        if self.health_port is None:
            return None
        host = f"[{self.bind_address}]" if ":" in self.bind_address else self.bind_address
        return f"http://{host}:{self.health_port}/healthz"

    def image_allowed(self, image: str) -> bool:
        return not self.allowed_images or image in self.allowed_images

    def job_settings(self) -> JobSettings:
        job = JobSettings(
            image=self.job_image,
            models_pvc=self.models_pvc,
            allowed_images=self.allowed_images,
            max_deadline_seconds=self.job_max_deadline_seconds,
        )
        job = replace(job, resources=self.job_resources) if self.job_resources else job
        return replace(job, training_resources=self.job_training_resources) if self.job_training_resources else job

    def comparator_settings(self) -> ComparatorDeploymentSettings:
        return ComparatorDeploymentSettings(image=self.operator_image, models_pvc=self.models_pvc)

    def serving_settings(self) -> ServingSettings:
        serving = ServingSettings(models_pvc=self.models_pvc, verifier_image=self.operator_image)
        return replace(serving, resources=self.triton_resources) if self.triton_resources else serving
