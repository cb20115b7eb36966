"""The prune pass: structured pruning of the PyTorch model (heads and FFN neurons, or conv channels).

Its PyTorch work lives in `compression.prune_run`, imported when the pass runs: the registry
imports every pass, and the job's ONNX-only image has no torch.
"""

from __future__ import annotations

from pathlib import Path

from optiserve.api.compression import PrunePass
from optiserve_jobs.passes.base import PassContext, PassOutcome


class Prune:
    name = "prune"

    def __init__(self, config: PrunePass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        from optiserve_jobs.compression.prune_run import TorchPrune

        return TorchPrune(self.config).run(model, context, index)
