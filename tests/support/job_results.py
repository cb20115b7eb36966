"""What the optimization Job of each generation reports, in the tests that play the Job: g1 passes
(`PASSED`, artifact `SHA`) or fails its gates (`GATE_FAILED`); g2 passes with another artifact
(`SECOND`, `SHA2`). The same on the emulated API and on a real one.
"""

from __future__ import annotations

from optiserve.api.job import ArtifactRef, JobResult

SHA = "ab" * 32
PASSED = JobResult(
    passed=True,
    artifact=ArtifactRef(uri="pvc://optiserve-models/minilm/g1/model_repository", sha256=SHA, size_bytes=23_000_000),
    speedup_p50=2.5,
    size_ratio=0.26,
    fidelity_mean=0.997,
    fidelity_min=0.985,
)
GATE_FAILED = JobResult(
    passed=False, reason="gate failed: fidelity_mean = 0.97, needs >= 0.995", failed_gates=["fidelity_mean"], speedup_p50=2.4
)
SHA2 = "cd" * 32
SECOND = JobResult(
    passed=True,
    artifact=ArtifactRef(uri="pvc://optiserve-models/minilm/g2/model_repository", sha256=SHA2, size_bytes=22_000_000),
    speedup_p50=2.6,
    size_ratio=0.25,
)
