"""The operator's one family of errors, from the API layer up.

Two kinds matter to whoever catches them: `TransientError`, worth retrying as is after `delay_s`
(throttling, a server error, a lost connection, a concurrent change), and `PermanentError`, which
the same call will not fix (a refusal, a spec or setup problem; the message names the field or the
object). The Kubernetes client's errors (`optiserve.kube.client`) and the traffic routers'
(`optiserve.providers.traffic`) are subclasses of these, so a router's transient failure reaches
the handler as it is, and the handler (`optiserve.handlers`) translates to kopf in one place.
"""

from __future__ import annotations

DEFAULT_RETRY_S = 5.0


class OptiServeError(Exception):
    """Something the operator could not do."""


class TransientError(OptiServeError):
    """Worth retrying as is after a delay: throttling, a server error, a lost connection."""

    def __init__(self, message: str, delay_s: float = DEFAULT_RETRY_S) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PermanentError(OptiServeError):
    """Retrying the same call will not fix it; the message says what to change."""
