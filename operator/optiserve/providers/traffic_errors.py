"""The Kubernetes API's errors as the rollout's traffic errors (for the routers that use the API)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from optiserve.errors import OptiServeError, TransientError
from optiserve.kube.client import ApiError
from optiserve.providers.traffic import PermanentTrafficError, TransientTrafficError


@contextmanager
def api_errors(what: str, not_found_hint: str = "") -> Iterator[None]:
    """Transient API errors stay transient (retried); any other is permanent, `not_found_hint` added to a 404."""
    try:
        yield
    except TransientError as e:
        raise TransientTrafficError(f"{what}: {e}", delay_s=e.delay_s) from e
    except OptiServeError as e:
        hint = not_found_hint if isinstance(e, ApiError) and e.status == 404 else ""
        raise PermanentTrafficError(f"{what}: {e}{hint}") from e
