"""The operator process under leader election: a standby until it holds the Lease, then the operator.

While it waits, the process answers `/healthz` on the health port (the kubelet's probes pass: a
standby is healthy) and nothing else. Once it leads, kopf starts; a renewer thread keeps the
Lease and stops kopf when the Lease is lost, and the process then exits 1 to come back as a
standby. A SIGTERM (a rolling update, a drain) stops kopf, and the Lease is released, so the
standby takes over within one retry instead of one lease duration.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from optiserve.http_serving import serving_until_done
from optiserve.leader import LeaderElector

logger = logging.getLogger(__name__)

EXIT_LOST = 1
"""The exit status after the Lease was lost: the container restarts, as a standby."""


class _StandbyHealth(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path.split("?")[0] == "/healthz"
        body = json.dumps({"leader": False, "standby": True} if ok else {"error": "not found"}).encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("standby health: " + format, *args)


@contextlib.contextmanager
def standby_health(address: tuple[str, int] | None) -> Iterator[None]:
    if address is None:
        yield
        return
    server = http.server.ThreadingHTTPServer(address, _StandbyHealth)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    with serving_until_done(server, thread):
        yield


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (main thread only; elsewhere signals stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_elected(elector: LeaderElector, operate: Callable[[threading.Event], None], health: tuple[str, int] | None) -> int:
    """Wait to lead, then `operate(stop_flag)` until it returns; the exit status."""
    stop = threading.Event()
    with _stop_on_signals(stop), standby_health(health):
        logger.info("standby: waiting for Lease %s as %s", elector.store, elector.identity)
        if not elector.wait_to_lead(stop):
            return 0
    logger.info("leading: holds Lease %s as %s", elector.store, elector.identity)
    operator_stop, renewing = threading.Event(), threading.Event()
    lost = threading.Event()

    def renew() -> None:
        if not elector.keep_leading(renewing):
            lost.set()
            operator_stop.set()

    renewer = threading.Thread(target=renew, name="lease-renewer", daemon=True)
    renewer.start()
    try:
        operate(operator_stop)
    finally:
        renewing.set()
        renewer.join(timeout=elector.timings.retry_s + 10)
        if not lost.is_set():
            elector.release()
    return EXIT_LOST if lost.is_set() else 0
