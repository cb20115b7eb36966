"""The export pass for text-generation models: the decoder with its KV cache, checked against the source.

The check feeds the same validation tokens to the exported decoder and to the source on PyTorch:
once in one pass (prefill), and once split in two with the cache carried across, so a wrong
cache wiring fails the check, not only a wrong layer.
"""

from __future__ import annotations

import numpy as np

from optiserve.api.spec import ExportPass
from optiserve_jobs.errors import PassError
from optiserve_jobs.generative.builder import build_decoder
from optiserve_jobs.generative.decoder import OrtDecoder
from optiserve_jobs.generative.torch_decoder import TorchDecoder
from optiserve_jobs.passes.base import PassContext, PassOutcome

CHECK_TOKENS = 64


def check_tokens(context: PassContext) -> np.ndarray:
    ids = context.sample.inputs.get("input_ids")
    if ids is None or ids.size == 0:
        raise PassError("export: no validation tokens to check the decoder against the source")
    return np.asarray(ids[0][:CHECK_TOKENS], dtype=np.int64)


def export_decoder(config: ExportPass, context: PassContext, index: int) -> PassOutcome:
    out_dir = context.work_dir / f"{index:02d}-export"
    log_dir = context.log_dir or context.work_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    context.progress("exporting the decoder with its KV cache (onnxruntime-genai model builder)")
    model = build_decoder(context.source.path, out_dir, log_path=log_dir / f"{index:02d}-export.log")
    tokens = check_tokens(context)
    source = TorchDecoder(context.source.path, context.threads)
    exported = OrtDecoder(model, context.threads)
    expected = source.logits(tokens)
    error = max(_max_error(expected, exported.logits(tokens)), _max_error(expected, _split_run(exported, tokens)))
    scale = float(np.abs(expected).max())
    facts: dict[str, float | int | str] = {"max_abs_error": round(error, 6), "logit_scale": round(scale, 3)}
    allowed = config.atol + config.rtol * scale
    if error > allowed:
        return PassOutcome.failed(
            f"exported decoder's logits differ from the source by {error:.3g} (allowed atol {config.atol:g} + "
            f"rtol {config.rtol:g} x {scale:.3g}) over {len(tokens)} validation tokens",
            **facts,
        )
    size = sum(p.stat().st_size for p in out_dir.glob("model.onnx*"))
    detail = f"decoder with KV cache, {exported.shape.layers} layers; logits within {error:.2g} of the source"
    return PassOutcome.ok(model, detail, bytes=size, **facts)


def _split_run(decoder: OrtDecoder, tokens: np.ndarray) -> np.ndarray:
    half = len(tokens) // 2
    first, cache = decoder.forward(tokens[None, :half], decoder.empty_cache(1))
    second, _ = decoder.forward(tokens[None, half:], cache)
    return np.concatenate([first[0], second[0]])


def _max_error(expected: np.ndarray, found: np.ndarray) -> float:
    return float(np.abs(expected - found).max())
