"""What the canary judge needs from a metrics backend, per variant and window.

`None` means the backend failed to answer (the judge's Error); an empty list or zero counts mean
it answered with no data (no traffic: Inconclusive). Implementations raise nothing for a
missing series: "no series" is data the judge must see, never an exception that hides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Counts:
    hits: float
    """Failures (error rate) or agreeing samples (comparator)."""
    total: float
    series_found: bool = True


class MetricsProvider(Protocol):
    def latency_points(self, variant: str, window_s: float) -> list[tuple[float, float]] | None:
        """Mean request latency (ms) per scrape interval over the window, oldest first, as
        ``(unix_seconds, value)``: both variants at the same timestamps, so that the judge can pair
        them scrape by scrape."""
        ...

    def request_counts(self, variant: str, window_s: float) -> Counts | None:
        """Failed and total inference requests over the window."""
        ...

    def comparator_counts(self, metric: str, window_s: float) -> Counts | None:
        """Agreeing and compared samples of the comparator's `metric` (agreement, accuracy) over the window."""
        ...

    def custom_values(self, query: str, variant: str, window_s: float) -> list[float] | None:
        """The values of a custom PromQL query over the window; `{{variant}}` is replaced."""
        ...
