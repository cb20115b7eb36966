"""The nginx router against a real nginx and two real HTTP upstreams on loopback.

The upstreams answer with their own name in the body, so every response proves which variant
served it independently of the `X-OptiServe-Variant` header nginx adds. Splits are checked
within a binomial tolerance over a bounded number of requests; a reload under continuous load
must lose no request. Nothing here asserts on timing.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import http.server
import math
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from optiserve.local.nginx import VARIANT_HEADER, NginxConfigError, NginxServer, Split, accepting_workers, render_config
from optiserve.local.nginx_router import NginxRouter
from optiserve.providers.traffic import PermanentTrafficError, TransientTrafficError, verify

REQUESTS = 400
SIGMAS = 4.0  # a correct split fails this bound with probability < 1e-4


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Answers POSTs with the server's name; `status` lets a test make it fail."""

    protocol_version = "HTTP/1.1"
    server: _NamedServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.release()
        self.server.slow.wait(timeout=30)  # set unless a test holds requests in flight
        body = self.server.name.encode()
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header(VARIANT_HEADER, "spoofed")  # nginx must replace it
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _NamedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Upstream)
        self.name = name
        self.status = 200
        self.slow = threading.Event()
        self.slow.set()
        self.received = threading.Semaphore(0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def _upstream(name: str) -> Iterator[_NamedServer]:
    server = _NamedServer(name)
    thread = threading.Thread(target=server.serve_forever, name=f"upstream-{name}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Upstreams:
    baseline: _NamedServer
    candidate: _NamedServer


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    with _upstream("baseline") as baseline, _upstream("candidate") as candidate:
        yield Upstreams(baseline, candidate)


@pytest.fixture
def nginx(upstreams: Upstreams) -> Iterator[NginxServer]:
    with NginxServer(upstreams.baseline.address, upstreams.candidate.address) as server:
        yield server


@dataclass
class Tally:
    by_variant: collections.Counter[str] = field(default_factory=collections.Counter)
    answers: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    mislabelled: int = 0


def _send(connection: http.client.HTTPConnection, tally: Tally) -> None:
    connection.request("POST", "/v2/models/m/infer", body=b'{"inputs": []}', headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    served_by = response.read().decode()
    header = response.getheader(VARIANT_HEADER)
    tally.statuses[response.status] += 1
    tally.by_variant[served_by] += 1
    tally.answers[(served_by, response.status)] += 1
    if header != served_by:
        tally.mislabelled += 1


def _send_many(server: NginxServer, count: int) -> Tally:
    tally = Tally()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(count):
            _send(connection, tally)
    finally:
        connection.close()
    return tally


def _within_binomial(observed: int, total: int, weight: int) -> bool:
    p = weight / 100
    return abs(observed - total * p) <= SIGMAS * math.sqrt(total * p * (1 - p))


@pytest.mark.parametrize("weight", [0, 10, 50, 100])
def test_split_follows_the_weight(nginx: NginxServer, weight: int) -> None:
    router = NginxRouter(nginx)
    assert verify(router, weight) == weight
    tally = _send_many(nginx, REQUESTS)
    assert tally.statuses == {200: REQUESTS}
    assert tally.mislabelled == 0, "X-OptiServe-Variant must name the upstream that answered"
    assert _within_binomial(tally.by_variant["candidate"], REQUESTS, weight), tally.by_variant
    if weight in (0, 100):  # a variant at 0 is marked down: not one request
        assert tally.by_variant["candidate"] == REQUESTS * weight // 100


def test_reload_under_continuous_load_loses_no_request(nginx: NginxServer) -> None:
    """Keep-alive clients keep sending while the weights change 12 times; every request succeeds."""
    router = NginxRouter(nginx)
    stop = threading.Event()
    tallies = [Tally() for _ in range(4)]

    def client(tally: Tally) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        while not stop.is_set():
            try:
                _send(connection, tally)
            except (OSError, http.client.HTTPException) as e:
                tally.failures.append(repr(e))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        connection.close()

    threads = [threading.Thread(target=client, args=(tally,)) for tally in tallies]
    for thread in threads:
        thread.start()
    try:
        for weight in [10, 50, 90, 0] * 3:
            verify(router, weight)
            sent = sum(t.statuses.total() for t in tallies)
            while sum(t.statuses.total() for t in tallies) < sent + 20 and all(thread.is_alive() for thread in threads):
                threading.Event().wait(0.01)  # let some requests through at this weight
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    total = collections.Counter[int]()
    for tally in tallies:
        total.update(tally.statuses)
    assert [f for t in tallies for f in t.failures] == []
    assert set(total) == {200} and total[200] >= 12 * 20
    assert sum(t.mislabelled for t in tallies) == 0
    assert router.current_weight() == 0
    after = _send_many(nginx, 50)
    assert after.by_variant == {"baseline": 50}, "after set_weight(0) returns no request may reach the candidate"


def test_requests_in_flight_during_a_reload_finish(nginx: NginxServer, upstreams: Upstreams) -> None:
    router = NginxRouter(nginx)
    verify(router, 100)
    upstreams.candidate.slow.clear()  # the candidate holds its answers until released
    tallies = [Tally() for _ in range(3)]
    threads = [
        threading.Thread(target=lambda t=t: _send(http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30), t))
        for t in tallies
    ]
    for thread in threads:
        thread.start()
    for _ in threads:  # all three have reached the candidate
        assert upstreams.candidate.received.acquire(timeout=30)
    verify(router, 0)  # the old worker still holds the three requests
    upstreams.candidate.slow.set()
    for thread in threads:
        thread.join(timeout=30)
    assert [t.answers for t in tallies] == [{("candidate", 200): 1}] * 3
    assert _send_many(nginx, 20).by_variant == {"baseline": 20}


def test_model_errors_pass_through_and_unreachable_variant_is_retried(nginx: NginxServer, upstreams: Upstreams) -> None:
    verify(NginxRouter(nginx), 50)
    upstreams.candidate.status = 500
    errors = _send_many(nginx, 100)
    assert set(errors.answers) == {("baseline", 200), ("candidate", 500)}, "a model error is never retried elsewhere"
    assert _within_binomial(errors.statuses[500], 100, 50)
    assert errors.mislabelled == 0

    upstreams.candidate.shutdown()
    upstreams.candidate.server_close()  # connection refused from now on
    retried = _send_many(nginx, 100)
    assert retried.answers == {("baseline", 200): 100}, "a variant that cannot be reached is retried on the other"
    assert retried.mislabelled == 0, "the header names the variant that answered after the retry"


def test_current_weight_reads_what_nginx_serves(nginx: NginxServer) -> None:
    router = NginxRouter(nginx)
    verify(router, 10)
    assert nginx._process is not None
    before = accepting_workers(nginx._process.pid)
    # Someone else reloads nginx with another split: the router must see it, not its last value.
    nginx.config_path.write_text(
        render_config(nginx.config_path.parent, nginx.port, nginx.baseline, nginx.candidate, Split(70, 99))
    )
    subprocess.run(nginx.command("-s", "reload"), check=True, capture_output=True)
    for _ in range(400):  # bounded: until the workers from before the reload stop accepting
        now = accepting_workers(nginx._process.pid)
        if now and not now & before:
            break
        threading.Event().wait(0.05)
    assert router.current_weight() == 70


def test_a_dead_nginx_reads_as_unknown_and_refuses_changes(upstreams: Upstreams) -> None:
    with NginxServer(upstreams.baseline.address, upstreams.candidate.address) as server:
        router = NginxRouter(server)
        verify(router, 10)
        assert server._process is not None
        os.killpg(server._process.pid, signal.SIGKILL)
        server._process.wait()
        assert router.current_weight() is None
        with pytest.raises(TransientTrafficError, match=r"nginx did not apply candidate weight 50"):
            router.set_weight(50)
        with pytest.raises(TransientTrafficError):
            verify(router, 50)


def test_stop_leaves_no_process(upstreams: Upstreams) -> None:
    with NginxServer(upstreams.baseline.address, upstreams.candidate.address, candidate_weight=50) as server:
        assert server._process is not None
        master = server._process.pid
        assert len(accepting_workers(master)) == 1
        workdir = server.config_path.parent
    with pytest.raises(ProcessLookupError):
        os.kill(master, 0)
    assert accepting_workers(master) == frozenset()
    assert not workdir.exists()


def test_bad_input_names_the_field(upstreams: Upstreams) -> None:
    with pytest.raises(NginxConfigError, match=r"^baseline: expected IP:port"):
        NginxServer("localhost:8000", upstreams.candidate.address)
    with pytest.raises(NginxConfigError, match=r"^candidate: expected IP:port"):
        NginxServer(upstreams.baseline.address, "127.0.0.1:http")
    with pytest.raises(NginxConfigError, match=r"^candidate: same address as the baseline"):
        NginxServer(upstreams.baseline.address, upstreams.baseline.address).start()
    with NginxServer(upstreams.baseline.address, upstreams.candidate.address) as server:
        router = NginxRouter(server)
        with pytest.raises(PermanentTrafficError, match=r"candidate weight: must be an integer from 0 to 100, got 101"):
            router.set_weight(101)
        assert router.current_weight() == 0
