"""An in-memory `TrafficRouter` for tests of the rollout, with the faults a real splitter has."""

from __future__ import annotations

from dataclasses import dataclass, field

from optiserve.providers.traffic import TrafficError, check_weight


@dataclass
class FakeRouter:
    """An in-memory router for tests of the rollout (unit, component and reliability).

    `errors` are raised by the next `set_weight` calls, one each, in order. With `stuck`, a set is
    recorded in `history` but not applied (a splitter whose change does not take effect); with
    `readable` False, `current_weight` answers None. `rounding` maps requested weights to the ones
    the fake produces, like a replica ratio does (`{10: 33}` for three replicas).
    """

    weight: int = 0
    history: list[int] = field(default_factory=list)
    errors: list[TrafficError] = field(default_factory=list)
    stuck: bool = False
    readable: bool = True
    rounding: dict[int, int] = field(default_factory=dict)

    def set_weight(self, candidate_weight: int) -> None:
        check_weight(candidate_weight)
        if self.errors:
            raise self.errors.pop(0)
        self.history.append(candidate_weight)
        if not self.stuck:
            self.weight = self.achievable_weight(candidate_weight)

    def current_weight(self) -> int | None:
        return self.weight if self.readable else None

    def achievable_weight(self, candidate_weight: int) -> int:
        return self.rounding.get(candidate_weight, candidate_weight)
