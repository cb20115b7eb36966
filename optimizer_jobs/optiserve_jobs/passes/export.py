"""Export a PyTorch source to ONNX, check it, and compare its outputs with the source."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx

from optiserve.api.spec import ExportPass, ModelFormat
from optiserve_jobs.passes.base import PassContext, PassOutcome
from optiserve_jobs.runners import OrtRunner, TorchRunner


def _dynamic_axes(context: PassContext) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for spec in context.source.inputs:
        axes[spec.name] = {0: "batch"} | {i + 1: f"{spec.name}_dim{i + 1}" for i, d in enumerate(spec.shape) if d < 0}
        if context.source.is_text:
            axes[spec.name] = {0: "batch", 1: "sequence"}
    for name in context.source.outputs:
        axes[name] = {0: "batch"}
    return axes


class Export:
    name = "export"

    def __init__(self, config: ExportPass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        import torch

        from optiserve_jobs.torch_models import load_torch_module

        if context.source.format is ModelFormat.ONNX:
            return PassOutcome.skipped("source is already ONNX")
        module = load_torch_module(context.source, context.base_dir)
        names = [i.name for i in context.source.inputs]
        example = tuple(torch.from_numpy(context.sample.take(2).inputs[n]) for n in names)
        output = context.output_path(index, self.name)
        with warnings.catch_warnings():
            # The tracer's generic warnings (Python booleans, advanced indexing) say an export *might*
            # not generalise; the numerical check below, on real samples, says whether it did.
            warnings.simplefilter("ignore", torch.jit._trace.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                module,
                example,
                str(output),
                input_names=names,
                output_names=context.source.outputs,
                dynamic_axes=_dynamic_axes(context),
                opset_version=self.config.opset,
                dynamo=False,
            )
        onnx.checker.check_model(str(output), full_check=True)
        expected = TorchRunner(module, names, threads=context.threads).run(context.sample.inputs)
        actual = OrtRunner(output, threads=context.threads).run(context.sample.inputs)
        max_abs = float(np.max(np.abs(expected - actual)))
        if not np.allclose(actual, expected, atol=self.config.atol, rtol=self.config.rtol):
            return PassOutcome.failed(
                f"numerical check failed: max abs error {max_abs:.3g} exceeds atol {self.config.atol} / rtol {self.config.rtol}",
                max_abs_error=max_abs,
            )
        return PassOutcome.ok(
            output, f"opset {self.config.opset}, checker ok, max abs error {max_abs:.2g}", max_abs_error=max_abs
        )
