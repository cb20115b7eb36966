"""The e2e suite's split meter: Traefik's counters parsed per variant, increments attributed to settled weights."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from e2e.gateway_traffic import GatewayLoad, GatewayRequest, SplitMeter, WeightShare, backend_counts, infer_body

WRR = "httproute-e2e-a-digits-gw-e2e-a-gateway-ep-web-0-1c0cf64bde37d9d0dd1e-wrr"


def _sample(service: str, code: int, value: int, name: str = "traefik_service_requests_total") -> str:
    return f'{name}{{code="{code}",method="POST",protocol="http",service="{service}@kubernetesgateway"}} {value}'


METRICS = "\n".join(
    [
        "# TYPE traefik_service_requests_total counter",
        _sample("e2e-a-digits-baseline-http-8000", 200, 90),
        _sample("e2e-a-digits-baseline-http-8000", 503, 2),
        _sample("e2e-a-digits-candidate-http-8000", 200, 8),
        _sample(WRR, 200, 100),
        _sample("e2e-ab-digits-baseline-http-8000", 200, 1000),
        _sample("e2e-a-digits-baseline-http-8000", 200, 90, name="traefik_service_request_duration_seconds_count"),
    ]
)
SERVICES = {"baseline": "digits-baseline", "candidate": "digits-candidate"}


def test_counts_are_summed_over_codes_per_variant_and_only_in_the_namespace() -> None:
    assert backend_counts(METRICS, "e2e-a", SERVICES) == {"baseline": 92.0, "candidate": 8.0}


def test_a_namespace_whose_name_extends_another_is_not_counted_for_it() -> None:
    assert backend_counts(METRICS, "e2e-ab", SERVICES) == {"baseline": 1000.0, "candidate": 0.0}


@pytest.mark.parametrize(
    ("weight", "baseline", "candidate", "within"),
    [
        (10, 900, 100, True),
        (10, 870, 130, True),  # 30 over: within 4 standard errors (9.5 each)
        (10, 840, 160, False),  # 60 over: not
        (50, 500, 500, True),
        (50, 400, 600, False),
        (0, 100, 1, True),  # one request in flight while the route changed
        (0, 100, 5, False),
        (100, 0, 100, True),
    ],
)
def test_a_share_is_within_binomial_error_of_its_weight(weight: int, baseline: int, candidate: int, within: bool) -> None:
    assert WeightShare(weight, baseline, candidate).within() is within


class _Feed:
    """Readings the meter polls: (weight in status, counters) advanced by the test."""

    def __init__(self) -> None:
        self.weight: int | None = 10
        self.counts = {"baseline": 0.0, "candidate": 0.0}
        self.lock = threading.Lock()

    def add(self, baseline: int, candidate: int) -> None:
        with self.lock:
            self.counts = {"baseline": self.counts["baseline"] + baseline, "candidate": self.counts["candidate"] + candidate}


def test_the_meter_attributes_only_settled_intervals_to_their_weight() -> None:
    feed = _Feed()
    meter = SplitMeter(lambda: feed.weight, lambda: dict(feed.counts), every_s=0.02, settle_s=0.1)
    with meter:
        for _ in range(30):
            feed.add(9, 1)
            threading.Event().wait(0.02)
        feed.weight = 50
        feed.add(0, 1000)  # a burst right after the change: inside the settling time, never counted
        for _ in range(30):
            feed.add(5, 5)
            threading.Event().wait(0.02)
    split = meter.split()
    assert set(split.shares) == {10, 50}
    assert split.shares[10].within() and split.shares[50].within(), split.table()
    assert split.shares[50].candidate < 1000


@pytest.fixture
def triton_like() -> Iterator[tuple[str, int, list[str]]]:
    """An HTTP server answering 200, except every fifth request 503; it records the Host headers."""
    hosts: list[str] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            json.loads(self.rfile.read(length))
            with lock:
                hosts.append(self.headers["Host"])
                code = 503 if len(hosts) % 5 == 0 else 200
            body = b"{}"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1], hosts
    finally:
        server.shutdown()
        server.server_close()


def test_the_load_counts_every_answer_and_keeps_each_failure(triton_like: tuple[str, int, list[str]]) -> None:
    host, port, hosts = triton_like
    body = infer_body("image", [1, 1, 8, 8])
    load = GatewayLoad(
        GatewayRequest((host, port), "ns.e2e.test", "/v2/models/m/infer", body), threads=2, rate_per_thread=200, max_requests=40
    )
    with load:
        for _ in range(200):
            if load.result.succeeded + len(load.result.failures) >= 40:
                break
            threading.Event().wait(0.05)
    result = load.result
    assert result.sent == 40
    assert result.succeeded == 32
    assert len(result.failures) == 8 and all("HTTP 503" in line for line in result.failures)
    assert set(hosts) == {"ns.e2e.test"}
