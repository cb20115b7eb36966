"""One bounded poll for every tier: wait until a probe's value satisfies a condition, or fail.

A wait that returns quietly at its deadline lets the test go on with a value that never came, and
the failure then shows up later, as a different assertion, far from the cause. `eventually` fails
at the deadline itself, naming what it waited for and the last value it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def eventually(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float,
    description: str,
    satisfied: Callable[[T], object] = bool,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call `probe` every `interval_s` until its value satisfies `satisfied` (by default: is
    truthy), and return that value. None always means "not yet". The probe runs at least once,
    and once more at the deadline; past it, the test fails with `description` and the last value,
    and `detail()` below them when given (what else explains the wait: a process's log tail).
    """
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = probe()
        if last is not None and satisfied(last):
            return last
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {description}; last seen: {last!r}{extra}")
        time.sleep(interval_s)
