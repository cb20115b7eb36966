"""The source model as given: a Hugging Face causal LM on PyTorch eager, with its KV cache.

The same three calls as `OrtDecoder` (`empty_cache`, `forward`, `logits`), so the gates and the
benchmark treat the baseline and every ONNX variant alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TorchCache:
    past: Any
    """transformers' cache object (None before the first step)."""
    length: int
    batch: int


class TorchDecoder:
    def __init__(self, hf_dir: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self._torch = torch
        self.path = hf_dir
        self.model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True).eval()  # type: ignore[no-untyped-call]

    def empty_cache(self, batch: int) -> TorchCache:
        return TorchCache(None, 0, batch)

    def forward(self, input_ids: np.ndarray, cache: TorchCache) -> tuple[np.ndarray, TorchCache]:
        torch = self._torch
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        mask = torch.ones((ids.shape[0], cache.length + ids.shape[1]), dtype=torch.long)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache.past, use_cache=True)
        return out.logits.float().numpy(), TorchCache(out.past_key_values, cache.length + ids.shape[1], cache.batch)

    def logits(self, token_ids: np.ndarray) -> np.ndarray:
        logits, _ = self.forward(token_ids[None, :], self.empty_cache(1))
        return np.asarray(logits[0])
