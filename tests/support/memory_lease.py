"""An in-memory Lease store for the leader election's tests."""

from __future__ import annotations

from dataclasses import replace

from optiserve.kube.client import TransientError
from optiserve.kube.lease import LeaseConflictError, LeaseRecord


class MemoryLease:
    """A Lease with resourceVersions: a write at a stale version is refused (HTTP 409)."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise TransientError("the API server is unreachable")

    def get(self) -> LeaseRecord | None:
        self._check()
        return self.record

    def create(self, record: LeaseRecord) -> str:
        self._check()
        if self.record is not None:
            raise LeaseConflictError("exists")
        return self._store(record)

    def replace(self, record: LeaseRecord) -> str:
        self._check()
        if self.record is None or record.resource_version != self.record.resource_version:
            raise LeaseConflictError("stale")
        return self._store(record)

    def _store(self, record: LeaseRecord) -> str:
        self.version += 1
        self.record = replace(record, resource_version=str(self.version))
        return str(self.version)
