"""The distill pass's PyTorch work: train the model so far (pruned, or a layer-dropped student) on the source's outputs."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from optiserve.api.compression import DistillPass
from optiserve_jobs.compression.encoder import find_encoder
from optiserve_jobs.compression.training import Distiller, HiddenMatch, TrainingResult
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.errors import PassError, SourceError
from optiserve_jobs.passes.base import PassContext, PassOutcome
from optiserve_jobs.passes.distill import student_layers
from optiserve_jobs.passes.torch_stage import output_agreement, parameter_count, save_module, source_model, torch_model


class TorchDistill:
    name = "distill"

    def __init__(self, config: DistillPass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        field = f"optimization.passes[{index}]"
        data = self._corpus(context, field)
        teacher = source_model(context)
        student = torch_model(context, field)  # a copy of its own: the teacher must not learn with it
        kept, hidden = self._shape_student(student, teacher, field)
        names = [i.name for i in context.source.inputs]
        context.progress(f"distill: {len(data)} samples, {self.config.max_training_seconds} s budget")
        result = Distiller(teacher, student, self.config, context.source.spec.task, names).train(data, context.progress, hidden)
        agreement = output_agreement(teacher, student, context)
        context.torch_module = student
        output = save_module(student, context.output_path(index, self.name).with_suffix(".pt"))
        return PassOutcome.ok(
            output,
            self._detail(result, kept, len(data), agreement),
            training_seconds=result.seconds,
            teacher_seconds=result.teacher_seconds,
            training_steps=result.steps,
            planned_steps=result.planned_steps,
            first_loss=round(result.first_loss or 0.0, 6),
            final_loss=round(result.final_loss or 0.0, 6),
            stopped_by=result.stopped_by,
            student_parameters=parameter_count(student),
            teacher_parameters=parameter_count(teacher),
            training_samples=len(data),
        )

    def _corpus(self, context: PassContext, field: str) -> Dataset:
        try:
            data = context.load_dataset(self.config.dataset_uri, self.config.samples)
        except SourceError as e:
            raise PassError(f"{field}.datasetUri: {e}") from e
        needed = max(self.config.min_samples, self.config.batch_size)
        if len(data) < needed:
            raise PassError(
                f"{field}.datasetUri: {len(data)} training samples, fewer than {needed} (minSamples "
                f"{self.config.min_samples}, batchSize {self.config.batch_size}): a student trained on so few for "
                f"maxTrainingSeconds {self.config.max_training_seconds} would learn them by heart"
            )
        return data

    def _shape_student(self, student: nn.Module, teacher: nn.Module, field: str) -> tuple[list[int] | None, HiddenMatch | None]:
        encoder = find_encoder(student)
        teacher_encoder = find_encoder(teacher)
        if encoder is None or teacher_encoder is None:
            if self.config.layers is not None:
                raise PassError(
                    f"{field}.layers: the model ({type(student).__name__}) has no BERT-style encoder to take layers from"
                )
            if self.config.hidden_weight > 0:
                raise PassError(f"{field}.hiddenWeight: hidden-state matching needs a BERT-style encoder")
            return None, None
        if len(encoder.layers) != len(teacher_encoder.layers) and self.config.layers is not None:
            raise PassError(f"{field}.layers: the model has already lost layers; take layers from the source only once")
        kept = student_layers(self.config.layers, len(teacher_encoder.layers), f"{field}.layers")
        if self.config.layers is not None:
            encoder.replace_layers([encoder.layers[i] for i in kept])
        hidden = None
        if self.config.hidden_weight > 0:
            hidden = HiddenMatch(list(encoder.layers), [teacher_encoder.layers[i] for i in kept])
        return kept, hidden

    def _detail(self, result: TrainingResult, kept: list[int] | None, samples: int, agreement: str) -> str:
        student = f"student layers {kept} of the teacher's, " if kept is not None and self.config.layers is not None else ""
        bound = "the budget" if result.stopped_by == "budget" else f"{self.config.epochs:g} epochs"
        return (
            f"{student}{result.steps} steps of {self.config.batch_size} on {samples} samples in {result.seconds:.0f} s "
            f"(bound by {bound}), loss {result.first_loss or 0:.4g} -> {result.final_loss or 0:.4g}; {agreement}"
        )
