"""The source of a text-generation model: a Hugging Face folder, or a GGUF file the job dequantizes.

A GGUF file (llama.cpp's format, often already quantized to 4 or 5 bits) is read by transformers
and dequantized to FP32 weights in a Hugging Face folder; that folder is then the baseline, exactly
as given: a 4-bit GGUF's baseline is its dequantized weights, not the model it was made from.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

from optiserve_jobs.errors import SourceError

GGUF_SUFFIX = ".gguf"
DEQUANTIZED_DIR = "dequantized"
_PLAIN_TYPES = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})


@dataclass(frozen=True)
class GenerativeSource:
    hf_dir: Path
    """A Hugging Face folder: config.json, weights, tokenizer."""
    gguf: Path | None
    """The GGUF file it was dequantized from, if any."""
    gguf_types: tuple[str, ...] = ()
    """The tensor types in that file (e.g. Q4_1, F32): what the baseline's weights were."""


def find_gguf(path: Path, field: str = "model.uri") -> Path | None:
    """The GGUF file `path` names or holds alone; None for a Hugging Face folder."""
    if path.is_file():
        if path.suffix != GGUF_SUFFIX:
            raise SourceError(f"{field}: {path.name} is neither a Hugging Face folder nor a {GGUF_SUFFIX} file")
        return path
    if (path / "config.json").is_file():
        return None
    found = sorted(path.glob(f"*{GGUF_SUFFIX}"))
    if not found:
        raise SourceError(f"{field}: {path} holds neither a Hugging Face model (config.json) nor a {GGUF_SUFFIX} file")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SourceError(f"{field}: {path} holds several GGUF files ({names}); name one file")
    return found[0]


def gguf_tensor_types(gguf: Path) -> tuple[str, ...]:
    """The tensor types of a GGUF file, refusing one this dequantizer cannot read."""
    from gguf import GGUFReader
    from gguf.quants import dequantize  # noqa: F401  # the dequantizer transformers uses

    try:
        reader = GGUFReader(str(gguf))
    except (ValueError, KeyError, OSError) as e:
        raise SourceError(f"model.uri: {gguf.name} is not a readable GGUF file: {e}") from e
    types = sorted({tensor.tensor_type.name for tensor in reader.tensors})
    unreadable = [name for name in types if not _dequantizable(name)]
    if unreadable:
        raise SourceError(
            f"model.uri: {gguf.name} holds tensors quantized as {', '.join(unreadable)}, which the GGUF dequantizer "
            "cannot read (re-export the model with a supported quantization, e.g. Q4_K_M, Q8_0 or F16)"
        )
    return tuple(types)


def _dequantizable(type_name: str) -> bool:
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    if type_name in _PLAIN_TYPES:
        return True
    quant = GGMLQuantizationType[type_name]
    _, type_size = GGML_QUANT_SIZES[quant]
    try:
        dequantize(np.zeros(type_size, dtype=np.uint8), quant)
    except NotImplementedError:
        return False
    return True


def dequantize_gguf(gguf: Path, target: Path) -> Path:
    """Write the GGUF model as an FP32 Hugging Face folder in `target` (weights, config, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise SourceError(f"model.uri: {gguf.name} cannot be dequantized: {e}") from e
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain FP32 now
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict())
    partial = target.with_name(target.name + ".partial")
    model.eval().save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    partial.rename(target)
    return target


def load_generative_source(path: Path, work_dir: Path) -> GenerativeSource:
    gguf = find_gguf(path)
    if gguf is None:
        return GenerativeSource(path, None)
    types = gguf_tensor_types(gguf)
    return GenerativeSource(dequantize_gguf(gguf, work_dir / DEQUANTIZED_DIR), gguf, types)
