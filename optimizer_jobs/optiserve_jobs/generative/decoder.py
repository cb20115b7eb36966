"""A causal language model on ONNX Runtime with an explicit KV cache: prefill, decode, score.

The exported decoder (onnxruntime-genai's model builder) takes `input_ids`, `attention_mask` and
`past_key_values.N.key/value`, and returns `logits` and `present.N.key/value`; positions come from
the attention mask inside the graph. This module runs it directly, without onnxruntime-genai's
generator, so the same loop serves validation, the benchmark and the served model, and every
step's time is ours to measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DECODER_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class DecoderShape:
    """What the KV cache looks like, read from the builder's genai_config.json beside the model."""

    layers: int
    kv_heads: int
    head_size: int
    vocab_size: int
    context_length: int
    eos_token_ids: tuple[int, ...]

    @classmethod
    def read(cls, model_dir: Path) -> DecoderShape:
        config = json.loads((model_dir / DECODER_CONFIG).read_text())["model"]
        decoder = config["decoder"]
        eos = config.get("eos_token_id", [])
        return cls(
            layers=int(decoder["num_hidden_layers"]),
            kv_heads=int(decoder["num_key_value_heads"]),
            head_size=int(decoder["head_size"]),
            vocab_size=int(config["vocab_size"]),
            context_length=int(config["context_length"]),
            eos_token_ids=tuple(int(e) for e in (eos if isinstance(eos, list) else [eos])),
        )


@dataclass
class KVCache:
    """The past keys and values of a batch of sequences, and their attention mask."""

    tensors: dict[str, np.ndarray]
    mask: np.ndarray

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])


class OrtDecoder:
    """One ONNX decoder session. Not thread-safe: one caller at a time, as ONNX Runtime runs it."""

    def __init__(self, model_path: Path, threads: int) -> None:
        import onnxruntime as ort

        self.path = model_path
        self.shape = DecoderShape.read(model_path.parent)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self._present_names = [o.name for o in self.session.get_outputs() if o.name.startswith("present.")]

    def empty_cache(self, batch: int) -> KVCache:
        shape = (batch, self.shape.kv_heads, 0, self.shape.head_size)
        return KVCache({name: np.zeros(shape, np.float32) for name in self._past_names}, np.zeros((batch, 0), np.int64))

    def forward(self, input_ids: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """Run `input_ids` [batch, new] after what `cache` holds: logits [batch, new, vocab] and the longer cache."""
        mask = np.concatenate([cache.mask, np.ones(input_ids.shape, np.int64)], axis=1)
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": mask, **cache.tensors}
        outputs = self.session.run(["logits", *self._present_names], feeds)
        presents = {_past_name(name): value for name, value in zip(self._present_names, outputs[1:], strict=True)}
        return outputs[0], KVCache(presents, mask)

    def logits(self, token_ids: np.ndarray) -> np.ndarray:
        """Teacher-forced logits of one sequence [tokens] in one pass: [tokens, vocab]."""
        logits, _ = self.forward(token_ids[None, :], self.empty_cache(1))
        return np.asarray(logits[0])


def _past_name(present: str) -> str:
    """`present.3.key` -> `past_key_values.3.key`: the input a layer's output feeds next step."""
    return "past_key_values." + present.removeprefix("present.")
