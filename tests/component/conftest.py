"""Fixtures for component tests that run a real (CPU-only) Triton Inference Server."""

from __future__ import annotations

import pytest

from optiserve.local.triton import TritonInstall, TritonNotInstalledError, find_triton_install


@pytest.fixture(scope="session")
def triton_install() -> TritonInstall:
    """The local Triton install; a missing one is a failure, never a skip.

    Component tests exist to prove serving works, so silently skipping them on
    a machine without Triton would hide exactly what they check.
    """
    try:
        return find_triton_install()
    except TritonNotInstalledError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback
