"""Fixtures every tier may use: a tiny model's complete spec, and the local Triton install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from optiserve.local.triton import TritonInstall, TritonNotInstalledError, find_triton_install
from tests.support.models import FAST_BENCHMARK, NO_SPEED_GATE, tiny_dataset, tiny_mlp


@pytest.fixture
def tiny_onnx_spec(tmp_path: Path) -> dict[str, Any]:
    """A complete spec for the tiny MLP with dynamic INT8, data next to it."""
    tiny_mlp(tmp_path / "model.onnx")
    tiny_dataset(tmp_path / "validation.npz")
    tiny_dataset(tmp_path / "calibration.npz", seed=2)
    return {
        "model": {"uri": "model.onnx", "format": "onnx"},
        "optimization": {"passes": [{"type": "graph"}, {"type": "quantize", "mode": "dynamic"}]},
        "validation": {"datasetUri": "validation.npz", "maxDegradation": 0.2, **NO_SPEED_GATE},
        "benchmark": FAST_BENCHMARK,
    }


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
