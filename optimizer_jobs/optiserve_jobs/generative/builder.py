"""The decoder export: onnxruntime-genai's model builder, run offline on a Hugging Face folder.

Why the builder and not torch.onnx: it writes the decoder the way ONNX Runtime runs it fastest on
CPU (GroupQueryAttention with the KV cache as explicit inputs and outputs, rotary embeddings and
RMSNorm fused into contrib ops, Q/K/V in one MatMul), offline, in seconds; a torch.onnx export with
past key values leaves attention unfused and its dynamic cache shapes are fragile across
transformers versions. It runs in its own process: it holds the FP32 weights twice (about 2 GB for
a 135M-parameter model) and gives that memory back when it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from optiserve_jobs.errors import PassError

BUILDER_MODULE = "onnxruntime_genai.models.builder"
SUPPORTED_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "GraniteForCausalLM",
        "OlmoForCausalLM",
    }
)
"""Decoder families the builder exports (its own list is longer; these are the ones whose graph this
project's decoder loop and weight-only pass handle: a KV cache per layer and MatMul projections)."""
BUILD_TIMEOUT_SECONDS = 1800


def architecture(hf_dir: Path) -> str:
    config = json.loads((hf_dir / "config.json").read_text())
    names = config.get("architectures") or [str(config.get("model_type", "unknown"))]
    return str(names[0])


def check_supported(hf_dir: Path) -> None:
    found = architecture(hf_dir)
    if found not in SUPPORTED_ARCHITECTURES:
        raise PassError(
            f"model.uri: model family {found} is not supported by the decoder export "
            f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
        )


def build_decoder(hf_dir: Path, out_dir: Path, *, log_path: Path) -> Path:
    """Export `hf_dir` to `out_dir/model.onnx` (FP32, CPU) with genai_config.json and the tokenizer."""
    check_supported(hf_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir.parent / f".{out_dir.name}-builder-cache"
    command = [sys.executable, "-m", BUILDER_MODULE, "-i", str(hf_dir), "-o", str(out_dir), "-e", "cpu", "-p", "fp32"]
    command += ["-c", str(cache)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log_path.open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT_SECONDS, check=False)
    model = out_dir / "model.onnx"
    if done.returncode != 0 or not model.is_file():
        tail = log_path.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-3:]
        raise PassError(f"decoder export failed (exit {done.returncode}): {' | '.join(tail)} (log: {log_path.name})")
    return model
