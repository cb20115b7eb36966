"""A standby operator (waiting for the Lease) answers the kubelet's probes on the health port."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request

from optiserve.elected import run_elected
from optiserve.leader import LeaderElector, LeaseTimings
from optiserve.local.triton import free_port
from tests.support.memory_lease import MemoryLease

FAST = LeaseTimings(duration_s=0.6, renew_deadline_s=0.4, retry_s=0.02)


def test_a_standby_answers_its_health_probe_while_it_waits() -> None:
    lease = MemoryLease()
    holder = LeaderElector(lease, "a", LeaseTimings(duration_s=60, renew_deadline_s=50, retry_s=0.05))
    holder.try_once()
    standby = LeaderElector(lease, "b", FAST)
    port = free_port()
    answers: list[dict[str, object]] = []

    def probe_then_release() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not answers:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                answers.append(json.load(answer))
            time.sleep(0.05)
        holder.release()

    prober = threading.Thread(target=probe_then_release)
    prober.start()
    assert run_elected(standby, lambda stop: None, health=("127.0.0.1", port)) == 0
    prober.join()
    assert answers == [{"leader": False, "standby": True}]
