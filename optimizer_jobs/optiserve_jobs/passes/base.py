"""What every pass shares: its outcome, the context it runs in, and the Protocol it implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import onnx

from optiserve_jobs.datasets import Dataset
from optiserve_jobs.source_model import SourceModel


class PassStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class PassOutcome:
    """One line of status: ok / failed / skipped, and why. `output` is the new model when ok."""

    status: PassStatus
    detail: str
    output: Path | None = None
    facts: dict[str, float | int | str] = field(default_factory=dict)

    @classmethod
    def ok(cls, output: Path, detail: str, **facts: float | int | str) -> PassOutcome:
        return cls(PassStatus.OK, detail, output, dict(facts))

    @classmethod
    def failed(cls, detail: str, **facts: float | int | str) -> PassOutcome:
        return cls(PassStatus.FAILED, detail, None, dict(facts))

    @classmethod
    def skipped(cls, detail: str) -> PassOutcome:
        return cls(PassStatus.SKIPPED, detail)


@dataclass
class PassContext:
    work_dir: Path
    source: SourceModel
    base_dir: Path | None
    threads: int
    sample: Dataset
    """A few validation samples, for numerical checks inside passes."""
    load_dataset: Callable[[str, int], Dataset]
    """Load a data set by URI, at most N samples (calibration data)."""
    log_dir: Path | None = None
    """Where passes copy their logs so they outlive `work_dir` (the job's output directory); None keeps them in work_dir."""
    torch_module: Any = None
    """The PyTorch model as prune and distill left it (a torch.nn.Module); the export pass exports it. None: the source."""
    progress: Callable[[str], None] = field(default=lambda _: None)
    """Where a long pass says how far it is (the job's progress display)."""

    def output_path(self, pass_index: int, name: str) -> Path:
        return self.work_dir / f"{pass_index:02d}-{name}.onnx"


class OptimizationPass(Protocol):
    name: str

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome: ...


EXTERNAL_DATA_THRESHOLD = 1_800_000_000
"""Initializer bytes above which a model is saved with external data (a protobuf holds 2 GB at most)."""


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Save with weights inline when they fit in one protobuf, else in `<name>.data` beside it.
    Counted on the initializers' bytes: a proto over 2 GB cannot always report its own size."""
    if sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.data")
    else:
        onnx.save_model(model, str(path))
    return path


def count_ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
