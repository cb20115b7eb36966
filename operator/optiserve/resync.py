"""One resync loop over every model the operator watches, in place of a kopf timer per object.

A kopf timer is a task per object that keeps the object's latest body for as long as the object
exists: at 1,000 models those bodies were most of the operator's memory (162-166 MB on a real
API server). The loop keeps three strings per model, fed by the watch (`ModelIndex`), and reads
each model fresh when it reconciles it, which the reconcile did anyway.

Every `interval_s` the loop reconciles each model once. A round that takes longer than the
interval (many models, a slow API) is followed by the next at once: the resync of all models
slows down, and new models or changes never wait behind it (they run in kopf's own threads).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelKey:
    namespace: str
    name: str
    uid: str

    def event_target(self, api_version: str, kind: str) -> dict[str, object]:
        """What kopf needs to post an Event about the model (its object reference)."""
        return {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }


class ModelIndex:
    """The models this operator watches, by (namespace, name); written by the watch's thread,
    read by the resync loop."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._keys: dict[tuple[str, str], ModelKey] = {}

    def seen(self, key: ModelKey) -> None:
        with self._guard:
            self._keys[(key.namespace, key.name)] = key

    def gone(self, key: ModelKey) -> None:
        """Forget the model, unless its name already belongs to a newer object."""
        with self._guard:
            if self._keys.get((key.namespace, key.name)) == key:
                del self._keys[(key.namespace, key.name)]

    def keys(self) -> list[ModelKey]:
        with self._guard:
            return list(self._keys.values())

    def __len__(self) -> int:
        with self._guard:
            return len(self._keys)


Reconcile = Callable[[ModelKey], Awaitable[None]]


async def resync_round(index: ModelIndex, reconcile: Reconcile) -> int:
    """Reconcile every indexed model once; a failure is logged and left to the next round.
    Returns how many failed."""
    keys = index.keys()
    results = await asyncio.gather(*(reconcile(key) for key in keys), return_exceptions=True)
    failed = 0
    for key, result in zip(keys, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, BaseException):
            failed += 1
            logger.warning("resync of %s/%s failed, retried next round: %s", key.namespace, key.name, result)
    return failed


async def resync_forever(index: ModelIndex, interval_s: float, reconcile: Reconcile) -> None:
    """A round every `interval_s` (the first one interval after start), until cancelled."""
    loop = asyncio.get_running_loop()
    next_round = loop.time() + interval_s
    while True:
        await asyncio.sleep(max(0.0, next_round - loop.time()))
        started = loop.time()
        await resync_round(index, reconcile)
        next_round = max(started + interval_s, loop.time())
