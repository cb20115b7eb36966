"""The distillation loop: a student learns the teacher's outputs on unlabeled data, within a time budget.

Losses by task: embedding, the squared distance between the student's and the teacher's embeddings
(2 - 2 cos for normalised ones); classification, KL divergence of temperature-softened
distributions (scaled by T², Hinton et al.) mixed with cross-entropy on labels when the data has
them; anything else, MSE. Optionally the student's layer outputs are pulled to the teacher layers
they came from (MSE). The teacher's final outputs are computed once and reused every epoch.

The plan is `epochs` passes over the data with AdamW, linear warm-up and decay. After the first
steps the loop measures its pace; when the plan does not fit `maxTrainingSeconds`, the schedule is
shortened to what fits (and the result says so), and the loop stops at the budget in any case.
Dropout stays off: the same seed and data give the same student.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from optiserve.api.compression import DistillPass
from optiserve.api.spec import Task
from optiserve_jobs.compression.encoder import MASK_INPUT, batches, tensors, trimmed
from optiserve_jobs.datasets import Dataset

PACE_STEPS = 5
"""Steps timed before the schedule is fitted to the budget."""
WARMUP_SHARE = 0.06
REPORT_EVERY_S = 5.0
TEACHER_BATCH = 64
BUCKET_POOL = 50


@dataclass
class TrainingResult:
    planned_steps: int
    steps: int = 0
    seconds: float = 0.0
    first_loss: float | None = None
    final_loss: float | None = None
    stopped_by: str = "epochs"
    teacher_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def epochs_done(self) -> float:
        return self.steps / self.planned_steps if self.planned_steps else 0.0


def _output(value: object) -> torch.Tensor:
    if isinstance(value, tuple | list):
        value = value[0]
    assert isinstance(value, torch.Tensor)
    return value


class _LayerOutputs:
    """Forward hooks that keep the outputs of the given layers during one forward pass."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._keep) for layer in layers]

    def _keep(self, _: nn.Module, __: object, output: object) -> None:
        self.outputs.append(_output(output))

    def take(self) -> list[torch.Tensor]:
        taken, self.outputs = self.outputs, []
        return taken

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass(frozen=True)
class HiddenMatch:
    """Student layers and the teacher layers they are pulled towards (same order)."""

    student: list[nn.Module]
    teacher: list[nn.Module]


def lengths(data: Dataset) -> np.ndarray:
    """Each sample's length in tokens (all equal for data without an attention mask)."""
    mask = data.inputs.get(MASK_INPUT)
    if mask is None or mask.ndim != 2:
        return np.ones(len(data), dtype=np.int64)
    return np.asarray(mask.sum(axis=1), dtype=np.int64)


def epoch_batches(sizes: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches: shuffled, then grouped by length within pools of BUCKET_POOL batches, so a
    batch carries little padding; the batches themselves come in a random order."""
    order = rng.permutation(len(sizes))
    pool = batch_size * BUCKET_POOL
    result = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
        result += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [result[i] for i in rng.permutation(len(result))]


@dataclass
class _Run:
    """One training run's state, shared by the loop and its steps."""

    data: Dataset
    optimizer: torch.optim.Optimizer
    result: TrainingResult
    targets: torch.Tensor | None
    hooks: tuple[_LayerOutputs, _LayerOutputs] | None
    progress: Callable[[str], None]
    started: float


class Distiller:
    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        config: DistillPass,
        task: Task,
        input_names: list[str],
    ) -> None:
        self.teacher = teacher.eval()
        self.student = student.eval()  # dropout off: the seed alone decides the student
        self.config = config
        self.task = task
        self.names = input_names

    def _loss(self, student_out: torch.Tensor, teacher_out: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.task is Task.EMBEDDING:
            return ((student_out - teacher_out) ** 2).sum(dim=-1).mean()
        if self.task is Task.CLASSIFICATION:
            t = self.config.temperature
            soft = nn.functional.kl_div(
                nn.functional.log_softmax(student_out / t, dim=-1),
                nn.functional.log_softmax(teacher_out / t, dim=-1),
                log_target=True,
                reduction="batchmean",
            ) * (t * t)
            if labels is None:
                return soft
            hard = nn.functional.cross_entropy(student_out, labels)
            return (1 - self.config.label_weight) * soft + self.config.label_weight * hard
        return nn.functional.mse_loss(student_out, teacher_out)

    def teacher_outputs(self, data: Dataset, progress: Callable[[str], None]) -> torch.Tensor:
        """The teacher's outputs for every sample, computed in order of length (little padding)."""
        order = np.argsort(lengths(data), kind="stable")
        parts = []
        last_report = time.perf_counter()
        with torch.inference_mode():
            for batch in batches(data, TEACHER_BATCH, order):
                parts.append(_output(self.teacher(*tensors(batch, self.names))).float())
                if time.perf_counter() - last_report >= REPORT_EVERY_S:
                    last_report = time.perf_counter()
                    progress(f"distill: teacher outputs {sum(len(p) for p in parts)}/{len(data)}")
        outputs = torch.empty((len(data), *parts[0].shape[1:]))
        outputs[torch.as_tensor(order)] = torch.cat(parts)
        return outputs

    def train(self, data: Dataset, progress: Callable[[str], None], hidden: HiddenMatch | None) -> TrainingResult:
        config = self.config
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        steps_per_epoch = math.ceil(len(data) / config.batch_size)
        result = TrainingResult(planned_steps=max(1, math.ceil(config.epochs * steps_per_epoch)))
        started = time.perf_counter()
        targets = None if hidden else self.teacher_outputs(data, progress)
        result.teacher_seconds = round(time.perf_counter() - started, 1)
        for parameter in self.student.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(self.student.parameters(), lr=config.learning_rate, weight_decay=0.01)
        hooks = (_LayerOutputs(hidden.student), _LayerOutputs(hidden.teacher)) if hidden else None
        try:
            self._loop(_Run(data, optimizer, result, targets, hooks, progress, started), rng)
        finally:
            if hooks:
                hooks[0].close()
                hooks[1].close()
            for parameter in self.student.parameters():
                parameter.requires_grad_(False)
        result.seconds = round(time.perf_counter() - started, 1)
        return result

    def _loop(self, run: _Run, rng: np.random.Generator) -> None:
        result, started = run.result, run.started
        budget = float(self.config.max_training_seconds)
        loop_started = time.perf_counter()
        last_report = started
        average: float | None = None
        sizes = lengths(run.data)
        while result.steps < result.planned_steps:
            for rows in epoch_batches(sizes, self.config.batch_size, rng):
                if result.steps >= result.planned_steps:
                    return
                elapsed = time.perf_counter() - started
                if elapsed >= budget:
                    result.stopped_by = "budget"
                    return
                loss = self._step(run, rows)
                average = loss if average is None else 0.95 * average + 0.05 * loss
                result.final_loss = average
                if result.steps == PACE_STEPS:
                    self._fit_to_budget(result, time.perf_counter() - loop_started, budget - (loop_started - started))
                now = time.perf_counter()
                if now - last_report >= REPORT_EVERY_S:
                    last_report = now
                    run.progress(
                        f"distill: step {result.steps}/{result.planned_steps}, loss {average:.4g}, "
                        f"{now - started:.0f} of {budget:.0f} s"
                    )

    def _fit_to_budget(self, result: TrainingResult, elapsed: float, budget: float) -> None:
        """Shorten the schedule to the steps the budget holds at the pace measured so far."""
        pace = elapsed / result.steps
        fits = int(budget / pace)
        if fits < result.planned_steps:
            result.planned_steps = max(fits, result.steps)
            result.stopped_by = "budget"

    def _learning_rate(self, step: int, planned: int) -> float:
        warmup = max(1, int(WARMUP_SHARE * planned))
        if step < warmup:
            return self.config.learning_rate * (step + 1) / warmup
        return self.config.learning_rate * max(0.0, (planned - step) / max(1, planned - warmup))

    def _step(self, run: _Run, rows: np.ndarray) -> float:
        data, optimizer, result, targets, hooks = run.data, run.optimizer, run.result, run.targets, run.hooks
        batch = trimmed({name: value[rows] for name, value in data.inputs.items()})
        inputs = tensors(batch, self.names)
        labels = None if data.labels is None else torch.as_tensor(data.labels[rows], dtype=torch.long)
        for group in optimizer.param_groups:
            group["lr"] = self._learning_rate(result.steps, result.planned_steps)
        if targets is not None:
            target = targets[torch.as_tensor(rows)]
        else:
            with torch.no_grad():
                target = _output(self.teacher(*inputs)).float()
        output = _output(self.student(*inputs))
        loss = self._loss(output, target, labels)
        if hooks is not None:
            loss = loss + self.config.hidden_weight * self._hidden_loss(hooks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # unannotated in torch
        optimizer.step()
        value = float(loss.detach())
        result.steps += 1
        result.first_loss = value if result.first_loss is None else result.first_loss
        result.losses.append(value)
        return value

    def _hidden_loss(self, hooks: tuple[_LayerOutputs, _LayerOutputs]) -> torch.Tensor:
        student, teacher = hooks[0].take(), [t.detach() for t in hooks[1].take()]
        return sum((nn.functional.mse_loss(s, t) for s, t in zip(student, teacher, strict=True)), torch.zeros(()))
