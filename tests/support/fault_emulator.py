"""The emulated Kubernetes API of tests/support/kube_emulator.py, with faults a test can inject and a log
of every call.

On top of `KubeEmulator` (uid, generation, resourceVersion, label selectors), this subclass

- tells callers apart by their bearer token (`identify`): each operator incarnation logs in with
  a token of its own, so the log says who made every call;
- logs every request (`calls`): who, verb, resource, name, subresource, the body as sent, and the
  HTTP status answered;
- answers with scripted errors (`inject`): a status, an optional Retry-After, for the first N
  matching requests, either instead of the request or after committing it (a lost response),
  or serves them late;
- kills an operator incarnation at a kill point (`arm_kill`): once the Nth matching request of
  that incarnation has been served (or committed, with its response lost), every later request
  with its token is refused, as if the process had died there; the test then stops it and starts
  the next one;
- makes the watches of one resource go silent (`silence_watches`): open streams stop delivering
  events but stay connected, as behind a dropped NAT entry, until the client gives up;
- cuts a watch stream mid-way (`cut_watches`): half an event is written, then the connection is
  aborted;
- checks serving invariants at the moment of every write (`violations`), from the stored objects:
  the baseline Deployment is never deleted, and is created or re-pointed to an artifact only while
  a ready candidate serves that artifact; the candidate is deleted only while a ready baseline
  exists and the router sends it no traffic.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import kmock

from tests.support.kube_emulator import KubeEmulator, RunningEmulator, serve_emulator

ARTIFACT_ANNOTATION = "optiserve.io/artifact-sha256"
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")


@dataclass
class Call:
    """One request as the emulator received it, and the status it answered."""

    seq: int
    at: float
    """time.monotonic() when it arrived."""
    who: str
    method: str
    action: str
    plural: str | None
    namespace: str | None
    name: str | None
    subresource: str | None
    params: dict[str, str]
    data: Any
    status: int | None = None

    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    @property
    def created_name(self) -> str | None:
        """The name in a create's body (creates are posted to the collection)."""
        if self.method == "POST" and isinstance(self.data, Mapping):
            return str((self.data.get("metadata") or {}).get("name") or "") or None
        return None

    @property
    def target(self) -> str | None:
        return self.name or self.created_name


Matcher = Callable[[Call], bool]


@dataclass
class Fault:
    """Answer the first `times` matching requests with `status` instead of serving them; with
    `status` None, serve them late by `delay_s` (a slow API server)."""

    matches: Matcher
    status: int | None
    times: int = 1
    retry_after_s: float | None = None
    commit: bool = False
    """Serve the request first (the write happens), then answer with the error: a lost response."""
    delay_s: float = 0.0
    answered: list[Call] = field(default_factory=list)


@dataclass
class KillPoint:
    """Where an operator incarnation dies: right after its `occurrence`-th successful matching call."""

    label: str
    matches: Matcher
    occurrence: int = 1
    lost_response: bool = False
    """The call is committed but its response never reaches the operator."""


def status_error(status: int, message: str, retry_after_s: float | None = None) -> aiohttp.web.Response:
    """A Kubernetes `Status` error answer, with Retry-After when given (as the API server sends on 429)."""
    reasons = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": status,
        "reason": reasons.get(status, "Unknown"),
        "message": message,
    }
    if retry_after_s is not None:
        body["details"] = {"retryAfterSeconds": int(retry_after_s)}
    headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else None
    return aiohttp.web.json_response(body, status=status, headers=headers)


def _ready(deployment: Mapping[str, Any] | None) -> bool:
    if not deployment:
        return False
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    return int(status.get("observedGeneration") or 0) >= generation and int(status.get("readyReplicas") or 0) >= 1


def _artifact(obj: Mapping[str, Any] | None) -> str | None:
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(ARTIFACT_ANNOTATION)
    return str(value) if value else None


@attrs.define(kw_only=True)
class FaultEmulator(KubeEmulator):
    model: str = "minilm"
    """The model whose baseline and candidate Deployments the serving invariants watch."""
    candidate_weight: Callable[[], int] | None = None
    """The router's current candidate weight (the test's fake router), for the retirement check."""
    identities: dict[str, str] = attrs.field(factory=dict)
    calls: list[Call] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    violations: list[str] = attrs.field(factory=list)
    kill: KillPoint | None = None
    kill_target: str | None = None
    killed_at: Call | None = None
    dead: set[str] = attrs.field(factory=set)
    killed: threading.Event = attrs.field(factory=threading.Event)
    silenced: dict[str, float] = attrs.field(factory=dict)
    """plural -> when its open watches went silent (streams opened before then stay silent)."""
    cut: dict[str, int] = attrs.field(factory=dict)
    """plural -> how many of its open watch streams to cut at their next event."""
    _kill_count: int = attrs.field(default=0, init=False)

    # --- what tests call (from their own thread) ------------------------------------------------

    def identify(self, token: str, who: str) -> None:
        self.identities[f"Bearer {token}"] = who

    def inject(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def arm_kill(self, point: KillPoint, who: str) -> None:
        self.kill, self.kill_target, self._kill_count = point, who, 0

    def silence_watches(self, plural: str) -> float:
        started = time.monotonic()
        self.silenced[plural] = started
        return started

    def cut_watches(self, plural: str, streams: int = 1) -> None:
        self.cut[plural] = self.cut.get(plural, 0) + streams

    def calls_by(self, who: str) -> list[Call]:
        return [call for call in list(self.calls) if call.who == who]

    # --- serving --------------------------------------------------------------------------------

    def _who(self, request: kmock.Request) -> str:
        header = request.headers.get("Authorization") or request.headers.get("authorization")
        return self.identities.get(header or "", "anonymous" if not header else "unknown-token")

    def _log(self, request: kmock.Request) -> Call:
        call = Call(
            seq=len(self.calls),
            at=time.monotonic(),
            who=self._who(request),
            method=str(request.method.value if hasattr(request.method, "value") else request.method).upper(),
            action=str(request.action.value if request.action is not None else ""),
            plural=request.resource.plural if request.resource is not None else None,
            namespace=request.namespace,
            name=request.name,
            subresource=request.subresource,
            params=dict(request.params),
            data=copy.deepcopy(request.data),
        )
        self.calls.append(call)
        return call

    def _fault_for(self, call: Call) -> Fault | None:
        for fault in self.faults:
            if len(fault.answered) < fault.times and fault.matches(call):
                fault.answered.append(call)
                return fault
        return None

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        call = self._log(request)
        if call.who in self.dead:
            call.status = 503
            return status_error(503, "connection refused: this operator incarnation was killed")
        fault = self._fault_for(call)
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        refusal = fault.status if fault is not None else None  # None: served (late, or no fault)
        if fault is not None and refusal is not None and not fault.commit:
            call.status = refusal
            return status_error(refusal, f"injected fault {refusal}", fault.retry_after_s)
        if call.is_write() and call.plural == "deployments":
            self._check_serving(call)
        try:
            response = await super()._handle(request)
        except kmock.KubernetesError as e:
            call.status = e.status
            raise
        call.status = response.status
        if fault is not None and refusal is not None:
            call.status = refusal
            return status_error(refusal, f"injected fault {refusal} after the write", fault.retry_after_s)
        return self._maybe_kill(call, response)

    def _maybe_kill(self, call: Call, response: aiohttp.web.StreamResponse) -> aiohttp.web.StreamResponse:
        point = self.kill
        if point is None or call.who != self.kill_target or not 200 <= response.status < 300 or not point.matches(call):
            return response
        self._kill_count += 1
        if self._kill_count < point.occurrence:
            return response
        self.kill, self.killed_at = None, call
        self.dead.add(call.who)
        self.killed.set()
        if point.lost_response:
            call.status = 503
            return status_error(503, "the operator died before this answer arrived")
        return response

    # --- invariants -----------------------------------------------------------------------------

    def _stored_deployment(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (DEPLOYMENTS, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return dict(self._objects[key].raw)

    def _check_serving(self, call: Call) -> None:
        baseline_name, candidate_name = f"{self.model}-baseline", f"{self.model}-candidate"
        target = call.target
        if target not in (baseline_name, candidate_name):
            return
        baseline = self._stored_deployment(call.namespace, baseline_name)
        candidate = self._stored_deployment(call.namespace, candidate_name)
        if target == baseline_name:
            if call.method == "DELETE":
                self.violations.append(f"#{call.seq} {call.who}: the baseline Deployment deleted")
                return
            new = _artifact(call.data)
            if new is None or (baseline is not None and new == _artifact(baseline)):
                return  # not a change of what the baseline serves (a create of an existing one is refused)
            if not (_ready(candidate) and _artifact(candidate) == new):
                self.violations.append(
                    f"#{call.seq} {call.who}: the baseline pointed at {new[:12]} while the candidate serving it "
                    f"was {'ready' if _ready(candidate) else 'not ready'} with {(_artifact(candidate) or 'nothing')[:12]}"
                )
        elif call.method == "DELETE":
            if not _ready(baseline):
                self.violations.append(f"#{call.seq} {call.who}: the candidate deleted while no ready baseline served")
            weight = self.candidate_weight() if self.candidate_weight is not None else 0
            if weight:
                self.violations.append(f"#{call.seq} {call.who}: the candidate deleted while it had {weight}% of the traffic")

    # --- watch faults ---------------------------------------------------------------------------

    async def _serve_watch(self, request: kmock.Request) -> Any:
        plural = request.resource.plural if request.resource is not None else None
        opened = time.monotonic()
        async for event in super()._serve_watch(request):
            silenced_at = self.silenced.get(plural or "")
            if isinstance(event, dict) and silenced_at is not None and silenced_at >= opened:
                await asyncio.Event().wait()  # silent: connected, nothing more, until the client gives up
            if isinstance(event, dict) and plural is not None and self.cut.get(plural, 0) > 0:
                self.cut[plural] -= 1
                yield b'{"type": "MODIFIED", "object": {"metadata": {"na'  # half an event, then the line drops
                transport = request._raw_request.transport if request._raw_request is not None else None
                if transport is not None:
                    transport.abort()
                return
            yield event


RunningFaultEmulator = RunningEmulator[FaultEmulator]


def serve_fault_emulator(resources: Mapping[str, kmock.ResourceInfo], **options: Any) -> ContextManager[RunningFaultEmulator]:
    """`serve_emulator` with a `FaultEmulator` built from `options`."""
    return serve_emulator(resources, functools.partial(FaultEmulator, **options))
