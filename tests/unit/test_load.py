"""The bounded load generator against a scripted in-memory client: bounds, rate, records, stats."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from optiserve.golden import GoldenSample
from optiserve.local.load import (
    UNKNOWN_VARIANT,
    BackgroundLoad,
    LoadConfig,
    LoadError,
    LoadResult,
    LoadStats,
    RequestRecord,
    run_load,
    summarize,
)
from optiserve.local.load_clients import InferClient, InferError, LoadTarget


def samples(count: int) -> list[GoldenSample]:
    return [GoldenSample(inputs={"x": np.full((1, 2), i, dtype=np.float32)}) for i in range(count)]


@dataclass
class ScriptedClient:
    """Answers after `delay_s`; request n fails when `fail_every` divides n + 1; variants alternate."""

    delay_s: float = 0.001
    fail_every: int = 0
    crash_every: int = 0
    variants: tuple[str | None, ...] = ("baseline", "candidate")
    sent: list[int] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    closed: bool = False
    gate: asyncio.Event | None = None

    async def infer(self, sample_index: int) -> str | None:
        number = len(self.sent)
        self.sent.append(sample_index)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        variant = self.variants[number % len(self.variants)]
        if self.crash_every and (number + 1) % self.crash_every == 0:
            raise ConnectionResetError("connection reset by peer")
        if self.fail_every and (number + 1) % self.fail_every == 0:
            raise InferError(f"model failed request {number}", variant)
        return variant

    async def close(self) -> None:
        self.closed = True


@dataclass
class ScriptedTarget:
    client: ScriptedClient
    opened_with: dict[str, float] = field(default_factory=dict)
    refuse: bool = False

    def open(self, samples: Sequence[GoldenSample], *, timeout_s: float, connections: int) -> InferClient:
        if self.refuse:
            raise ValueError("inputs.x: dtype complex64 cannot be sent")
        self.opened_with = {"timeout_s": timeout_s, "connections": connections, "samples": len(samples)}
        return self.client


def run(target: ScriptedTarget, count: int, config: LoadConfig) -> LoadResult:
    return asyncio.run(run_load(target, samples(count), config))


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"max_duration_s": 0}, "max_duration_s"),
        ({"max_duration_s": float("inf")}, "max_duration_s"),
        ({"max_requests": 0}, "max_requests"),
        ({"rate_per_s": -1.0}, "rate_per_s"),
        ({"rate_per_s": float("nan")}, "rate_per_s"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, float], field_name: str) -> None:
    with pytest.raises(ValueError, match=f"^{field_name}:"):
        LoadConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://127.0.0.1:8000", "model": "m"}, "url: expected host:port without a scheme"),
        ({"url": "", "model": "m"}, "url:"),
        ({"url": "127.0.0.1:8000", "model": ""}, "model:"),
        ({"url": "127.0.0.1:8000", "model": "m", "protocol": "tcp"}, "protocol:"),
    ],
)
def test_bad_target_names_the_field(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoadTarget(**kwargs)  # type: ignore[arg-type]


def test_target_needs_samples() -> None:
    with pytest.raises(ValueError, match="samples"):
        LoadTarget("127.0.0.1:1", "m").open([], timeout_s=1, connections=1)


# -- the loop --------------------------------------------------------------------------------


def test_request_bound_and_round_robin() -> None:
    target = ScriptedTarget(ScriptedClient())
    result = run(target, 3, LoadConfig(concurrency=4, max_requests=10, max_duration_s=30))
    assert result.stopped_by == "requests"
    assert len(result.records) == 10
    assert sorted(target.client.sent) == sorted(i % 3 for i in range(10))
    assert target.client.closed
    assert target.opened_with == {"timeout_s": 30.0, "connections": 4, "samples": 3}


def test_concurrency_is_reached_and_never_exceeded() -> None:
    client = ScriptedClient(delay_s=0.01)
    run(ScriptedTarget(client), 5, LoadConfig(concurrency=3, max_requests=30))
    assert client.max_in_flight == 3


def test_duration_bound_starts_nothing_after_the_deadline() -> None:
    result = run(ScriptedTarget(ScriptedClient(delay_s=0.005)), 4, LoadConfig(concurrency=2, max_duration_s=0.3))
    assert result.stopped_by == "duration"
    assert result.records
    assert all(r.t_s < 0.3 for r in result.records)
    assert [r.t_s for r in result.records] == sorted(r.t_s for r in result.records)


def test_rate_limit_never_sends_early() -> None:
    rate = 40.0
    result = run(ScriptedTarget(ScriptedClient()), 2, LoadConfig(concurrency=4, rate_per_s=rate, max_requests=12))
    sent = sorted(r.t_s for r in result.records)
    assert len(sent) == 12
    # Request i is due at i / rate; none leaves before it.
    for number, t in enumerate(sent):
        assert t >= number / rate - 1e-6


def test_rate_limit_stops_at_the_duration() -> None:
    result = run(ScriptedTarget(ScriptedClient()), 2, LoadConfig(concurrency=2, rate_per_s=10.0, max_duration_s=0.35))
    assert result.stopped_by == "duration"
    assert len(result.records) == 4  # due at 0, 0.1, 0.2, 0.3


def test_failures_are_records_with_their_error_and_variant() -> None:
    client = ScriptedClient(fail_every=4, crash_every=5)
    result = run(ScriptedTarget(client), 3, LoadConfig(concurrency=1, max_requests=20))
    failed = [r for r in result.records if not r.ok]
    model_errors = [r for r in failed if r.error and r.error.startswith("model failed")]
    crashes = [r for r in failed if r.error == "ConnectionResetError: connection reset by peer"]
    assert len(model_errors) == 4  # requests 4, 8, 12, 16 (20 is a crash: checked first)
    assert len(crashes) == 4
    assert all(r.variant in ("baseline", "candidate") for r in model_errors)
    assert all(r.variant is None for r in crashes)  # a transport error has no answer to name a variant
    assert all(r.ok == (r.error is None) for r in result.records)


def test_stop_lets_requests_in_flight_finish() -> None:
    async def scenario() -> tuple[LoadResult, ScriptedClient]:
        client = ScriptedClient(gate=asyncio.Event())
        stop = asyncio.Event()
        task = asyncio.create_task(run_load(ScriptedTarget(client), samples(2), LoadConfig(concurrency=3), stop=stop))
        while client.in_flight < 3:
            await asyncio.sleep(0.001)
        stop.set()
        assert client.gate is not None
        client.gate.set()
        return await task, client

    result, client = asyncio.run(scenario())
    assert result.stopped_by == "stop"
    assert len(result.records) == 3 == len(client.sent)
    assert all(r.ok for r in result.records)


def test_summarize_counts_and_percentiles() -> None:
    records = [RequestRecord(t_s=i, latency_ms=float(i + 1), ok=True, variant="baseline") for i in range(100)]
    records.append(RequestRecord(t_s=100, latency_ms=1000.0, ok=False, error="boom", variant="baseline"))
    summary = summarize(records, duration_s=50.0)
    assert (summary.requests, summary.ok, summary.failed) == (101, 100, 1)
    assert summary.throughput_per_s == 2.0
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p99_ms is not None and summary.p99_ms < 101  # the failure's latency is not counted
    empty = summarize([], 1.0)
    assert (empty.requests, empty.p50_ms, empty.throughput_per_s) == (0, None, 0.0)


def test_by_variant_groups_unnamed_answers() -> None:
    records = [
        RequestRecord(t_s=0, latency_ms=1, ok=True, variant="baseline"),
        RequestRecord(t_s=1, latency_ms=2, ok=True, variant=None),
        RequestRecord(t_s=2, latency_ms=3, ok=False, error="x", variant="candidate"),
    ]
    by_variant = LoadResult(records, duration_s=1.0, started_unix=0.0, stopped_by="stop").by_variant()
    assert list(by_variant) == ["baseline", "candidate", UNKNOWN_VARIANT]
    assert by_variant["candidate"].failed == 1


# -- the background runner -------------------------------------------------------------------


def test_background_load_stats_then_stop() -> None:
    client = ScriptedClient(delay_s=0.002, fail_every=10)
    load = BackgroundLoad(ScriptedTarget(client), samples(4), LoadConfig(concurrency=2, max_duration_s=60))
    assert not load.running()
    with load:
        assert load.running()
        stats = load.stats()
        while stats.sent - stats.in_flight < 40:
            time.sleep(0.005)
            stats = load.stats()
        assert isinstance(stats, LoadStats)
        assert 0 <= stats.in_flight <= 2
        result = load.stop()
    assert not load.running()
    assert result.stopped_by == "stop"
    final = load.stats()
    assert final.in_flight == 0
    assert final.sent == len(result.records)
    for name, summary in result.by_variant().items():
        assert (final.variants[name].ok, final.variants[name].failed) == (summary.ok, summary.failed)
        assert final.variants[name].sent == summary.requests
        assert final.variants[name].recent_p50_ms is not None


def test_background_load_ends_by_its_own_bound() -> None:
    load = BackgroundLoad(ScriptedTarget(ScriptedClient()), samples(2), LoadConfig(concurrency=2, max_requests=7)).start()
    result = load.wait(timeout_s=30)
    assert result.stopped_by == "requests"
    assert len(result.records) == 7
    assert load.stop() is result  # stopping a finished run just returns its result


def test_background_load_reports_a_failed_start() -> None:
    load = BackgroundLoad(ScriptedTarget(ScriptedClient(), refuse=True), samples(1), LoadConfig())
    with pytest.raises(LoadError, match="complex64"):
        load.start()
    assert not load.running()


def test_background_load_is_started_once() -> None:
    load = BackgroundLoad(ScriptedTarget(ScriptedClient()), samples(1), LoadConfig(max_requests=1)).start()
    with pytest.raises(RuntimeError, match="already started"):
        load.start()
    load.wait(timeout_s=30)
    with pytest.raises(RuntimeError, match="never started"):
        BackgroundLoad(ScriptedTarget(ScriptedClient()), samples(1), LoadConfig()).stop()


def test_stats_are_safe_to_read_from_other_threads() -> None:
    load = BackgroundLoad(ScriptedTarget(ScriptedClient(delay_s=0.0005)), samples(3), LoadConfig(concurrency=4, max_requests=400))
    snapshots: list[LoadStats] = []

    def read() -> None:
        while load.running():
            snapshots.append(load.stats())
            time.sleep(0.001)

    with load:
        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        result = load.wait(timeout_s=30)
        for reader in readers:
            reader.join()
    assert len(result.records) == 400
    # Counters only grow, and never count an answer twice.
    for snapshot in snapshots:
        answered = sum(v.sent for v in snapshot.variants.values())
        assert answered + snapshot.in_flight == snapshot.sent <= 400
