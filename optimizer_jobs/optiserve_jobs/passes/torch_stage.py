"""What the passes that change the PyTorch model share: the module so far, its size, how close it stays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from optiserve.api.spec import Task
from optiserve_jobs.compression.encoder import tensors, trimmed
from optiserve_jobs.errors import PassError
from optiserve_jobs.passes.base import PassContext


def torch_model(context: PassContext, field: str) -> nn.Module:
    """The PyTorch model as the earlier passes left it (the source model for the first of them)."""
    from optiserve_jobs.torch_models import load_torch_module

    if context.torch_module is not None:
        module: nn.Module = context.torch_module
        return module
    module = load_torch_module(context.source, context.base_dir)
    if isinstance(module, torch.jit.ScriptModule):
        raise PassError(f"{field}.type: a TorchScript model cannot be pruned or distilled; give its nn.Module (format pytorch)")
    return module


def source_model(context: PassContext) -> nn.Module:
    from optiserve_jobs.torch_models import load_torch_module

    return load_torch_module(context.source, context.base_dir)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_module(module: nn.Module, path: Path) -> Path:
    """The changed model's weights, for the record (the module itself goes on to the export in memory)."""
    torch.save(module.state_dict(), path)
    return path


def output_agreement(reference: nn.Module, module: nn.Module, context: PassContext) -> str:
    """How close `module` stays to `reference` on the few validation samples passes may look at."""
    names = [i.name for i in context.source.inputs]
    batch = tensors(trimmed(context.sample.inputs), names)
    with torch.inference_mode():
        expected = reference(*batch).float().numpy()
        actual = module(*batch).float().numpy()
    if context.source.spec.task is Task.EMBEDDING:
        cosine = np.sum(expected * actual, axis=1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1) + 1e-12)
        return f"mean cosine {float(cosine.mean()):.4f} to the model before it on {len(cosine)} samples"
    if context.source.spec.task is Task.CLASSIFICATION:
        agree = float(np.mean(expected.argmax(axis=1) == actual.argmax(axis=1)))
        return f"top-1 agreement {agree:.3f} with the model before it on {len(expected)} samples"
    return f"max abs difference {float(np.max(np.abs(expected - actual))):.3g} on {len(expected)} samples"
