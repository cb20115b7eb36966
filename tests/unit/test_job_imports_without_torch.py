"""The job's entry point and pass registry import without torch: the ONNX-only job image has none.

PyTorch is imported where a pass that needs it runs (export, prune, distill). A module-level torch
import in a pass broke every Job in the real-pod tier (`ModuleNotFoundError: No module named 'torch'`).
"""

from __future__ import annotations

import subprocess
import sys

from optiserve.api.spec import PASS_CONFIGS

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; "


def _imports(statement: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + statement], capture_output=True, text=True, timeout=120)


def test_the_job_and_every_registered_pass_import_without_torch() -> None:
    result = _imports(
        "import optiserve_jobs.__main__, optiserve_jobs.job, optiserve_jobs.generative.job; "
        "from optiserve_jobs.passes import REGISTRY; print(len(REGISTRY))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(PASS_CONFIGS))  # every pass the spec declares


def test_the_blocked_import_is_seen_where_torch_is_really_needed() -> None:
    result = _imports("import optiserve_jobs.compression.training")
    assert result.returncode != 0
    assert "torch" in result.stderr
