"""The optimization job on causal language models: a tiny Llama end to end through the CLI, the
real SmolLM2 GGUF dequantized and exported, and every refusal naming its problem with nothing
published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optiserve.artifact import MANIFEST
from optiserve_jobs.generative.builder import build_decoder
from optiserve_jobs.generative.decoder import OrtDecoder
from optiserve_jobs.generative.evaluation import greedy
from optiserve_jobs.generative.source import load_generative_source
from tests.support.models import optimize_spec
from tests.support.tiny_llm import smollm_gguf, tiny_llama

ROOT = Path(__file__).resolve().parents[2]
SMOLLM_DATA = ROOT / "examples/smollm/data"
FAST = {"threads": 1, "repeats": 1}
GENERATION = {"contextTokens": 64, "windows": 3, "maxNewTokens": 6}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Validation text, golden prompts and tasks for the tiny model (a prefix of the example's)."""
    root = tmp_path_factory.mktemp("texts")
    (root / "v.txt").write_text("\n".join((SMOLLM_DATA / "validation.txt").read_text().splitlines()[:60]))
    (root / "golden.txt").write_text("What is the capital of France?\nName a color.\n")
    tasks = [{"prompt": "What is the capital of Italy?", "answer": "Rome"}, {"prompt": "2 + 2 =", "answer": "4"}]
    (root / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return root


def _spec(model: Path, texts: Path, passes: list[dict[str, Any]], **generation: Any) -> dict[str, Any]:
    return {
        "model": {"uri": str(model), "format": "huggingface", "task": "text-generation"},
        "optimization": {"passes": passes},
        "validation": {
            "datasetUri": str(texts / "v.txt"),
            "minSpeedup": 0,
            "generation": GENERATION
            | {"goldenPromptsUri": str(texts / "golden.txt"), "tasksUri": str(texts / "tasks.jsonl")}
            | generation,
        },
        "benchmark": FAST,
    }


def test_an_int8_decoder_passes_every_gate_and_is_published(tiny_model: Path, texts: Path, tmp_path: Path) -> None:
    passes: list[dict[str, Any]] = [{"type": "export"}, {"type": "weightonly", "bits": 8}]
    code, report, out = optimize_spec(tmp_path, _spec(tiny_model, texts, passes))
    assert code == 0, report["reason"]
    assert [p["name"] for p in report["passes"]] == ["export", "weightonly"]
    gates = {g["name"]: g for g in report["gates"]}
    assert set(gates) == {"perplexity_ratio", "kl_mean", "top1_agreement", "flips_right_to_wrong"}
    generation = report["generation"]
    assert generation["quality"]["windows"] == 3 and generation["quality"]["tokens"] == 3 * 63
    assert 0 <= generation["quality"]["mean_kl"] <= 0.05
    assert generation["flips"]["tasks"] == 2
    assert [a["prompt"] for a in generation["greedy"]["answers"]] == ["What is the capital of France?", "Name a color."]
    names = [v["name"] for v in generation["benchmark"]["variants"]]
    assert names == ["baseline", "onnx-fp32", "candidate"]
    version = out / "model_repository_python" / "tiny" / "1"
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "generation_config.json"):
        assert (version / name).is_file(), name
    assert json.loads((version / "generation_config.json").read_text())["max_new_tokens"] == 6
    golden = [json.loads(line) for line in (out / "golden_generation.jsonl").read_text().splitlines()]
    assert golden[0]["baseline_tokens"] == generation["greedy"]["answers"][0]["baseline_tokens"]
    files = json.loads((out / MANIFEST).read_text())["files"]
    assert "golden_generation.jsonl" in files and "model_repository_python/tiny/1/model.onnx" in files


def test_a_4_bit_decoder_beyond_the_kl_gate_is_refused_with_figures(tiny_model: Path, texts: Path, tmp_path: Path) -> None:
    passes: list[dict[str, Any]] = [{"type": "export"}, {"type": "weightonly", "bits": 4, "blockSize": 128}]
    code, report, out = optimize_spec(tmp_path, _spec(tiny_model, texts, passes, gates={"maxKl": 0.0, "minTop1": 1.0}))
    assert code == 1
    assert report["reason"].startswith("gate failed: kl_mean = ")
    assert "needs <= 0" in report["reason"]
    assert report["generation"]["quality"]["mean_kl"] > 0
    assert not (out / MANIFEST).exists() and not (out / "model_repository_python").exists()


def test_a_prompt_longer_than_the_context_is_refused(tiny_model: Path, texts: Path, tmp_path: Path) -> None:
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("word " * 1100 + "\n")
    spec = _spec(tiny_model, texts, [{"type": "export"}], goldenPromptsUri=str(long_prompt))
    code, report, out = optimize_spec(tmp_path, spec)
    assert code == 1
    assert report["reason"].startswith("validation.generation.goldenPromptsUri prompt 1: the prompt is ")
    assert "exceeds the model's context of 1024" in report["reason"]
    assert not (out / MANIFEST).exists()


def test_a_model_family_the_export_does_not_support_is_refused(texts: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(str(model))
    code, report, _ = optimize_spec(tmp_path, _spec(model, texts, [{"type": "export"}]))
    assert code == 1
    assert "model family GPT2LMHeadModel is not supported by the decoder export" in report["reason"]


def test_a_folder_with_two_gguf_files_is_refused(texts: Path, tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (folder / name).write_bytes(b"")
    code, report, _ = optimize_spec(tmp_path, _spec(folder, texts, [{"type": "export"}]))
    assert code == 1
    assert "holds several GGUF files (a.gguf, b.gguf); name one file" in report["reason"]


@pytest.mark.slow
def test_the_shipped_smollm_gguf_is_dequantized_exported_and_answers(tmp_path: Path) -> None:
    """The real SmolLM2-135M from its Q4_1 GGUF: dequantized, exported with its KV cache, and the
    decoder loop answers a capital-city question as the source model does."""
    source = load_generative_source(smollm_gguf(), tmp_path)
    assert source.gguf_types == ("F32", "Q4_1", "Q8_0")
    model = build_decoder(source.hf_dir, tmp_path / "onnx", log_path=tmp_path / "builder.log")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.hf_dir), local_files_only=True)
    decoder = OrtDecoder(model, threads=2)
    prompt = np.asarray(tokenizer("The capital of France is")["input_ids"], dtype=np.int64)
    answer = tokenizer.decode(greedy(decoder, prompt, 4, decoder.shape.eos_token_ids))
    assert "Paris" in answer, answer
