"""The processes of a local canary: two tritonservers, nginx between them, the comparator, Prometheus.

`start_canary_servers` starts them in dependency order inside an `ExitStack`, so whatever fails
half-way (a model that does not load, a port taken) stops everything that had started, and the
caller's `with` stops them all at the end, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from optiserve.api.rollout import LatencySource
from optiserve.api.spec import TritonBackend
from optiserve.golden import GOLDEN_FILE
from optiserve.local.comparator import ComparatorArgs, ComparatorProcess
from optiserve.local.load_clients import LoadTarget
from optiserve.local.nginx import NginxServer
from optiserve.local.nginx_router import NginxRouter
from optiserve.local.prometheus import PrometheusServer
from optiserve.local.triton import TritonServer, TritonStartError
from optiserve.providers.prometheus import PrometheusMetrics, TritonSelector
from optiserve.resources.triton_deployment import READY_REQUEST

REPOSITORY = TritonBackend.PYTHON.repository
"""The CPU tritonserver here has the Python backend only (see docs/local-mode.md)."""
SCRAPE_INTERVAL_S = 1.0
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CanaryServers:
    model: str
    baseline: TritonServer
    candidate: TritonServer
    nginx: NginxServer
    prometheus: PrometheusServer
    candidate_dir: Path
    latency_source: LatencySource = LatencySource.TRITON

    @property
    def load_target(self) -> LoadTarget:
        """The load goes through nginx, over HTTP, as clients of a real deployment would."""
        return LoadTarget(url=self.nginx.url.removeprefix("http://"), model=self.model, protocol="http")

    def metrics(self) -> PrometheusMetrics:
        return PrometheusMetrics(
            self.prometheus.url,
            TritonSelector(model=self.model),
            scrape_interval_s=SCRAPE_INTERVAL_S,
            latency_source=self.latency_source,
        )

    def router(self) -> NginxRouter:
        """The split between the two servers, as the rollout engine sets and reads it back."""
        return NginxRouter(self.nginx)


def warm(server: TritonServer, model: str, artifact_dir: Path) -> None:
    """A real inference must succeed: a server can say ready while the model is still cold."""
    body = (artifact_dir / READY_REQUEST).read_bytes()
    url = f"http://{server.http_url}/v2/models/{model}/infer"
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
        answer = json.loads(response.read())
    if not answer.get("outputs"):
        raise RuntimeError(f"{model}: the warm-up inference returned no outputs")


def verify_artifact(artifact_dir: Path, variant: str) -> None:
    """Refuse to serve a directory whose files do not match its manifest.json (sha256 and size).

    The job cache checks its outputs when it reuses them; this check runs right before a
    tritonserver is started on them, so a file truncated, edited or removed in between is never
    loaded. Raises `CorruptRepositoryError` naming the variant and the file.
    """
    from optiserve import artifact

    try:
        artifact.verify_artifact(artifact_dir)
    except artifact.CorruptRepositoryError as e:
        raise artifact.CorruptRepositoryError(f"refusing to serve the {variant} ({artifact_dir}): {e}") from e


def _triton(stack: contextlib.ExitStack, artifact_dir: Path, model: str, log_dir: Path, name: str) -> TritonServer:
    try:
        server = stack.enter_context(TritonServer(artifact_dir / REPOSITORY, log_path=log_dir / f"triton-{name}.log"))
        server.wait_model_ready(model)
    except TritonStartError as e:
        raise TritonStartError(f"the {name} tritonserver: {e}") from e  # the run's reason names the variant
    warm(server, model, artifact_dir)
    return server


@dataclass(frozen=True)
class ComparatorSettings:
    task: str | None = None
    threshold: float | None = None
    interval: str = "1s"
    sample_size: int = 8


@dataclass(frozen=True)
class ServingOptions:
    comparator: ComparatorSettings | None = None
    """With settings, the comparator probes both servers with the golden set and Prometheus scrapes it too."""
    latency_source: LatencySource = LatencySource.TRITON


@contextlib.contextmanager
def start_canary_servers(
    model: str,
    baseline_dir: Path,
    candidate_dir: Path,
    log_dir: Path,
    progress: Progress,
    options: ServingOptions | None = None,
) -> Iterator[CanaryServers]:
    """Start everything; yields once both models are ready and warm and Prometheus has scraped them.

    Both artifact directories are verified against their manifests first: nothing starts on a
    corrupt one.
    """
    comparator = options.comparator if options is not None else None
    latency_source = options.latency_source if options is not None else LatencySource.TRITON
    verify_artifact(baseline_dir, "baseline")
    verify_artifact(candidate_dir, "candidate")
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        progress("starting the baseline tritonserver")
        baseline = _triton(stack, baseline_dir, model, log_dir, "baseline")
        progress("starting the candidate tritonserver")
        candidate = _triton(stack, candidate_dir, model, log_dir, "candidate")
        nginx = stack.enter_context(NginxServer(baseline.http_url, candidate.http_url, candidate_weight=0))
        targets = {
            "baseline": f"127.0.0.1:{baseline.metrics_port}",
            "candidate": f"127.0.0.1:{candidate.metrics_port}",
        }
        if comparator is not None:
            progress("starting the comparator")
            args = ComparatorArgs(
                baseline_url=f"http://{baseline.http_url}",
                candidate_url=f"http://{candidate.http_url}",
                model=model,
                golden=candidate_dir / GOLDEN_FILE,
                task=comparator.task,
                threshold=comparator.threshold,
                interval=comparator.interval,
                sample_size=comparator.sample_size,
            )
            targets["comparator"] = stack.enter_context(ComparatorProcess(args)).address
        progress("starting Prometheus")
        prometheus = stack.enter_context(PrometheusServer(targets, scrape_interval_s=SCRAPE_INTERVAL_S))
        prometheus.wait_scraped()
        yield CanaryServers(model, baseline, candidate, nginx, prometheus, candidate_dir, latency_source)
