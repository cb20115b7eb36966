"""Leader election on a Lease: of the operator's replicas one acts, the others wait to take over.

Why not kopf's peering: replicas of one Deployment have equal priorities, and with equal
priorities kopf's peers all keep running (kopf only warns of the conflict). A Lease with
client-go's rules is what controller-runtime operators use:

- The leader renews every `retry_s`. A leader that has not renewed for `renew_deadline_s` stops
  acting at once (`acting()` turns False, every reconcile checks it) and its process exits, to
  come back as a standby. `renew_deadline_s` < `duration_s`, so it has stopped before anyone
  else may start.
- A standby takes the lease when it is free (released, or never held) or when the record has
  not changed for `duration_s` as timed by the standby's own clock since it last saw it change:
  no comparison of clocks across machines.
- Every write carries the resourceVersion read: of two standbys racing for one lease, one wins.
- A leader that stops cleanly releases the lease, so a standby takes over at its next try
  instead of after `duration_s`.

The one case this cannot rule out is client-go's too: a leader frozen (not dead) for longer
than `duration_s` that wakes and acts before it notices. Its check of `acting()` before each
reconcile makes that window one reconcile at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from optiserve.errors import OptiServeError, TransientError
from optiserve.kube.lease import LeaseConflictError, LeaseRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTimings:
    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0


class LeaseStore(Protocol):
    def get(self) -> LeaseRecord | None: ...
    def create(self, record: LeaseRecord) -> str: ...
    def replace(self, record: LeaseRecord) -> str: ...


class Attempt(StrEnum):
    LEADING = "leading"
    """Acquired or renewed."""
    HELD = "held"
    """Another holder's lease has not expired."""
    FAILED = "failed"
    """The API could not be reached, or another write landed first: try again."""


def _wall_now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        timings: LeaseTimings = LeaseTimings(),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _wall_now,
    ) -> None:
        self.store = store
        self.identity = identity
        self.timings = timings
        self._clock = clock
        self._wall = wall
        self._seen: LeaseRecord | None = None
        self._seen_at = 0.0
        self._renewed_at: float | None = None
        self._last_refusal = ""

    def _observe(self, record: LeaseRecord) -> None:
        """Remember when the record last changed, by our own clock."""
        if self._seen is None or replace(record, resource_version="") != replace(self._seen, resource_version=""):
            self._seen, self._seen_at = record, self._clock()

    def try_once(self) -> Attempt:
        """One attempt to acquire or renew (client-go's tryAcquireOrRenew)."""
        try:
            attempt = self._try()
        except (LeaseConflictError, TransientError) as e:
            logger.debug("lease attempt failed: %s", e)
            return Attempt.FAILED
        except OptiServeError as e:
            # A refusal (403: the Lease's RBAC) does not go away by itself: say so, once per message.
            if str(e) != self._last_refusal:
                logger.error("lease attempt refused, retrying every %.0f s: %s", self.timings.retry_s, e)
                self._last_refusal = str(e)
            return Attempt.FAILED
        self._last_refusal = ""
        return attempt

    def _try(self) -> Attempt:
        now, wall = self._clock(), self._wall()
        record = self.store.get()
        if record is None:
            mine = LeaseRecord(self.identity, self.timings.duration_s, wall, wall, 0)
            return self._won(replace(mine, resource_version=self.store.create(mine)), now)
        self._observe(record)
        ours = record.holder == self.identity
        if record.holder and not ours and now < self._seen_at + record.duration_s:
            return Attempt.HELD
        mine = LeaseRecord(
            self.identity,
            self.timings.duration_s,
            record.acquired if ours else wall,
            wall,
            record.transitions if ours else record.transitions + 1,
            record.resource_version,
        )
        return self._won(replace(mine, resource_version=self.store.replace(mine)), now)

    def _won(self, record: LeaseRecord, now: float) -> Attempt:
        self._seen, self._seen_at, self._renewed_at = record, now, now
        return Attempt.LEADING

    def acting(self) -> bool:
        """Leading, and renewed within the renew deadline."""
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.timings.renew_deadline_s

    def release(self) -> None:
        """Give the lease up (a clean stop), if we still hold it."""
        if self._renewed_at is None or self._seen is None:
            return
        self._renewed_at = None
        released = replace(self._seen, holder="", duration_s=1.0, renewed=self._wall())
        try:
            self.store.replace(released)
        except (OptiServeError, LeaseConflictError) as e:
            logger.warning("could not release the lease (a standby takes over once it expires): %s", e)

    def wait_to_lead(self, stop: threading.Event) -> bool:
        """Try every `retry_s` until leading (True) or `stop` is set (False)."""
        while not stop.is_set():
            if self.try_once() is Attempt.LEADING:
                return True
            stop.wait(self.timings.retry_s)
        return False

    def keep_leading(self, stop: threading.Event) -> bool:
        """Renew every `retry_s` until `stop` is set (True) or leadership is lost (False): another
        holder took the lease, or no renewal succeeded within the renew deadline."""
        while not stop.wait(self.timings.retry_s):
            attempt = self.try_once()
            if attempt is Attempt.HELD:
                self._renewed_at = None
                logger.error("lost the lease to %s", self._seen.holder if self._seen else "another operator")
                return False
            if attempt is Attempt.FAILED and not self.acting():
                self._renewed_at = None
                logger.error("could not renew the lease within %.0f s: stopping", self.timings.renew_deadline_s)
                return False
        return True
