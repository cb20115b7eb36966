"""The distill pass: train the model so far (a pruned model, or a layer-dropped student) on the source's outputs.

Its PyTorch work lives in `compression.distill_run`, imported when the pass runs: the registry
imports every pass, and the job's ONNX-only image has no torch.
"""

from __future__ import annotations

from pathlib import Path

from optiserve.api.compression import DistillPass
from optiserve_jobs.errors import PassError
from optiserve_jobs.passes.base import PassContext, PassOutcome


def student_layers(layers: int | list[int] | None, teacher_layers: int, field: str) -> list[int]:
    """The teacher layer indices the student keeps: all, a list as given, or a count spread evenly."""
    if layers is None:
        return list(range(teacher_layers))
    if isinstance(layers, list):
        if layers[-1] >= teacher_layers:
            raise PassError(f"{field}: layer {layers[-1]} does not exist; the teacher has layers 0..{teacher_layers - 1}")
        return list(layers)
    if layers > teacher_layers:
        raise PassError(f"{field}: a student of {layers} layers is larger than its teacher of {teacher_layers}")
    if layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (layers - 1)
    return sorted({round(i * step) for i in range(layers)})


class Distill:
    name = "distill"

    def __init__(self, config: DistillPass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        from optiserve_jobs.compression.distill_run import TorchDistill

        return TorchDistill(self.config).run(model, context, index)
