"""The pass registry: the one place a pass's implementation is registered.

`optiserve.api.spec.Pass` declares each pass's configuration (and with it the CRD schema and
manifest validation); `REGISTRY` maps each configuration model to the class that runs it, and
`build_pass` dispatches through it. tests/unit/test_pass_registry.py checks that every pass the
spec declares is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optiserve.api.base import ApiModel
from optiserve.api.compression import DistillPass, PrunePass
from optiserve.api.generation import WeightOnlyPass
from optiserve.api.spec import ExportPass, Fp16Pass, GraphPass, Pass, QuantizePass, TensorRTPass, pass_type
from optiserve_jobs.errors import PassError
from optiserve_jobs.passes.base import OptimizationPass, PassContext, PassOutcome, PassStatus
from optiserve_jobs.passes.distill import Distill
from optiserve_jobs.passes.export import Export
from optiserve_jobs.passes.fp16 import Fp16
from optiserve_jobs.passes.graph import Graph
from optiserve_jobs.passes.prune import Prune
from optiserve_jobs.passes.quantize import Quantize
from optiserve_jobs.passes.tensorrt import TensorRT
from optiserve_jobs.passes.weight_only import WeightOnly

PassFactory = Callable[[Any], OptimizationPass]
"""An implementation's constructor; it takes its own configuration model (hence `Any` here)."""

REGISTRY: dict[type[ApiModel], PassFactory] = {
    PrunePass: Prune,
    DistillPass: Distill,
    ExportPass: Export,
    GraphPass: Graph,
    Fp16Pass: Fp16,
    QuantizePass: Quantize,
    TensorRTPass: TensorRT,
    WeightOnlyPass: WeightOnly,
}


def build_pass(config: Pass) -> OptimizationPass:
    factory = REGISTRY.get(type(config))
    if factory is None:
        known = ", ".join(sorted(pass_type(registered) for registered in REGISTRY))
        raise PassError(f"unknown pass type '{config.type}' (known: {known})")
    return factory(config)


__all__ = ["REGISTRY", "OptimizationPass", "PassContext", "PassOutcome", "PassStatus", "build_pass"]
