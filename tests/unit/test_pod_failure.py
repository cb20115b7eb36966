"""Why a candidate's pods cannot become ready, as the status reports it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from optiserve.kube.client import failing_since, pod_failure

VERIFY_LOG = "error: model_repository/minilm/1/model.onnx: sha256 differs from the manifest (truncated or modified)\n"


def pod(init: list[dict[str, Any]], containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "minilm-candidate-7d9f"},
        "status": {"initContainerStatuses": init, "containerStatuses": containers},
    }


def test_a_failing_artifact_check_is_reported_with_the_file_it_names() -> None:
    crash_looping: dict[str, Any] = {
        "name": "verify-artifact",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": VERIFY_LOG}},
    }
    waiting_triton: dict[str, Any] = {"name": "triton", "state": {"waiting": {"reason": "PodInitializing"}}}
    reason = pod_failure([pod([crash_looping], [waiting_triton])])
    assert reason.startswith("pod minilm-candidate-7d9f: container verify-artifact: CrashLoopBackOff")
    assert "model.onnx: sha256 differs from the manifest" in reason


def test_a_passed_artifact_check_and_a_starting_triton_are_no_failure() -> None:
    done: dict[str, Any] = {"name": "verify-artifact", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    starting: dict[str, Any] = {"name": "triton", "state": {"running": {}}}
    assert pod_failure([pod([done], [starting])]) == ""


def test_a_failure_counts_from_the_newest_failing_pod() -> None:
    crash_looping: dict[str, Any] = {
        "name": "verify-artifact",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": VERIFY_LOG}},
    }
    older, newer, healthy = (
        pod([crash_looping], []),
        pod([crash_looping], []),
        pod([], [{"name": "triton", "state": {"running": {}}}]),
    )
    older["metadata"]["creationTimestamp"] = "2026-12-03T10:00:00Z"
    newer["metadata"]["creationTimestamp"] = "2026-12-03T10:05:00Z"
    healthy["metadata"]["creationTimestamp"] = "2026-12-03T10:09:00Z"
    assert failing_since([older, newer, healthy]) == datetime(2026, 12, 3, 10, 5, tzinfo=UTC)
    assert failing_since([healthy]) is None
