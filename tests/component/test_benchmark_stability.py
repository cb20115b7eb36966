"""The job's benchmark beside other work: the idle verdict, or none, never one made of the noise.

Two real ONNX models, one doing half the other's work (a speedup of about 2 by construction),
timed by the job's own benchmark in worker processes, once as the machine is and once beside
more spinning processes than it has CPUs. Under the load the kernel's run-queue waits mark the
rounds disturbed: the speed gate must then say the idle verdict or inconclusive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optiserve.api.spec import BenchmarkSpec, ValidationSpec
from optiserve.local.processes import busy_processes
from optiserve_jobs.benchmark import evidence, run_benchmark
from optiserve_jobs.interference import cpu_allowance
from optiserve_jobs.report import Fidelity, VariantBenchmark
from optiserve_jobs.runners import VariantSpec
from optiserve_jobs.validate import evaluate_gates

pytestmark = pytest.mark.slow

WIDTH = 512
SPEC = BenchmarkSpec(batch_sizes=[16], threads=2, warmup=3, iterations=10, repeats=3, profile=False)
GATE = ValidationSpec(dataset_uri="unused", min_speedup=1.5)


def matmul_chain(path: Path, layers: int) -> Path:
    """x[N, 256] through `layers` MatMul + Relu: the time is proportional to `layers`."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.normal(size=(WIDTH, WIDTH)) / 16).astype(np.float32), "w")
    nodes, current = [], "x"
    for index in range(layers):
        nodes += [
            helper.make_node("MatMul", [current, "w"], [f"m{index}"]),
            helper.make_node("Relu", [f"m{index}"], [f"r{index}"]),
        ]
        current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def measure(tmp_path: Path) -> list[VariantBenchmark]:
    baseline, candidate = matmul_chain(tmp_path / "baseline.onnx", 24), matmul_chain(tmp_path / "candidate.onnx", 12)
    inputs = {16: {"x": np.random.default_rng(1).normal(size=(16, WIDTH)).astype(np.float32)}}
    variants = [
        (VariantSpec("baseline", onnx_path=baseline), "onnxruntime", baseline),
        (VariantSpec("candidate", onnx_path=candidate), "onnxruntime", candidate),
    ]
    return run_benchmark(variants, inputs, SPEC)


def verdict(results: list[VariantBenchmark]) -> str:
    speed = evidence(results[0], results[1], 16, SPEC)
    gate = evaluate_gates(GATE, Fidelity("cosine", 1.0, 1.0, 0.0), None, speed, 1.0)[-1]
    assert gate.name == "speedup_p50"
    return "inconclusive" if gate.inconclusive else ("passed" if gate.passed else "failed")


def test_beside_a_cpu_hog_the_verdict_is_the_idle_one_or_inconclusive(tmp_path: Path) -> None:
    idle = measure(tmp_path)
    with busy_processes(cpu_allowance().usable + 1):
        busy = measure(tmp_path)

    idle_verdict, busy_verdict = verdict(idle), verdict(busy)
    assert idle_verdict in ("passed", "inconclusive"), "half the work is about 2x faster, over the 1.5x gate"
    assert busy_verdict in (idle_verdict, "inconclusive"), (idle_verdict, busy_verdict)
    disturbed = [timing.disturbed_rounds for result in busy for timing in result.batches]
    assert sum(disturbed) > 0, "rounds beside more spinning processes than CPUs must be seen as disturbed"
    timing = busy[0].timing(16)
    assert timing.rounds == SPEC.repeats * SPEC.stability.budget or timing.disturbed_rounds < timing.rounds, (
        "disturbed rounds are measured again, up to the budget"
    )
