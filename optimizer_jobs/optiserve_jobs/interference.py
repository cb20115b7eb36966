"""What the kernel says about the CPU this process gets: run-queue waits and the CPUs it may use.

A benchmark on a shared machine (a busy CI runner, a Kubernetes node with noisy neighbours, a
container throttled by its CPU quota) measures the other work as much as the model. Timings alone
cannot tell a slow model from a starved one; the scheduler can: `/proc/<pid>/task/<tid>/schedstat`
holds, per thread, the nanoseconds it ran and the nanoseconds it sat runnable waiting for a CPU.
A round whose threads waited for a sizeable share of its wall time was disturbed, whatever the
timings say. Reading it costs a few file reads per round and needs no privileges.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


def run_queue_wait_ns() -> int | None:
    """Nanoseconds all threads of this process have waited runnable for a CPU (None: not exposed)."""
    total, seen = 0, False
    tasks = Path("/proc/self/task")
    try:
        threads = list(tasks.iterdir())
    except OSError:
        return None
    for thread in threads:
        try:
            fields = (thread / "schedstat").read_text().split()
        except OSError:
            continue  # the thread ended between the listing and the read
        if len(fields) >= 2:
            total += int(fields[1])
            seen = True
    return total if seen else None


@dataclass(frozen=True)
class CpuAllowance:
    """The CPUs a process may use, as opposed to the CPUs the machine has."""

    node_cpus: int
    """Logical CPUs of the machine (or node)."""
    affinity_cpus: int
    """CPUs in this process's affinity mask (a container's cpuset)."""
    quota_cpus: float | None
    """The cgroup CPU quota in CPUs (a container's `resources.limits.cpu`); None when unlimited."""

    @property
    def usable(self) -> int:
        """Whole CPUs the process can keep busy: the cpuset, capped by the quota rounded down (at least 1)."""
        if self.quota_cpus is None:
            return max(1, self.affinity_cpus)
        return max(1, min(self.affinity_cpus, math.floor(self.quota_cpus)))


def _cgroup_v2_quota(root: Path) -> float | None:
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _cgroup_v1_quota(root: Path) -> float | None:
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cpu_allowance(cgroup_root: Path = Path("/sys/fs/cgroup")) -> CpuAllowance:
    """The machine's CPUs, the affinity mask and the cgroup quota (v2 `cpu.max`, else v1 CFS)."""
    node = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = node
    quota = _cgroup_v2_quota(cgroup_root)
    if quota is None:
        quota = _cgroup_v1_quota(cgroup_root)
    return CpuAllowance(node_cpus=node, affinity_cpus=affinity, quota_cpus=quota)


def benchmark_threads(requested: int | None) -> int:
    """The spec's thread count, or the CPUs this container may use when the spec leaves it open."""
    return requested if requested is not None else cpu_allowance().usable
