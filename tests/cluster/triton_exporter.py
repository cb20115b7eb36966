"""The Triton pods' /metrics, played by the test: there are no nodes here, so no Triton runs.

Each scrape answers Triton's counters for one model and one variant, grown since the last scrape
by about `rate_per_s` requests of `latency_ms` each (lognormal noise per scrape, as a real server's
means wobble), with the pod's `namespace` label, as the chart's PodMonitor relabelling gives it.
"""

from __future__ import annotations

import contextlib
import http.server
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class TritonCounters:
    model: str
    namespace: str
    latency_ms: float = 5.0
    rate_per_s: float = 40.0
    seed: int = 0
    success: int = 0
    duration_us: float = 0.0
    _last: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def exposition(self) -> str:
        with self._lock:
            now = time.monotonic()
            served = int(self.rate_per_s * (now - self._last))
            self._last = now
            self.success += served
            self.duration_us += served * self.latency_ms * 1000 * self._random.lognormvariate(0.0, 0.05)
            labels = f'model="{self.model}",version="1",namespace="{self.namespace}"'
            return (
                f"nv_inference_request_success{{{labels}}} {self.success}\n"
                f"nv_inference_request_failure{{{labels}}} 0\n"
                f"nv_inference_request_duration_us{{{labels}}} {self.duration_us:.0f}\n"
            )


@contextlib.contextmanager
def serve_triton_metrics(counters: TritonCounters) -> Iterator[str]:
    """Serve `counters` on 127.0.0.1; yields 'host:port'."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = counters.exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
