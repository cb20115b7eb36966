"""A bounded load generator over the golden set: fixed concurrency, optional rate, hard bounds.

``concurrency`` workers send the golden samples round-robin (request ``i`` sends sample
``i mod n``) until the duration or the request count is reached, or until told to stop. With a
rate, request ``i`` is not sent before ``start + i / rate``. Every answered request leaves a
:class:`RequestRecord`. At the bound no new request starts and those in flight get their answer
(each is bounded by ``request_timeout_s``), so a run lasts at most ``max_duration_s +
request_timeout_s``, and stopping never turns an in-flight request into a failure.

:func:`run_load` is the loop (async); :class:`BackgroundLoad` runs it in a thread of its own for a
caller that is not async (the local pipeline): ``start()``, ``stats()`` while it runs, ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import numpy as np

from optiserve.golden import GoldenSample
from optiserve.local.load_clients import ClientOpener, InferClient, InferError

UNKNOWN_VARIANT = "unknown"
"""Stats key of answers that named no variant (no header, and none configured on the target)."""


@dataclass(frozen=True)
class LoadConfig:
    """Bounds of one load run; bad values raise ``ValueError`` naming the field."""

    concurrency: int = 8
    max_duration_s: float = 60.0
    max_requests: int | None = None
    rate_per_s: float | None = None
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be at least 1, got {self.concurrency}")
        if not (math.isfinite(self.max_duration_s) and self.max_duration_s > 0):
            raise ValueError(f"max_duration_s: must be a positive number of seconds, got {self.max_duration_s}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests: must be at least 1 (or None), got {self.max_requests}")
        if self.rate_per_s is not None and not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"rate_per_s: must be a positive number (or None), got {self.rate_per_s}")
        if not (math.isfinite(self.request_timeout_s) and self.request_timeout_s > 0):
            raise ValueError(f"request_timeout_s: must be a positive number of seconds, got {self.request_timeout_s}")


@dataclass(frozen=True)
class RequestRecord:
    """One answered request. ``t_s``: when it was sent, in seconds since the run started."""

    t_s: float
    latency_ms: float
    ok: bool
    error: str | None = None
    variant: str | None = None


@dataclass(frozen=True)
class VariantSummary:
    requests: int
    ok: int
    failed: int
    throughput_per_s: float
    """Successful requests per second of the whole run."""
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def summarize(records: Sequence[RequestRecord], duration_s: float) -> VariantSummary:
    """Counts, throughput and latency percentiles (of successful requests) of ``records``."""
    latencies = np.array([r.latency_ms for r in records if r.ok], dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99])) if latencies.size else (None, None, None)
    ok = int(latencies.size)
    return VariantSummary(
        requests=len(records),
        ok=ok,
        failed=len(records) - ok,
        throughput_per_s=ok / duration_s if duration_s > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
    )


@dataclass(frozen=True)
class LoadResult:
    """Everything one run did. ``started_unix`` places ``t_s`` on the wall clock (Prometheus time)."""

    records: list[RequestRecord]
    duration_s: float
    started_unix: float
    stopped_by: str
    """``duration``, ``requests`` or ``stop``."""

    def summary(self) -> VariantSummary:
        return summarize(self.records, self.duration_s)

    def by_variant(self) -> dict[str, VariantSummary]:
        groups: dict[str, list[RequestRecord]] = {}
        for record in self.records:
            groups.setdefault(record.variant or UNKNOWN_VARIANT, []).append(record)
        return {variant: summarize(records, self.duration_s) for variant, records in sorted(groups.items())}


class _Schedule:
    """Hands out request numbers until a bound is reached; the due time of each under a rate."""

    def __init__(self, config: LoadConfig, start: float) -> None:
        self._config = config
        self._start = start
        self.deadline = start + config.max_duration_s
        self._next = 0
        self.stopped_by = ""

    def claim(self, stop: asyncio.Event) -> int | None:
        if stop.is_set():
            self.stopped_by = self.stopped_by or "stop"
            return None
        if self._config.max_requests is not None and self._next >= self._config.max_requests:
            self.stopped_by = self.stopped_by or "requests"
            return None
        if time.monotonic() >= self.deadline or self.due(self._next) >= self.deadline:
            self.stopped_by = self.stopped_by or "duration"
            return None
        number, self._next = self._next, self._next + 1
        return number

    def due(self, number: int) -> float:
        rate = self._config.rate_per_s
        return self._start if rate is None else self._start + number / rate


async def _sleep_unless_stopped(stop: asyncio.Event, delay_s: float) -> bool:
    """Sleep ``delay_s``; False when ``stop`` was set meanwhile."""
    if delay_s <= 0:
        return not stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
    except TimeoutError:
        return True
    return False


RecordObserver = Callable[[RequestRecord], None]


def _no_call() -> None:
    return None


def _no_record(_: RequestRecord) -> None:
    return None


@dataclass(frozen=True)
class LoadObserver:
    """Who watches a load as it runs (the live view of `BackgroundLoad`)."""

    on_start: Callable[[], None] = _no_call
    """Called once the client is connected, right before the first request."""
    on_send: Callable[[], None] = _no_call
    on_record: RecordObserver = _no_record


async def _send(client: InferClient, index: int, sent: float, start: float) -> RequestRecord:
    variant: str | None = None
    error: str | None = None
    try:
        variant = await client.infer(index)
    except InferError as exc:
        variant, error = exc.variant, str(exc)
    except Exception as exc:  # any transport error is this request's failure, never the run's
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    done = time.monotonic()
    return RequestRecord(t_s=sent - start, latency_ms=(done - sent) * 1000.0, ok=error is None, error=error, variant=variant)


async def run_load(
    target: ClientOpener,
    samples: Sequence[GoldenSample],
    config: LoadConfig,
    *,
    stop: asyncio.Event | None = None,
    observer: LoadObserver | None = None,
) -> LoadResult:
    """Run one bounded load; ``stop`` ends it early (in-flight requests still get their answer)."""
    stop = stop or asyncio.Event()
    watch = observer or LoadObserver()
    client = target.open(samples, timeout_s=config.request_timeout_s, connections=config.concurrency)
    records: list[RequestRecord] = []
    watch.on_start()
    start = time.monotonic()
    started_unix = time.time()
    schedule = _Schedule(config, start)

    async def worker() -> None:
        while (number := schedule.claim(stop)) is not None:
            if not await _sleep_unless_stopped(stop, schedule.due(number) - time.monotonic()):
                return
            sent = time.monotonic()
            if sent >= schedule.deadline:  # a rate-limited wait can end a little late
                schedule.stopped_by = schedule.stopped_by or "duration"
                return
            watch.on_send()
            record = await _send(client, number % len(samples), sent, start)
            records.append(record)
            watch.on_record(record)

    try:
        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    finally:
        await client.close()
    return LoadResult(
        records=sorted(records, key=lambda r: r.t_s),
        duration_s=time.monotonic() - start,
        started_unix=started_unix,
        stopped_by=schedule.stopped_by or "stop",
    )


# -- live statistics and the background runner ------------------------------------------------


@dataclass(frozen=True)
class VariantStats:
    """Answers from one variant so far. The variant is only known from the answer."""

    ok: int
    failed: int
    recent_p50_ms: float | None
    """Median latency of the most recent successful answers (a bounded window)."""

    @property
    def sent(self) -> int:
        return self.ok + self.failed


@dataclass(frozen=True)
class LoadStats:
    elapsed_s: float
    sent: int
    in_flight: int
    variants: dict[str, VariantStats]


@dataclass
class _VariantCounts:
    ok: int = 0
    failed: int = 0
    recent_ms: deque[float] = field(default_factory=deque)


class LiveStats:
    """Counters updated by the load loop's thread and read from any other."""

    def __init__(self, recent: int = 200) -> None:
        if recent < 1:
            raise ValueError(f"recent: must be at least 1, got {recent}")
        self._recent = recent
        self._lock = threading.Lock()
        self._sent = 0
        self._answered = 0
        self._variants: dict[str, _VariantCounts] = {}
        self._start = time.monotonic()

    def restart_clock(self) -> None:
        with self._lock:
            self._start = time.monotonic()

    def on_send(self) -> None:
        with self._lock:
            self._sent += 1

    def on_record(self, record: RequestRecord) -> None:
        with self._lock:
            self._answered += 1
            counts = self._variants.setdefault(
                record.variant or UNKNOWN_VARIANT, _VariantCounts(recent_ms=deque(maxlen=self._recent))
            )
            if record.ok:
                counts.ok += 1
                counts.recent_ms.append(record.latency_ms)
            else:
                counts.failed += 1

    def snapshot(self) -> LoadStats:
        with self._lock:
            variants = {
                name: VariantStats(
                    ok=counts.ok,
                    failed=counts.failed,
                    recent_p50_ms=float(np.median(counts.recent_ms)) if counts.recent_ms else None,
                )
                for name, counts in sorted(self._variants.items())
            }
            return LoadStats(
                elapsed_s=time.monotonic() - self._start,
                sent=self._sent,
                in_flight=self._sent - self._answered,
                variants=variants,
            )


class LoadError(RuntimeError):
    """The background load loop itself failed (not a request: those are records)."""


class BackgroundLoad:
    """:func:`run_load` in a thread of its own, with live stats; safe to use from any thread."""

    def __init__(self, target: ClientOpener, samples: Sequence[GoldenSample], config: LoadConfig, *, recent: int = 200) -> None:
        if not samples:
            raise ValueError("samples: at least one golden sample is needed")
        self._target = target
        self._samples = list(samples)
        self._config = config
        self._live = LiveStats(recent)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._result: LoadResult | None = None
        self._error: BaseException | None = None

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("this load was already started")
        self._thread = threading.Thread(target=self._run, name="optiserve-load", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise LoadError(f"the load did not start: {self._error}") from self._error
        return self

    def stats(self) -> LoadStats:
        return self._live.snapshot()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> LoadResult:
        """Stop sending, wait for the answers in flight, and return every record."""
        if self._thread is None:
            raise RuntimeError("this load was never started")
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            # The loop may close between the check and the call; then there is nothing to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        return self.wait()

    def wait(self, timeout_s: float | None = None) -> LoadResult:
        """Wait for the run to end by its own bounds (or a stop) and return its result."""
        if self._thread is None:
            raise RuntimeError("this load was never started")
        limit = timeout_s if timeout_s is not None else self._config.max_duration_s + self._config.request_timeout_s + 10.0
        self._thread.join(limit)
        if self._thread.is_alive():
            raise LoadError(f"the load did not end within {limit:.0f}s")
        if self._error is not None:
            raise LoadError(f"the load failed: {self._error}") from self._error
        assert self._result is not None
        return self._result

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start() / wait() in the caller's thread
            self._error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._result = await run_load(
            self._target,
            self._samples,
            self._config,
            stop=self._stop,
            observer=LoadObserver(on_start=self._on_start, on_send=self._live.on_send, on_record=self._live.on_record),
        )

    def _on_start(self) -> None:
        self._live.restart_clock()
        self._started.set()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        if self.running():
            self.stop()
