"""kopf registrations: thin adapters from kopf's causes to the one `reconcile`.

Handlers are registered on a registry built by `build_registry(settings, kube)`, not on kopf's
global registry at import time. The operator's dependencies (its settings and API client) are
passed in rather than read from globals, and tests can run the operator in-process against an
emulated API without leftovers between operators. kopf logs in with the same client's
credentials (`login`), so kopf and the reconciler always reach the same API server as the same
identity.

Create, update, resume and the resync loop all call the same level-based reconcile. The loop
(`optiserve.resync`, one for all models, not a kopf timer per model: see there) is what notices
the children change (a Job finishing, a Deployment becoming ready). A new model waits one
interval for its first resync, so that seldom overlaps the create handler. When the two do
overlap, both reconciles are idempotent: the second create finds the child and adopts it. They
still take one lock per object (`ObjectLocks`): kopf runs sync handlers in threads, and without
it a resync already under way when the resource is deleted could create a child after the
cleanup removed them all.

Deletion: kopf's finalizer (which a deletion handler needs) holds the resource until the `cleanup`
handler has deleted every child it owns. The garbage collector would remove them too, through
their owner references, but only where one runs and only after the resource is gone; the
explicit delete makes `kubectl delete om x` return with the servers gone. A deletion with
`--cascade=orphan` keeps the children: the collector then removes the owner references, and the
handler deletes nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import kopf
from kubernetes import client as k8s
from prometheus_client import start_http_server

from optiserve.api.crd import PLURAL
from optiserve.api.spec import API_GROUP, API_VERSION, KIND
from optiserve.errors import OptiServeError, TransientError
from optiserve.http_serving import serving_until_done
from optiserve.kube.client import OPTIMIZED_MODELS, AdoptionError, ApiError, KubeClient
from optiserve.observability import TRIGGER_CHANGE, TRIGGER_TIMER, OperatorMetrics
from optiserve.reconciler import Hooks, reconcile
from optiserve.resync import ModelIndex, ModelKey, resync_forever
from optiserve.settings import DEFAULT_RECONCILE_WORKERS, Settings

PREFIX = "optiserve.io"
ADOPTION_RETRY_S = 60.0
API_ERROR_RETRY_S = 30.0
CONFLICT_RETRY_S = 1.0
ORPHAN_FINALIZER = "orphan"
"""Set by the API server on a deletion with propagationPolicy Orphan (`kubectl delete --cascade=orphan`)."""
REMEMBERED_DELETIONS = 10_000
RESYNC_SHARE = 4
"""One in this many reconcile threads runs the resync loop (see `split_workers`)."""
WORKERS_PER_THREAD = 4
"""kopf's per-object workers allowed per reconcile thread (see `configure_kopf`)."""
WATCH_DELETED = "DELETED"
FIELD_MANAGER = "kopf"
"""The field manager of everything the operator writes to its resource (kopf's own, for its
finalizer and annotations): GitOps tools ignore exactly what it owns (docs/gitops.md)."""


def split_workers(workers: int) -> tuple[int, int]:
    """(threads for change handlers, threads for the resync loop) out of `workers` in all.

    With many resources the resync alone can ask for more reconciles than the operator can run
    (N / OPTISERVE_RESYNC_SECONDS per second). In one shared pool, every new resource, spec
    change or deletion would then wait behind a queue of resyncs; in pools of their own, changes
    never do, and the resync of all resources slows down instead."""
    resync = max(1, workers // RESYNC_SHARE)
    return max(1, workers - resync), resync


def configure_kopf(settings: kopf.OperatorSettings, workers: int = DEFAULT_RECONCILE_WORKERS) -> None:
    """kopf settings for this operator; called at startup."""
    # Sync handlers (changes, deletion) run in kopf's executor; each reconcile mostly waits on API calls.
    settings.execution.max_workers = split_workers(workers)[0]
    # At most this many objects are processed at once; the rest wait as raw watch events. Without a
    # limit, an operator (re)starting with 1,000 resources held every body in flight at once: 395 MB
    # against a real API server, 162 MB with it. A worker that saw no event for 0.5 s exits (kopf's
    # default 5 s would hold each of the limited slots idle: 6 objects/s).
    settings.queueing.worker_limit = WORKERS_PER_THREAD * workers
    settings.queueing.idle_timeout = 0.5
    # Progress and the last-handled spec go in our own annotations; status stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
    # The deletion handler needs a finalizer (kopf holds the resource until the handler succeeded).
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Ask the API server to end each watch after 5 minutes, and give up on our side shortly after,
    # so a watch that went silent (a dropped connection, a proxy) is noticed and restarted.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Events: the reconciler's phase changes, posted explicitly; log lines stay logs.
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO


def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the client's configuration (as kopf's own `login_via_client` reads it)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class ObjectLocks:
    """One lock per object (by uid), and the uids whose children were already cleaned up.

    A reconcile that waited for the cleanup finds its object gone and does nothing. Deleted uids
    are remembered in a bounded FIFO (a uid is never reused, and kopf stops the timer soon
    after deletion begins, so only the latest deletions matter)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._deleted: OrderedDict[str, None] = OrderedDict()

    @contextlib.contextmanager
    def hold(self, uid: str) -> Iterator[bool]:
        """Hold `uid`'s lock; yields False when the object was already cleaned up."""
        with self._guard:
            lock = self._locks.setdefault(uid, threading.Lock())
        with lock:
            yield uid not in self._deleted

    def deleted(self, uid: str) -> bool:
        """Mark `uid` cleaned up; call while holding its lock. False when it already was: kopf runs
        the cleanup handler again when the timer took longer to stop than the handler to finish."""
        with self._guard:
            first = uid not in self._deleted
            self._deleted[uid] = None
            while len(self._deleted) > REMEMBERED_DELETIONS:
                self._deleted.popitem(last=False)
            self._locks.pop(uid, None)
        return first


def _retryable(error: OptiServeError) -> kopf.TemporaryError:
    if isinstance(error, TransientError):
        return kopf.TemporaryError(str(error), delay=error.delay_s)
    if isinstance(error, AdoptionError):
        return kopf.TemporaryError(str(error), delay=ADOPTION_RETRY_S)
    if isinstance(error, ApiError) and error.status == 409:
        # A conflict is someone else's write landing first: the next try reads it fresh.
        return kopf.TemporaryError(str(error), delay=CONFLICT_RETRY_S)
    return kopf.TemporaryError(str(error), delay=API_ERROR_RETRY_S)


@dataclass(frozen=True)
class Operator:
    """What every handler needs: the settings, the API client, the metrics and the per-object locks."""

    config: Settings
    kube: KubeClient
    metrics: OperatorMetrics
    locks: ObjectLocks
    hooks: Hooks | None = None
    """Where the canary reads metrics and sets traffic (tests substitute fakes); None: Prometheus and the spec's router."""
    acting: Callable[[], bool] = lambda: True
    """Whether this operator may act now (it holds the leader Lease, see `optiserve.leader`)."""


def _fresh(kube: KubeClient, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
    """The object as the API server has it now; None once it is gone, going, or replaced."""
    found = kube.get(OPTIMIZED_MODELS, namespace, name)
    meta = (found or {}).get("metadata") or {}
    if found is None or meta.get("deletionTimestamp") or str(meta.get("uid") or "") != uid:
        return None
    return found


def _key(namespace: str | None, body: kopf.Body) -> ModelKey:
    name = body.metadata.name
    assert name is not None and namespace is not None, "OptimizedModel is namespaced"
    return ModelKey(namespace, name, str(body.metadata.uid or ""))


def _reconcile(op: Operator, trigger: str, key: ModelKey, known_status: dict[str, Any] | None = None) -> None:
    """Read, reconcile and write status as one step under the object's lock.

    The object is read fresh: kopf's `body` can lag this operator's own last status write (a
    change handler and a resync queued before that write landed would decide from the older
    status and undo a canary step), and the resync loop has no body at all. Its status is written
    here, before the lock is released, not later by kopf from its `patch`. `known_status` (the
    watch's) is what the metrics show when the object cannot be read."""
    namespace, name = key.namespace, key.name
    status = known_status or {}
    with op.locks.hold(key.uid) as live:
        if not live or not op.acting():
            return
        try:
            with op.metrics.reconciling(trigger):
                fresh = _fresh(op.kube, namespace, name, key.uid)
                if fresh is None:
                    return
                status = dict(fresh.get("status") or {})
                outcome = reconcile(name, namespace, fresh, op.config, kube=op.kube, hooks=op.hooks)
                write = {"status": outcome.status}
                op.kube.patch(OPTIMIZED_MODELS, namespace, name, write, subresource="status", field_manager=FIELD_MANAGER)
        except OptiServeError as e:
            op.metrics.track(namespace, name, status)
            raise _retryable(e) from e
    op.metrics.observe_status(namespace, name, status, outcome.status)
    target = kopf.Body(cast(kopf.RawBody, key.event_target(f"{API_GROUP}/{API_VERSION}", KIND)))
    for event in outcome.events:
        kopf.event(target, type=event.type, reason=event.reason, message=event.message)


def _cleanup(op: Operator, namespace: str | None, body: kopf.Body, logger: kopf.Logger) -> None:
    name, uid = body.metadata.name, str(body.metadata.uid or "")
    assert name is not None and namespace is not None, "OptimizedModel is namespaced"
    with op.locks.hold(uid):
        if not op.acting():
            raise kopf.TemporaryError("not the leader: the operator holding the Lease cleans up", delay=API_ERROR_RETRY_S)
        if ORPHAN_FINALIZER in (body.get("metadata", {}).get("finalizers") or []):
            logger.info("deleted with propagation Orphan: its children are kept")
        else:
            try:
                removed = op.kube.remove_children(namespace, name, uid)
            except OptiServeError as e:
                raise _retryable(e) from e
            logger.info("removed %d children: %s", len(removed), ", ".join(removed) or "none left")
        first = op.locks.deleted(uid)
    if first:
        op.metrics.deleted(namespace, name)
    else:
        op.metrics.forget(namespace, name)


def _serve_metrics(config: Settings, metrics: OperatorMetrics) -> contextlib.AbstractContextManager[None]:
    """prometheus-client's HTTP server (its own thread) for `/metrics`, while the context is open."""

    @contextlib.contextmanager
    def serving() -> Iterator[None]:
        if config.metrics_port is None:
            yield
            return
        try:
            server, thread = start_http_server(config.metrics_port, addr=config.bind_address, registry=metrics.registry)
        except OSError as e:
            raise kopf.PermanentError(
                f"OPTISERVE_METRICS_PORT: cannot listen on {config.bind_address}:{config.metrics_port}: {e}"
            ) from e
        with serving_until_done(server, thread):
            yield

    return serving()


@dataclass
class _Running:
    """What the handlers of one registry share while the operator runs."""

    op: Operator
    servers: contextlib.ExitStack
    index: ModelIndex
    resync_pool: concurrent.futures.ThreadPoolExecutor
    resync_task: list[asyncio.Task[None]]


def build_registry(
    config: Settings,
    kube: KubeClient,
    metrics: OperatorMetrics | None = None,
    hooks: Hooks | None = None,
    acting: Callable[[], bool] | None = None,
) -> kopf.OperatorRegistry:
    """The operator's handlers on a registry of their own (see the module docstring)."""
    op = Operator(config, kube, metrics if metrics is not None else OperatorMetrics(), ObjectLocks(), hooks)
    if acting is not None:
        op = dataclasses.replace(op, acting=acting)
    registry = kopf.OperatorRegistry()
    servers = contextlib.ExitStack()
    resync_pool = concurrent.futures.ThreadPoolExecutor(split_workers(config.reconcile_workers)[1], "optiserve-resync")
    servers.callback(resync_pool.shutdown, wait=False, cancel_futures=True)
    running = _Running(op, servers, ModelIndex(), resync_pool, [])
    _register_operator_handlers(registry, running)
    _register_model_handlers(registry, running)
    return registry


def _register_operator_handlers(registry: kopf.OperatorRegistry, running: _Running) -> None:
    """Startup, cleanup, login and the liveness probe."""
    op, config = running.op, running.op.config

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, config.reconcile_workers)
        running.servers.enter_context(_serve_metrics(config, op.metrics))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in running.resync_task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running.servers.close()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(op.kube.configuration)

    @kopf.on.probe(id="reconciles", registry=registry)
    def reconciles(**_: Any) -> int:
        """Shown in the liveness answer: a count that grows while the operator works."""
        return op.metrics.total_reconciles()


def _register_model_handlers(registry: kopf.OperatorRegistry, running: _Running) -> None:
    """The OptimizedModel's handlers: the resync index, reconcile on change, cleanup on delete."""
    op, index = running.op, running.index

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, id="index", registry=registry)
    async def on_event(type: str | None, namespace: str | None, body: kopf.Body, **_: Any) -> None:
        """Keeps the resync loop's index: every watch event (the initial listing included)."""
        key = _key(namespace, body)
        (index.gone if type == WATCH_DELETED else index.seen)(key)
        if not running.resync_task:
            # Started from a resource handler, not at startup: only here does the context carry
            # kopf's event queue, which the reconciles the loop runs post their events to.
            resync = functools.partial(_resync_in, running.resync_pool, op)
            loop = resync_forever(index, op.config.resync_seconds, resync)
            running.resync_task.append(asyncio.create_task(loop, name="optiserve-resync"))

    @kopf.on.create(API_GROUP, API_VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.update(API_GROUP, API_VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.resume(API_GROUP, API_VERSION, PLURAL, id="reconcile", registry=registry)
    def on_change(namespace: str | None, body: kopf.Body, **_: Any) -> None:
        if not body.metadata.deletion_timestamp:  # the cleanup handler owns it now
            _reconcile(op, TRIGGER_CHANGE, _key(namespace, body), dict(body.get("status") or {}))

    @kopf.on.delete(API_GROUP, API_VERSION, PLURAL, id="cleanup", registry=registry)
    def on_delete(namespace: str | None, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        _cleanup(op, namespace, body, logger)


async def _resync_in(pool: concurrent.futures.Executor, op: Operator, key: ModelKey) -> None:
    """One model's resync in `pool`, with the caller's context (kopf's event queue)."""
    run: Callable[[], None] = functools.partial(contextvars.copy_context().run, _reconcile, op, TRIGGER_TIMER, key)
    await asyncio.get_running_loop().run_in_executor(pool, run)
