"""The comparator process: the probe loop plus `/metrics` and `/healthz` on one port.

The HTTP side is the standard library's WSGI server in a thread, with prometheus-client's WSGI
app for `/metrics`; the probe loop runs on asyncio in the main thread and stops on SIGTERM or
SIGINT. `/healthz` answers 200 while the loop runs, whatever the two Tritons do: their failures
are data (`optiserve_comparator_errors_total`), not the comparator's ill health.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socketserver
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from optiserve.api.spec import Task
from optiserve.comparator.compare import DEFAULT_THRESHOLD, AgreementRule
from optiserve.comparator.metrics import ComparatorMetrics
from optiserve.comparator.probe import ProbeLoop, ProbeSettings
from optiserve.comparator.triton import TritonHttpModel, split_url
from optiserve.golden import GoldenSample

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class ComparatorSettings:
    baseline_url: str
    candidate_url: str
    model: str
    golden: Path
    output: str | None = None
    task: Task | None = None
    """None: classification when the golden set has labels, embedding otherwise."""
    threshold: float = DEFAULT_THRESHOLD
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    host: str = "0.0.0.0"  # noqa: S104 - a pod's metrics port must be reachable by Prometheus
    port: int = 8080

    def __post_init__(self) -> None:
        for name in ("baseline_url", "candidate_url"):
            try:
                split_url(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
        if not self.model:
            raise ValueError("model: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be within 0..65535, got {self.port}")


class Health:
    """What `/healthz` reports: whether the probe loop is running, and how many rounds it made."""

    def __init__(self) -> None:
        self.running = False
        self.loop: ProbeLoop | None = None

    def document(self) -> dict[str, object]:
        return {"running": self.running, "rounds": self.loop.rounds if self.loop else 0}


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http: " + format, *args)


def http_app(metrics: ComparatorMetrics, health: Health) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status = "200 OK" if health.running else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(health.document()).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class HttpEndpoint:
    def __init__(self, host: str, port: int, metrics: ComparatorMetrics, health: Health) -> None:
        self.server = make_server(
            host, port, http_app(metrics, health), server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.thread = threading.Thread(target=self.server.serve_forever, name="comparator-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> HttpEndpoint:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _rule(settings: ComparatorSettings, labelled: bool) -> AgreementRule:
    task = settings.task or (Task.CLASSIFICATION if labelled else Task.EMBEDDING)
    return AgreementRule(task, settings.threshold)


async def _probe_until_stopped(
    settings: ComparatorSettings, golden: Sequence[GoldenSample], rule: AgreementRule, metrics: ComparatorMetrics, health: Health
) -> None:
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop.set)
    timeout_s = settings.probe.timeout_s
    baseline = TritonHttpModel(settings.baseline_url, settings.model, settings.output, timeout_s)
    candidate = TritonHttpModel(settings.candidate_url, settings.model, settings.output, timeout_s)
    try:
        health.loop = ProbeLoop(golden, baseline, candidate, rule, metrics, settings.probe)
        health.running = True
        await health.loop.run(stop)
    finally:
        health.running = False
        await baseline.close()
        await candidate.close()


def run_comparator(settings: ComparatorSettings, golden: Sequence[GoldenSample]) -> None:
    """Serve /metrics and /healthz, and probe with the golden set until SIGTERM or SIGINT."""
    labelled = any(sample.label is not None for sample in golden)
    metrics = ComparatorMetrics(settings.model, labelled=labelled)
    metrics.golden_samples.labels(settings.model).set(len(golden))
    rule = _rule(settings, labelled)
    health = Health()
    endpoint = HttpEndpoint(settings.host, settings.port, metrics, health).start()
    logger.info(
        "comparing %s: baseline %s, candidate %s, %d golden samples, %s agreement; metrics on %s:%d",
        settings.model,
        settings.baseline_url,
        settings.candidate_url,
        len(golden),
        "top-1" if rule.top1 else f"cosine >= {rule.threshold:g}",
        settings.host,
        endpoint.port,
    )
    try:
        asyncio.run(_probe_until_stopped(settings, golden, rule, metrics, health))
    finally:
        endpoint.stop()
