"""What the rollout needs from a traffic splitter: set the candidate's share, and read it back.

A router owns one split between the two variants of one model: the *baseline* (what serves now)
and the *candidate* (the new artifact on trial). The weight is the candidate's percent of the
traffic, 0..100; the baseline gets the rest.

`current_weight()` must read what the data path actually uses (the weights nginx serves, the
HTTPRoute stored by the API server, the Deployments' replica counts), never a value the router
remembers: the rollout calls `verify`, which sets and reads back, so a change that did not take
effect is caught before the canary is judged on traffic it never got.

Some splitters cannot produce every weight (a replica ratio with three replicas has 0, 33, 67 and
100 percent only). `achievable_weight` says which weight a request ends up as, so `verify` can
compare against what the router can do rather than fail on rounding.

Errors: `TransientTrafficError` is worth retrying as is (API throttled, nginx still reloading, a
concurrent change); `PermanentTrafficError` will not fix itself (a spec or setup problem) and its
message names the field to change. They are the operator's own `TransientError` and
`PermanentError` (`optiserve.errors`), so no caller translates them.
"""

from __future__ import annotations

from typing import Protocol

from optiserve.errors import OptiServeError, PermanentError, TransientError

TrafficError = OptiServeError
"""The split could not be set or read: a `TransientTrafficError` or a `PermanentTrafficError`."""


class TransientTrafficError(TransientError):
    """Retry after `delay_s`: the same call can succeed later."""


class PermanentTrafficError(PermanentError):
    """A spec or setup problem; the message names the field or the missing object."""


class WeightMismatchError(TransientTrafficError):
    """The weight read back after setting it is not the one set."""

    def __init__(self, expected: int, actual: int | None) -> None:
        shown = "nothing (the split could not be read)" if actual is None else f"{actual}"
        super().__init__(f"candidate weight not applied: expected {expected}, read back {shown}")
        self.expected = expected
        self.actual = actual


class TrafficRouter(Protocol):
    def set_weight(self, candidate_weight: int) -> None:
        """Send `candidate_weight` percent of the traffic to the candidate, the rest to the baseline."""
        ...

    def current_weight(self) -> int | None:
        """The candidate's percent as the data path has it now; None when it cannot be read."""
        ...

    def achievable_weight(self, candidate_weight: int) -> int:
        """The weight `set_weight(candidate_weight)` produces (differs only where the splitter rounds)."""
        ...


def check_weight(candidate_weight: object) -> int:
    """The weight as an int in 0..100, or a PermanentTrafficError naming it."""
    if isinstance(candidate_weight, bool) or not isinstance(candidate_weight, int) or not 0 <= candidate_weight <= 100:
        raise PermanentTrafficError(f"candidate weight: must be an integer from 0 to 100, got {candidate_weight!r}")
    return candidate_weight


def verify(router: TrafficRouter, candidate_weight: int) -> int:
    """Set the weight, read it back, and return it; `WeightMismatchError` when it did not take effect."""
    check_weight(candidate_weight)
    router.set_weight(candidate_weight)
    expected = router.achievable_weight(candidate_weight)
    actual = router.current_weight()
    if actual != expected:
        raise WeightMismatchError(expected, actual)
    return actual
