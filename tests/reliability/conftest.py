"""Fixtures of the fault suite: the digits example optimized once per session (the real Triton,
`triton_install`, is tests/conftest.py's)."""

from __future__ import annotations

import pytest

from optiserve.local.job_cache import JobOutputs
from tests.reliability.digits import DigitsWorkspace, digits_outputs_in, new_digits_workspace


@pytest.fixture(scope="session")
def digits_workspace(tmp_path_factory: pytest.TempPathFactory) -> DigitsWorkspace:
    return new_digits_workspace(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def digits_outputs(digits_workspace: DigitsWorkspace) -> JobOutputs:
    """The real optimization job's outputs (candidate and baseline repositories), kept in the
    workspace's job cache, where `optiserve run --job-cache` finds them."""
    return digits_outputs_in(digits_workspace)
