"""How soon a failed reconcile is retried, by what failed."""

from __future__ import annotations

import pytest

from optiserve.handlers import _retryable
from optiserve.kube.client import AdoptionError, ApiError, KubeError, TransientError


@pytest.mark.parametrize(
    ("error", "delay"),
    [
        (TransientError("throttled", delay_s=2.0), 2.0),  # the server's Retry-After
        (ApiError("status write: HTTP 409 conflict", 409), 1.0),  # someone else's write landed first: re-read soon
        (ApiError("create jobs: HTTP 403 forbidden", 403), 30.0),  # a refusal needs a person: do not hammer
        (AdoptionError("owned by another controller"), 60.0),
    ],
)
def test_retry_delay_follows_the_failure(error: KubeError, delay: float) -> None:
    assert _retryable(error).delay == delay
