"""The operator/job contract: versioned, and the result always fits a termination message."""

from __future__ import annotations

from optiserve.api.job import TERMINATION_MESSAGE_LIMIT, JobResult, job_request_from_manifest
from optiserve.api.manifest import load_manifest
from tests.support.models import REPO_ROOT


def test_request_from_the_example_manifest() -> None:
    request = job_request_from_manifest(load_manifest(REPO_ROOT / "examples/minilm/optimizedmodel.yaml"), "/data")
    assert request.api_version == "optiserve.io/job/v1"
    assert request.name == "minilm" and request.base_dir == "/data"
    assert [p.type for p in request.passes] == ["export", "quantize", "tensorrt"]
    assert type(request).model_validate_json(request.model_dump_json()) == request


def test_long_reason_is_shortened_to_fit() -> None:
    result = JobResult(passed=False, reason="x" * 10_000, failed_gates=["fidelity_mean"])
    message = result.to_termination_message()
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = JobResult.from_termination_message(message)
    assert parsed.failed_gates == ["fidelity_mean"] and parsed.reason.endswith("...")


def test_short_result_round_trips_unchanged() -> None:
    result = JobResult(passed=True, speedup_p50=4.1, size_ratio=0.25, fidelity_mean=0.998)
    assert JobResult.from_termination_message(result.to_termination_message()) == result
