"""The local nginx splitter: how long a weight change takes, what the proxy adds per request, and
how many requests weight changes lose under load. Prints JSON and a markdown table.

Two stdlib HTTP upstreams on loopback answer every POST at once, so what is timed is nginx and
the connection, not a model. Latency is per request, one client, a new connection per request on
both sides (nginx closes client connections after each answer, see optiserve.local.nginx); medians
of repeats, with the ratio proxied / direct.

    python bench/traffic.py --requests 500 --repeats 5 --changes 30
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import http.server
import json
import platform
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optiserve.local.nginx import NginxServer
from optiserve.local.nginx_router import NginxRouter
from optiserve.providers.traffic import verify

BODY = b'{"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0, 0, 0, 0, 0, 0, 0, 0]}]}'


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _post(port: int, connection: http.client.HTTPConnection | None = None) -> int:
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v2/models/m/infer", body=BODY, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if connection is None:
        conn.close()
    return response.status


def _latency_ms(port: int, requests: int) -> float:
    """Median milliseconds per request, a new connection each."""
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        _post(port)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _weight_changes_ms(router: NginxRouter, changes: int) -> list[float]:
    times = []
    for index in range(changes):
        start = time.perf_counter()
        verify(router, (10, 50, 90, 0)[index % 4])
        times.append((time.perf_counter() - start) * 1000)
    return times


def _lost_during_changes(server: NginxServer, router: NginxRouter, changes: int, clients: int) -> dict[str, int]:
    stop = threading.Event()
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not stop.is_set():
            try:
                outcome = "ok" if _post(server.port, connection) == 200 else "failed"
            except (OSError, http.client.HTTPException):
                outcome = "failed"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            with lock:
                counts[outcome] += 1
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    _weight_changes_ms(router, changes)
    stop.set()
    for thread in threads:
        thread.join()
    return {"requests": counts["ok"] + counts["failed"], "failed": counts["failed"]}


def _cpu() -> dict[str, Any]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    flags = set(fields.get("flags\t\t", "").split())
    return {
        "model": fields.get("model name\t", platform.processor()).strip(),
        "flags": sorted(flags & {"avx", "avx2", "avx512f", "sse4_2"}),
    }


def run(requests: int, repeats: int, changes: int, clients: int) -> dict[str, Any]:
    with (
        _upstream() as baseline,
        _upstream() as candidate,
        NginxServer(f"127.0.0.1:{baseline}", f"127.0.0.1:{candidate}") as nginx,
    ):
        router = NginxRouter(nginx)
        verify(router, 50)
        for port in (baseline, nginx.port):  # warm-up
            _latency_ms(port, 50)
        direct = [_latency_ms(baseline, requests) for _ in range(repeats)]
        proxied = [_latency_ms(nginx.port, requests) for _ in range(repeats)]
        change = _weight_changes_ms(router, changes)
        loss = _lost_during_changes(nginx, router, changes, clients)
    return {
        "cpu": _cpu(),
        "settings": {"requests": requests, "repeats": repeats, "changes": changes, "clients": clients},
        "direct_ms": statistics.median(direct),
        "proxied_ms": statistics.median(proxied),
        "ratio": statistics.median(proxied) / statistics.median(direct),
        "weight_change_ms": {
            "median": statistics.median(change),
            "max": max(change),
        },
        "under_load": loss,
    }


def markdown(result: dict[str, Any]) -> str:
    change = result["weight_change_ms"]
    load = result["under_load"]
    rows = [
        ("request, direct to the upstream (median ms)", f"{result['direct_ms']:.3f}"),
        ("request, through nginx (median ms)", f"{result['proxied_ms']:.3f}"),
        ("through nginx / direct", f"{result['ratio']:.2f}"),
        ("weight change, set + read back (median / max ms)", f"{change['median']:.0f} / {change['max']:.0f}"),
        (
            f"requests failed during {result['settings']['changes']} changes, {result['settings']['clients']} keep-alive clients",
            f"{load['failed']} of {load['requests']}",
        ),
    ]
    lines = ["| measure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per latency repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--changes", type=int, default=30, help="weight changes, timed and under load")
    parser.add_argument("--clients", type=int, default=4, help="keep-alive clients sending during the changes")
    args = parser.parse_args()
    result = run(args.requests, args.repeats, args.changes, args.clients)
    print(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
