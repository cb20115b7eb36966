"""TensorRT engine build through the `tensorrt` Python API.

Needs the tensorrt package and an NVIDIA GPU; where either is missing the pass reports *skipped*
with the reason. INT8 uses explicit quantization: feed it the QDQ model of a static quantize pass
(TensorRT 10 deprecated implicit calibration), so the scales come from the same calibration.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from optiserve.api.spec import TensorRTPass
from optiserve_jobs.passes.base import PassContext, PassOutcome


def gpu_unavailable_reason() -> str | None:
    """Why no TensorRT engine can be built here, or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (use the GPU job image)"
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
        return "no NVIDIA GPU visible"
    return None


def _profile_shapes(spec_shape: list[int], max_batch: int, sequence: int) -> tuple[tuple[int, ...], ...]:
    def concrete(batch: int, dynamic: int) -> tuple[int, ...]:
        return (batch, *[dynamic if d < 0 else d for d in spec_shape])

    return concrete(1, 1), concrete(max(1, max_batch // 2), sequence), concrete(max_batch, sequence)


class TensorRT:
    name = "tensorrt"

    def __init__(self, config: TensorRTPass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        reason = gpu_unavailable_reason()
        if reason is not None:
            return PassOutcome.skipped(reason)
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if self.config.precision == "int8":
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(model)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            return PassOutcome.failed(f"TensorRT could not parse the ONNX model: {errors}")
        config = self._builder_config(builder, trt)
        profile = builder.create_optimization_profile()
        for spec in context.source.inputs:
            low, mid, high = _profile_shapes(spec.shape, self.config.max_batch_size, context.source.spec.sequence_length)
            profile.set_shape(spec.name, low, mid, high)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            return PassOutcome.failed("TensorRT engine build failed (see the job log)")
        output = context.work_dir / f"{index:02d}-tensorrt.plan"
        output.write_bytes(bytes(engine))
        return PassOutcome.ok(
            output, f"TensorRT {trt.__version__} engine, {self.config.precision}, max batch {self.config.max_batch_size}"
        )

    def _builder_config(self, builder: Any, trt: Any) -> Any:
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.config.workspace_mib << 20)
        if self.config.precision == "fp16" and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        return config
