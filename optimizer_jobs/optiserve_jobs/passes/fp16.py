"""Float16 conversion (weights and compute), keeping float32 inputs and outputs by default."""

from __future__ import annotations

from pathlib import Path

import onnx

from optiserve.api.spec import Fp16Pass
from optiserve_jobs.passes.base import PassContext, PassOutcome, save_model


class Fp16:
    name = "fp16"

    def __init__(self, config: Fp16Pass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        converted = convert_float_to_float16(
            onnx.load(str(model)),
            keep_io_types=self.config.keep_io_types,
            op_block_list=self.config.op_block_list or None,
        )
        output = save_model(converted, context.output_path(index, self.name))
        return PassOutcome.ok(output, f"float16, io types {'kept' if self.config.keep_io_types else 'float16'}")
