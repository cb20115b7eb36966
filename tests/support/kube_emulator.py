"""An emulated Kubernetes API for tests: kmock's `KubernetesEmulator` plus the object bookkeeping
that controllers rely on.

kmock stores objects as plain dicts and merges patches into them. On top of that, this
subclass does what a real API server does and a controller can observe:

- `metadata.uid`, `metadata.creationTimestamp` and `metadata.namespace` on create, and a name
  from `metadata.generateName` (kopf posts its Events that way);
- `metadata.generation`: 1 on create, +1 when `spec` changes (never for status or metadata);
- `metadata.resourceVersion`: a new, increasing value on every write;
- JSON patches are checked first. A failed `test` op (kopf's optimistic concurrency on
  finalizers) answers 422 like the API server, not 500;
- lists report the current `resourceVersion`, and a watch from it skips kmock's replay of the
  objects the list already returned;
- `labelSelector` on lists and watches (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
  `a notin (x,y)`).

- a pod's log (`GET .../pods/<name>/log`, with `container` and `tailLines`), as plain text: what
  the test, playing the kubelet, wrote with `write_log`. A pod whose container has not started
  answers 400, as the API server relays the kubelet's refusal; an unknown pod 404. (kmock alone
  would answer the pod object itself.)

It still does no schema validation, no admission and no garbage collection (tested elsewhere).
`serve_emulator()` runs it (or a subclass: tests/support/fault_emulator.py adds faults) on
127.0.0.1 in a thread of its own, so a synchronous test and kopf's own thread can both reach it
over HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import pytest

ALL_VERBS = frozenset({"list", "watch", "get", "patch", "create", "update", "delete"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, None removes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<absent>!)\s*(?P<key0>[^\s,=!()]+)"
    r"|(?P<key1>[^\s,=!()]+)\s*(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)"
    r"|(?P<key2>[^\s,=!()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,=!()]*)"
    r"|(?P<key3>[^\s,=!()]+))\s*$"
)


def _requirements(selector: str) -> list[str]:
    """Split at commas that are not inside a set: `a in (x,y),b=c` -> two requirements."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


Requirement = tuple[str, str, frozenset[str]]
"""(operator, key, values): operator is one of !, in, notin, =, !=, exists."""


@functools.lru_cache(maxsize=1024)
def parse_selector(selector: str) -> tuple[Requirement, ...]:
    """A label selector's requirements, parsed once per selector (a list matches it against every object)."""
    parsed: list[Requirement] = []
    for requirement in _requirements(selector):
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise ValueError(f"unparsable label selector requirement: {requirement!r}")
        if match["absent"]:
            parsed.append(("!", match["key0"], frozenset()))
        elif match["setop"]:
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            parsed.append((match["setop"], match["key1"], values))
        elif match["op"]:
            parsed.append(("!=" if match["op"] == "!=" else "=", match["key2"], frozenset({match["value"]})))
        else:
            parsed.append(("exists", match["key3"], frozenset()))
    return tuple(parsed)


def _satisfied(requirement: Requirement, labels: Mapping[str, str]) -> bool:
    operator, key, values = requirement
    if operator == "!":
        return key not in labels
    if operator == "exists":
        return key in labels
    present = key in labels and labels[key] in values
    return not present if operator in ("notin", "!=") else present


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy a Kubernetes label selector; a malformed one is a ValueError."""
    return all(_satisfied(requirement, labels) for requirement in parse_selector(selector))


def _labels_of(obj: object) -> Mapping[str, str]:
    if not isinstance(obj, Mapping):
        return {}
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, Mapping) else {}


def _revision_of(obj: object) -> int:
    value = str((obj.get("metadata") or {}).get("resourceVersion", "")) if isinstance(obj, Mapping) else ""
    return int(value) if value.isdigit() else 0


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    request_history: int | None = None
    """Keep only this many past requests (None: all). kmock matches every request against its
    whole history, so each request costs time in proportion to all before it; a long run (the
    scale benchmark) bounds it. Tests that count or slice past requests keep the default."""
    _revision: int = attrs.field(default=0, init=False)
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _logs: dict[tuple[str, str, str], str] = attrs.field(factory=dict, init=False)
    _logs_guard: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def write_log(self, namespace: str, pod: str, text: str, container: str = "optimize") -> None:
        """Append to a container's log, as the kubelet would (callable from any thread)."""
        with self._logs_guard:
            key = (namespace, pod, container)
            self._logs[key] = self._logs.get(key, "") + text

    def _pod_log(self, namespace: str, pod: str, container: str) -> str:
        with self._logs_guard:
            return self._logs.get((namespace, pod, container), "")

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if self.request_history is not None and len(self._requests) > self.request_history:
            del self._requests[: len(self._requests) - self.request_history]
        if request.resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            return await super()._handle(request)
        # One write at a time: the stamps are computed from the stored object the write changes.
        async with self._writes:
            if request.action == kmock.action.CREATE:
                self._stamp_create(request)
            else:
                self._stamp_update(request)
            return await super()._handle(request)

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _stamp_create(self, request: kmock.Request) -> None:
        if not isinstance(request.data, dict):
            return
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)}"
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_revision()
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _stamp_update(self, request: kmock.Request) -> None:
        if request.resource is None or request.name is None:
            return
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # the emulator answers 404
        current = copy.deepcopy(self.objects[key].raw)
        data = request.data
        if isinstance(data, list):
            try:
                patched = jsonpatch.apply_patch(current, data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"the JSON patch cannot be applied: {e}") from e
            stamps = self._stamps(current, patched)
            data.extend({"op": "add", "path": f"/metadata/{field}", "value": value} for field, value in stamps.items())
        elif isinstance(data, dict):
            stamps = self._stamps(current, merge_patch(current, data))
            if not isinstance(data.get("metadata"), dict):
                data["metadata"] = {}
            data["metadata"].update(stamps)

    def _stamps(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
        stamps: dict[str, Any] = {"resourceVersion": self._next_revision()}
        if before.get("spec") != after.get("spec"):
            stamps["generation"] = int((before.get("metadata") or {}).get("generation") or 0) + 1
        return stamps

    # kmock finds the object of a GET, PATCH or DELETE by scanning every stored object; with
    # thousands (the scale benchmark: models, Jobs, Events) that dominates. These look the
    # object up by its key, as kmock's own write path (`_handle`) stores it.

    def _stored(self, request: kmock.Request, namespace: str | None, name: str | None) -> kmock.Object | None:
        if request.resource is None or name is None:
            return None
        key = (request.resource, namespace, name)
        return self._objects[key] if key in self._objects else None  # noqa: SIM401 - ObjectsArray has no get()

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        if request.subresource == "log" and request.resource is not None and request.resource.plural == "pods":
            return self._serve_log(request, obj.raw)
        return obj.raw

    def _serve_log(self, request: kmock.Request, pod: Mapping[str, Any]) -> kmock.Payload:
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.params.get("container") or (containers[0] if len(containers) == 1 else None)
        name = (pod.get("metadata") or {}).get("name")
        if container is None or container not in containers:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"container {container!r} is not in pod {name}")
        statuses = {s.get("name"): s for s in (pod.get("status") or {}).get("containerStatuses") or []}
        state = (statuses.get(container) or {}).get("state") or {}
        if not (state.get("running") or state.get("terminated")):
            message = f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=message)
        text = self._pod_log(str(request.namespace), str(name), str(container))
        tail = request.params.get("tailLines")
        if tail and tail.isdigit():
            lines = text.splitlines(keepends=True)
            text = "".join(lines[len(lines) - int(tail) :]) if int(tail) else ""
        return text.encode()  # bytes go out as they are (kmock would quote a str as JSON)

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        meta = (request.data or {}).get("metadata", {}) if isinstance(request.data, dict) else {}
        async with self._lock:
            obj = self._stored(request, request.namespace or meta.get("namespace"), request.name or meta.get("name"))
        assert obj is not None, "stored by kmock's _handle before this runs"
        return obj.raw

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        assert obj is not None, "patched by kmock's _handle before this runs"
        return obj.last.raw

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        assert obj is not None, "deleted by kmock's _handle before this runs"
        return obj.last.raw

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        revision = str(self._revision)  # before listing: a write during the list is re-sent by the watch
        if request.resource in self.resources:  # declared: pick its objects by key, not kmock's scans
            async with self._lock:
                items = [
                    obj.raw
                    for (resource, namespace, _), obj in self._objects.items()
                    if resource == request.resource and request.namespace in (None, namespace) and not obj.deleted
                ]
            payload: kmock.Payload = {"items": items}
        else:
            payload = await super()._serve_list(request)
        if isinstance(payload, dict):
            payload["metadata"] = {"resourceVersion": revision}
            selector = request.params.get("labelSelector")
            if selector:
                payload["items"] = [item for item in payload["items"] if selector_matches(selector, _labels_of(item))]
        return payload

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        """kmock replays every stored object as ADDED when a watch starts. A watch from a list's
        resourceVersion must not see those again, or a controller handles every object twice."""
        selector = request.params.get("labelSelector")
        since = request.params.get("resourceVersion", "")
        since_revision = int(since) if since.isdigit() else None
        async for event in super()._serve_watch(request):
            if isinstance(event, dict):  # the stream also yields bytes (a first empty chunk)
                obj = event.get("object")
                if selector and not selector_matches(selector, _labels_of(obj)):
                    continue
                if since_revision is not None and event.get("type") == "ADDED" and _revision_of(obj) <= since_revision:
                    continue
            yield event


def resource_info(kind: str, *, namespaced: bool = True, status: bool = False) -> kmock.ResourceInfo:
    return kmock.ResourceInfo(
        kind=kind, namespaced=namespaced, verbs=set(ALL_VERBS), subresources={"status"} if status else set()
    )


E = TypeVar("E", bound=KubeEmulator)


@dataclass(frozen=True)
class RunningEmulator(Generic[E]):
    emulator: E
    url: str


@contextlib.contextmanager
def serve_emulator(
    resources: Mapping[str, kmock.ResourceInfo], make: Callable[[], E], timeout_s: float = 30.0
) -> Iterator[RunningEmulator[E]]:
    """Serve the emulator `make()` builds (a `KubeEmulator` or a subclass) declaring `resources`, on a
    free 127.0.0.1 port, in its own thread and loop (`make` is called in that loop, where the
    emulator then lives)."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[tuple[E, str, asyncio.Event]] = concurrent.futures.Future()

    async def main() -> None:
        stop = asyncio.Event()
        try:
            async with make() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
                for key, info in resources.items():
                    emulator.resources[key] = info
                started.set_result((emulator, str(server.url).rstrip("/"), stop))
                await stop.wait()
        except BaseException as e:
            if not started.done():
                started.set_exception(e)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="kube-emulator", daemon=True)
    thread.start()
    try:
        emulator, url, stop = started.result(timeout=timeout_s)
        try:
            yield RunningEmulator(emulator, url)
        finally:
            loop.call_soon_threadsafe(stop.set)
    finally:
        thread.join(timeout=timeout_s)
        if not thread.is_alive():
            loop.close()


def emulator_fixtures(resources: Mapping[str, kmock.ResourceInfo]) -> tuple[Any, Any]:
    """The `emulator` and `kube` fixtures of a test module: an emulator declaring `resources`,
    and the test's own client of it (the test plays the user and the cluster's controllers).

    Use as ``emulator, kube = emulator_fixtures(DISCOVERY)`` at module level.
    """
    from optiserve.kube.client import KubeClient

    @pytest.fixture
    def emulator() -> Iterator[RunningEmulator[KubeEmulator]]:
        with serve_emulator(resources, KubeEmulator) as running:
            yield running

    @pytest.fixture
    def kube(emulator: RunningEmulator[KubeEmulator]) -> Iterator[KubeClient]:
        client = KubeClient.for_host(emulator.url)
        yield client
        client.close()

    return emulator, kube
