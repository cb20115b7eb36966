"""Client traffic through the cluster's Gateway, and the split the Gateway really made.

`GatewayLoad` is what users do during a canary: a few client threads sending real inference requests
to the Gateway's listener (Traefik, on the node's address), each request with the test namespace's
hostname. It counts every answer and keeps each failure with its reason, so a scenario can assert
that nothing failed while the operator changed weights or rolled back.

`SplitMeter` reads, about once a second, the weight the operator reports in
`status.canary.weight` and Traefik's per-backend request counters. The counter increments between
two readings that saw the same weight are attributed to that weight; `Split.check` then compares
the candidate's share at each weight with the weight, within binomial error.

Both are bounded in time and count: they stop when asked, at their deadline, or at `max_requests`.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

COUNTER = "traefik_service_requests_total"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def infer_body(input_name: str, shape: list[int]) -> bytes:
    """A KServe v2 JSON request of zeros: the answer's content does not matter here, only that it comes."""
    count = math.prod(shape)
    return json.dumps({"inputs": [{"name": input_name, "shape": shape, "datatype": "FP32", "data": [0.0] * count}]}).encode()


GATEWAY_REACTION_S = 10.0
"""How long Traefik may take to apply a changed HTTPRoute: its provider's throttle (2 s) and the watch,
with room for a busy machine (a bound the scenarios wait out, not a measured figure)."""


@dataclass
class LoadResult:
    sent: int = 0
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)
    """One line per failed request: when, and the status or error."""
    failed_at: list[float] = field(default_factory=list)
    """When each failed, as `time.time()`."""


@dataclass(frozen=True)
class GatewayRequest:
    """The one request the load repeats: where it goes, with which Host header, path and body."""

    address: tuple[str, int]
    hostname: str
    path: str
    body: bytes


class GatewayLoad:
    """`threads` clients, each sending one request at a time, paced to `rate_per_thread` requests a second."""

    def __init__(
        self,
        request: GatewayRequest,
        *,
        threads: int = 2,
        rate_per_thread: float = 10.0,
        max_seconds: float = 1800.0,
        max_requests: int = 200_000,
    ) -> None:
        self.request = request
        self.threads, self.interval_s = threads, 1.0 / rate_per_thread
        self.deadline = time.monotonic() + max_seconds
        self.max_requests = max_requests
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]

    def __enter__(self) -> GatewayLoad:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        return self.result

    def _more(self) -> bool:
        with self._lock:
            if self._stop.is_set() or time.monotonic() > self.deadline or self.result.sent >= self.max_requests:
                return False
            self.result.sent += 1
            return True

    def _work(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while self._more():
            started = time.monotonic()
            if connection is None:
                connection = http.client.HTTPConnection(*self.request.address, timeout=10)
            error = self._send(connection)
            with self._lock:
                if error is None:
                    self.result.succeeded += 1
                else:
                    self.result.failures.append(f"{time.strftime('%H:%M:%S')} {error}")
                    self.result.failed_at.append(time.time())
            if error is not None:
                connection.close()
                connection = None
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        if connection is not None:
            connection.close()

    def _send(self, connection: http.client.HTTPConnection) -> str | None:
        headers = {"Host": self.request.hostname, "Content-Type": "application/json"}
        try:
            connection.request("POST", self.request.path, body=self.request.body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status != 200:
            return f"HTTP {response.status}: {payload[:200]!r}"
        return None


def backend_counts(metrics_text: str, namespace: str, services: dict[str, str]) -> dict[str, float]:
    """Requests Traefik forwarded to each of `services` (variant -> Service name) in `namespace`, summed over codes.

    Traefik names a Gateway backend `<namespace>-<service>-<port name>-<port>` (with a provider suffix); the
    weighted round robin above them has a name of its own, which no variant's pattern matches.
    """
    patterns = {
        variant: re.compile(rf"^{re.escape(namespace)}-{re.escape(name)}-(?:[a-z0-9-]+-)?\d+(@|$)")
        for variant, name in services.items()
    }
    counts = dict.fromkeys(services, 0.0)
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != COUNTER:
            continue
        service = dict(_LABEL.findall(match["labels"])).get("service", "")
        for variant, pattern in patterns.items():
            if pattern.match(service):
                counts[variant] += float(match["value"])
    return counts


@dataclass(frozen=True)
class WeightShare:
    weight: int
    baseline: int
    candidate: int

    @property
    def total(self) -> int:
        return self.baseline + self.candidate

    @property
    def share(self) -> float:
        return self.candidate / self.total if self.total else float("nan")

    def within(self, sigmas: float = 4.0) -> bool:
        """The candidate's share at this weight is the weight, within `sigmas` binomial standard errors (at least 1 request)."""
        p = self.weight / 100
        allowed = max(sigmas * math.sqrt(self.total * p * (1 - p)), 1.0)
        return abs(self.candidate - p * self.total) <= allowed


@dataclass
class Split:
    shares: dict[int, WeightShare]

    def table(self) -> str:
        rows = [
            f"| {s.weight} | {s.baseline} | {s.candidate} | {s.share:.3f} |"
            for s in sorted(self.shares.values(), key=lambda s: s.weight)
        ]
        return "\n".join(["| weight in status | to baseline | to candidate | candidate share |", "|---|---|---|---|", *rows])


class SplitMeter:
    """Attributes the Gateway's per-backend counter increments to the weight status reported around them."""

    def __init__(
        self,
        read_weight: Callable[[], int | None],
        read_counts: Callable[[], dict[str, float]],
        *,
        every_s: float = 1.0,
        settle_s: float = 5.0,
    ) -> None:
        self.read_weight, self.read_counts = read_weight, read_counts
        # An interval counts only once its weight has been in status for settle_s: the Gateway applies
        # a new route a moment after the API server stores it.
        self.every_s, self.settle_s = every_s, settle_s
        self._totals: dict[int, dict[str, float]] = defaultdict(lambda: {"baseline": 0.0, "candidate": 0.0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[str] = []
        self.changes: list[str] = []
        """When each weight was first read from status (wall clock, as the load's failures)."""

    def __enter__(self) -> SplitMeter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _reading(self) -> tuple[int | None, dict[str, float]] | None:
        try:
            weight_before = self.read_weight()
            counts = self.read_counts()
            weight_after = self.read_weight()
        except Exception as exc:  # a failed reading is skipped, not fatal: the next one resumes
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        weight = weight_before if weight_before == weight_after else None
        if weight is not None and (not self.changes or not self.changes[-1].endswith(f" weight {weight}")):
            self.changes.append(f"{time.strftime('%H:%M:%S')} weight {weight}")
        return weight, counts

    def _run(self) -> None:
        previous = self._reading()
        weight_since = time.monotonic()
        while not self._stop.wait(self.every_s):
            current = self._reading()
            now = time.monotonic()
            if current is None or previous is None or current[0] != previous[0] or current[0] is None:
                weight_since = now
            elif now - weight_since >= self.settle_s + self.every_s:
                # Both readings saw this weight, and it had been set for settle_s before the interval began.
                for variant in ("baseline", "candidate"):
                    self._totals[current[0]][variant] += current[1].get(variant, 0.0) - previous[1].get(variant, 0.0)
            previous = current

    def split(self) -> Split:
        return Split(
            {
                weight: WeightShare(weight, round(counts["baseline"]), round(counts["candidate"]))
                for weight, counts in self._totals.items()
                if counts["baseline"] + counts["candidate"] > 0
            }
        )
