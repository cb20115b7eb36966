"""The leader election's Lease (coordination.k8s.io/v1), read and written with optimistic concurrency."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from optiserve.errors import TransientError
from optiserve.kube.client import ApiError, classify_api_error


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    """The identity holding the lease; empty once released."""
    duration_s: float
    acquired: datetime | None
    renewed: datetime | None
    transitions: int
    resource_version: str = ""


class LeaseConflictError(Exception):
    """Someone else wrote the lease first (HTTP 409): this attempt lost the race."""


class LeaseApi:
    def __init__(self, api: k8s.ApiClient, namespace: str, name: str, timeout_s: float = 5.0) -> None:
        self._coordination = k8s.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self._timeout = (min(5.0, timeout_s), timeout_s)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _call(self, what: str, method: Any, *args: Any) -> Any:
        try:
            return method(*args, _request_timeout=self._timeout)
        except ApiException as e:
            if e.status == 409:
                raise LeaseConflictError(f"{what}: written by someone else first") from e
            raise classify_api_error(e, what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(f"{what}: {e}") from e

    def get(self) -> LeaseRecord | None:
        what = f"read Lease {self.namespace}/{self.name}"
        try:
            lease = self._call(what, self._coordination.read_namespaced_lease, self.name, self.namespace)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        spec = lease.spec
        return LeaseRecord(
            holder=spec.holder_identity or "",
            duration_s=float(spec.lease_duration_seconds or 0),
            acquired=spec.acquire_time,
            renewed=spec.renew_time,
            transitions=int(spec.lease_transitions or 0),
            resource_version=str(lease.metadata.resource_version or ""),
        )

    def _body(self, record: LeaseRecord) -> k8s.V1Lease:
        spec = k8s.V1LeaseSpec(
            holder_identity=record.holder or None,
            lease_duration_seconds=max(1, round(record.duration_s)),
            acquire_time=record.acquired,
            renew_time=record.renewed,
            lease_transitions=record.transitions,
        )
        meta = k8s.V1ObjectMeta(name=self.name, namespace=self.namespace, resource_version=record.resource_version or None)
        return k8s.V1Lease(api_version="coordination.k8s.io/v1", kind="Lease", metadata=meta, spec=spec)

    def create(self, record: LeaseRecord) -> str:
        """Create the lease; its new resourceVersion."""
        what = f"create Lease {self.namespace}/{self.name}"
        created = self._call(what, self._coordination.create_namespaced_lease, self.namespace, self._body(record))
        return str(created.metadata.resource_version)

    def replace(self, record: LeaseRecord) -> str:
        """Write the lease if it is still at `record.resource_version`; its new resourceVersion."""
        what = f"update Lease {self.namespace}/{self.name}"
        replaced = self._call(what, self._coordination.replace_namespaced_lease, self.name, self.namespace, self._body(record))
        return str(replaced.metadata.resource_version)
