"""Load the source model as a PyTorch module (the baseline for torch sources, and the export input)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from optiserve.api.spec import ModelFormat, Task
from optiserve_jobs.errors import SourceError
from optiserve_jobs.source_model import SourceModel


class SentenceEmbedding(torch.nn.Module):
    """Encoder + attention-mask mean pooling + L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, encoder: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, tensors, strict=True))
        hidden = self.encoder(**named).last_hidden_state
        mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


class SequenceLogits(torch.nn.Module):
    def __init__(self, classifier: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.classifier = classifier
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(**dict(zip(self.input_names, tensors, strict=True))).logits
        return logits


def _load_huggingface(source: SourceModel) -> torch.nn.Module:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers; the job reports its own progress
    names = [i.name for i in source.inputs]
    common: dict[str, Any] = {"local_files_only": True, "attn_implementation": "eager"}
    if source.spec.task is Task.CLASSIFICATION:
        classifier = transformers.AutoModelForSequenceClassification.from_pretrained(str(source.path), **common)
        return SequenceLogits(classifier, names)
    encoder = transformers.AutoModel.from_pretrained(str(source.path), **common)
    if source.spec.task is Task.EMBEDDING:
        return SentenceEmbedding(encoder, names)
    raise SourceError(f"model.task: huggingface sources support embedding and classification, not {source.spec.task.value}")


def _import_factory(entrypoint: str, base_dir: Path | None) -> Callable[..., torch.nn.Module]:
    module_name, _, attr = entrypoint.partition(":")
    if not attr:
        raise SourceError(f"model.entrypoint: '{entrypoint}' must look like 'module:factory' or 'file.py:factory'")
    if module_name.endswith(".py"):
        file = Path(module_name)
        if not file.is_absolute() and base_dir is not None:
            file = base_dir / file
        spec = importlib.util.spec_from_file_location(file.stem, file)
        if spec is None or spec.loader is None or not file.exists():
            raise SourceError(f"model.entrypoint: cannot load {file}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise SourceError(f"model.entrypoint: cannot import '{module_name}': {e}") from e
    factory: Callable[..., torch.nn.Module] | None = getattr(module, attr, None)
    if not callable(factory):
        raise SourceError(f"model.entrypoint: '{attr}' is not a callable in {module_name}")
    return factory  # what it returns is checked by load_torch_module


def load_torch_module(source: SourceModel, base_dir: Path | None) -> torch.nn.Module:
    """The source as an eval-mode module taking the inputs positionally in `source.inputs` order."""
    if source.format is ModelFormat.HUGGINGFACE:
        module = _load_huggingface(source)
    elif source.format is ModelFormat.TORCHSCRIPT:
        try:
            module = torch.jit.load(str(source.path), map_location="cpu")  # type: ignore[no-untyped-call]  # unannotated in torch
        except Exception as e:
            raise SourceError(f"{source.spec.uri}: not a readable TorchScript file: {e}") from e
    elif source.format is ModelFormat.PYTORCH:
        factory = _import_factory(source.spec.entrypoint or "", base_dir)
        module = factory(str(source.path))
        if not isinstance(module, torch.nn.Module):
            raise SourceError(f"model.entrypoint: factory returned {type(module).__name__}, not a torch.nn.Module")
    else:
        raise SourceError(f"model.format: {source.format.value} has no PyTorch form")
    for parameter in module.parameters():
        parameter.requires_grad_(False)  # inference only; TorchScript modules fail under inference_mode otherwise
    return module.eval()
