"""Publish a text-generation model: decoder, tokenizer, generation config and golden answers.

The layout a server for generative models loads (`model_repository_python/<name>/1/`): the
decoder (model.onnx and its external weights), genai_config.json (the KV cache's shape), the
tokenizer files, generation_config.json (greedy, the token budget, the end tokens), and beside
the repository `golden_generation.jsonl`: each golden prompt with the baseline's greedy answer,
token for token, which the canary's comparator replays against a serving variant. Staged, then
renamed into place with the manifest last, like every published repository.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

from optiserve.api.generation import GenerationValidation
from optiserve.api.job import ArtifactRef
from optiserve.api.spec import TritonBackend
from optiserve_jobs.generative.decoder import DecoderShape
from optiserve_jobs.generative.evaluation import GreedyAgreement
from optiserve_jobs.repository import GOLDEN_GENERATION, MANIFEST, file_manifest

REPOSITORY = TritonBackend.PYTHON.repository
GENERATION_CONFIG = "generation_config.json"


def generation_config(spec: GenerationValidation, shape: DecoderShape) -> dict[str, object]:
    return {
        "do_sample": False,
        "max_new_tokens": spec.max_new_tokens,
        "eos_token_id": list(shape.eos_token_ids),
        "context_length": shape.context_length,
        "chat_template": spec.chat_template,
    }


def _golden_lines(greedy: GreedyAgreement | None) -> list[str]:
    if greedy is None:
        return []
    return [
        json.dumps({"prompt": a.prompt, "baseline_tokens": a.baseline_tokens, "baseline_text": a.baseline_text})
        for a in greedy.answers
    ]


def publish_generative(
    out_dir: Path, name: str, model: Path, spec: GenerationValidation, greedy: GreedyAgreement | None
) -> ArtifactRef:
    staging = out_dir / f".staging-{uuid.uuid4().hex[:8]}"
    version = staging / REPOSITORY / name / "1"
    version.mkdir(parents=True)
    try:
        for item in model.parent.iterdir():
            if item.is_file():
                shutil.copyfile(item, version / item.name)
        shape = DecoderShape.read(model.parent)
        (version / GENERATION_CONFIG).write_text(json.dumps(generation_config(spec, shape), indent=2))
        lines = _golden_lines(greedy)
        if lines:
            (staging / GOLDEN_GENERATION).write_text("\n".join(lines) + "\n")
        text = json.dumps({"model": name, "files": file_manifest(staging)}, indent=2, sort_keys=True)
        (staging / MANIFEST).write_text(text)
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(p.stat().st_size for p in model.parent.glob(model.name + "*"))
    return ArtifactRef(uri=str(out_dir.resolve() / REPOSITORY), sha256=hashlib.sha256(text.encode()).hexdigest(), size_bytes=size)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the old manifest goes first: no reader trusts a mix
    target = out_dir / REPOSITORY
    if target.exists():
        shutil.rmtree(target)
    (staging / REPOSITORY).rename(target)
    (out_dir / GOLDEN_GENERATION).unlink(missing_ok=True)
    if (staging / GOLDEN_GENERATION).exists():
        (staging / GOLDEN_GENERATION).replace(out_dir / GOLDEN_GENERATION)
    (staging / MANIFEST).rename(out_dir / MANIFEST)
