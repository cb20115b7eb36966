"""The pass registry: a pass type names exactly one implementation; an unknown name is an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optiserve.api.spec import ExportPass, Fp16Pass, GraphPass, QuantizePass, TensorRTPass
from optiserve_jobs.errors import PassError
from optiserve_jobs.passes.base import OptimizationPass, PassContext, PassOutcome, PassStatus
from optiserve_jobs.passes.export import Export
from optiserve_jobs.passes.fp16 import Fp16
from optiserve_jobs.passes.graph import Graph
from optiserve_jobs.passes.quantize import Quantize
from optiserve_jobs.passes.tensorrt import TensorRT

REGISTRY: dict[str, Callable[[Any], OptimizationPass]] = {
    "export": Export,
    "graph": Graph,
    "fp16": Fp16,
    "quantize": Quantize,
    "tensorrt": TensorRT,
}

PassConfig = ExportPass | GraphPass | Fp16Pass | QuantizePass | TensorRTPass


def build_pass(config: PassConfig) -> OptimizationPass:
    factory = REGISTRY.get(config.type)
    if factory is None:
        raise PassError(f"unknown pass type '{config.type}' (known: {', '.join(sorted(REGISTRY))})")
    return factory(config)


__all__ = ["REGISTRY", "OptimizationPass", "PassContext", "PassOutcome", "PassStatus", "build_pass"]
