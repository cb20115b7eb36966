"""The per-operator profile sums ONNX Runtime kernel events by operator type."""

from __future__ import annotations

from optiserve_jobs.profiling import summarize_trace


def _event(op: str, dur: int, name: str = "n_kernel_time") -> dict[str, object]:
    return {"cat": "Node", "name": name, "dur": dur, "args": {"op_name": op}}


def test_sums_by_type_and_ranks() -> None:
    events = [
        _event("MatMulInteger", 300),
        _event("MatMulInteger", 500),
        _event("Gelu", 200),
        _event("Gelu", 999, name="n_fence_before"),  # not a kernel: ignored
        {"cat": "Session", "name": "model_run", "dur": 5000},
    ]
    top = summarize_trace(events, runs=2)
    assert top[0] == {"op_type": "MatMulInteger", "ms_per_run": 0.4, "share": 0.8}
    assert top[1]["op_type"] == "Gelu" and top[1]["share"] == 0.2


def test_empty_trace() -> None:
    assert summarize_trace([], runs=1) == []
