"""The weightonly pass quantizes a decoder's MatMul weights to MatMulNBits and keeps the decoder servable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from optiserve.api.calibration import Calibration
from optiserve.api.generation import WeightOnlyAlgorithm, WeightOnlyPass
from optiserve.api.spec import ModelSpec
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.errors import PassError
from optiserve_jobs.generative.decoder import OrtDecoder
from optiserve_jobs.generative.quality import log_softmax
from optiserve_jobs.passes import base as passes_base
from optiserve_jobs.passes import build_pass, weight_only
from optiserve_jobs.passes.base import PassContext, PassOutcome, PassStatus
from optiserve_jobs.passes.weight_only import WeightOnly, accuracy_level_problem
from optiserve_jobs.source_model import SourceModel
from tests.support.tiny_llm import tiny_decoder_onnx

LM_HEAD = "/lm_head/MatMul"
DOWN_PROJ_1 = "/model/layers.1/mlp/down_proj/MatMul"
QKV_0 = "/model/layers.0/attn/qkv_proj/MatMul"
MATMULS = 11
"""The tiny decoder's MatMuls with constant weights: 5 per layer (qkv, o, gate, up, down) and the LM head."""

CALIBRATION = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a very small language model.",
    "Weights are quantized in blocks that share one scale.",
    "A scheduler places pods onto the nodes of a cluster.",
    "",
    "The cache holds the keys and values of every past token.",
    "Calibration text is never the validation text.",
]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny decoder (model.onnx + model.onnx.data + genai_config.json + tokenizer), built once."""
    return tiny_decoder_onnx(tmp_path_factory.mktemp("tiny-decoder"))


@pytest.fixture(scope="module")
def tokens(decoder: Path) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(decoder.parent), local_files_only=True)
    ids = tokenizer("Quantized weights should predict the same next tokens as the float ones do.")["input_ids"]
    return np.asarray(ids, np.int64)


@pytest.fixture(scope="module")
def reference_logits(decoder: Path, tokens: np.ndarray) -> np.ndarray:
    return OrtDecoder(decoder, threads=2).logits(tokens)


def _context(decoder: Path, tmp_path: Path) -> PassContext:
    spec = ModelSpec.model_validate({"uri": str(decoder), "format": "onnx", "task": "text-generation"})
    source = SourceModel(spec, decoder, [], ["logits"], decoder.parent, None)
    (tmp_path / "calibration.txt").write_text("\n".join(CALIBRATION) + "\n")

    def no_datasets(uri: str, limit: int) -> Dataset:
        raise AssertionError(f"weightonly reads its calibration text itself, not through load_dataset ({uri})")

    empty = Dataset({"input_ids": np.zeros((0, 1), np.int64)}, None)
    return PassContext(tmp_path / "work", source, tmp_path, 2, empty, no_datasets)


@pytest.fixture
def run(decoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., PassOutcome]:
    """Run the pass (built through the registry) on the tiny decoder with the given spec fields, as pass 1."""
    monkeypatch.setattr(weight_only, "cpu_flags", lambda: frozenset({"avx2"}))  # any CPU the tests run on

    def go(**fields: Any) -> PassOutcome:
        config = WeightOnlyPass.model_validate({"type": "weightonly", **fields})
        outcome = build_pass(config).run(decoder, _context(decoder, tmp_path), 1)
        assert outcome.status is PassStatus.OK, outcome.detail
        assert outcome.output == tmp_path / "work" / "01-weightonly" / "model.onnx"
        return outcome

    return go


def _nbits(outcome: PassOutcome) -> dict[str, dict[str, int]]:
    """MatMulNBits attributes by the name of the MatMul each replaced."""
    assert outcome.output is not None
    graph = onnx.load(str(outcome.output), load_external_data=False).graph
    found = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            original = node.name.rsplit("_Q", 1)[0]
            found[original] = {a.name: int(onnx.helper.get_attribute_value(a)) for a in node.attribute}
    return found


def _float_matmuls(outcome: PassOutcome) -> set[str]:
    assert outcome.output is not None
    graph = onnx.load(str(outcome.output), load_external_data=False).graph
    return {node.name for node in graph.node if node.op_type == "MatMul"}


def _divergence(outcome: PassOutcome, tokens: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean KL(reference || quantized) of the next-token distributions, and the logits' relative error.

    The tiny model's random weights make its distributions nearly flat, so KL alone barely tells a
    good model from a broken one; the relative error of the centred logits does.
    """
    assert outcome.output is not None
    logits = OrtDecoder(outcome.output, threads=2).logits(tokens)
    p, q = log_softmax(reference), log_softmax(logits)
    kl = float((np.exp(p) * (p - q)).sum(axis=-1).mean())
    centred = reference - reference.mean(axis=-1, keepdims=True)
    return kl, float(np.linalg.norm(logits - reference) / np.linalg.norm(centred))


def test_int8_rtn_quantizes_every_matmul_but_the_excluded_and_keeps_the_logits(
    run: Callable[..., PassOutcome], tokens: np.ndarray, reference_logits: np.ndarray
) -> None:
    outcome = run(bits=8, excludeNodes=[QKV_0])

    quantized = _nbits(outcome)
    assert len(quantized) == MATMULS - 1
    assert QKV_0 not in quantized and QKV_0 in _float_matmuls(outcome)
    assert {attrs["bits"] for attrs in quantized.values()} == {8}
    assert {attrs["block_size"] for attrs in quantized.values()} == {32}
    assert {attrs["accuracy_level"] for attrs in quantized.values()} == {4}
    kl, error = _divergence(outcome, tokens, reference_logits)
    assert kl < 0.01
    assert error < 0.05
    assert outcome.facts["quantized_matmuls"] == MATMULS - 1
    assert outcome.facts["float_matmuls"] == 1
    assert outcome.output is not None
    names = {path.name for path in outcome.output.parent.iterdir()}
    assert {"genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= names
    assert "model.onnx.data" not in names  # small enough to save inline; the float weights are not copied


def test_int4_rtn_keeps_the_named_nodes_at_8_bits(
    run: Callable[..., PassOutcome],
    tokens: np.ndarray,
    reference_logits: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(passes_base, "EXTERNAL_DATA_THRESHOLD", 0)  # save as a large model would be saved
    outcome = run(bits=4, keepInt8=[LM_HEAD], blockSize=64, accuracyLevel=1)

    quantized = _nbits(outcome)
    assert len(quantized) == MATMULS
    assert quantized.pop(LM_HEAD)["bits"] == 8
    assert {attrs["bits"] for attrs in quantized.values()} == {4}
    assert {attrs["block_size"] for attrs in quantized.values()} == {64}
    assert {attrs["accuracy_level"] for attrs in quantized.values()} == {1}
    assert (outcome.facts["int8_matmuls"], outcome.facts["int4_matmuls"]) == (1, MATMULS - 1)
    assert outcome.output is not None and outcome.output.with_name("model.onnx.data").is_file()
    _, error = _divergence(outcome, tokens, reference_logits)
    assert error < 0.3


@pytest.mark.parametrize("bits", [4, 8])
def test_kquant_quantizes_at_the_bits_asked_and_quietly(
    bits: int,
    run: Callable[..., PassOutcome],
    tokens: np.ndarray,
    reference_logits: np.ndarray,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    outcome = run(bits=bits, algorithm="kquant", excludeNodes=[DOWN_PROJ_1])

    quantized = _nbits(outcome)
    assert len(quantized) == MATMULS - 1
    assert DOWN_PROJ_1 in _float_matmuls(outcome)
    assert {attrs["bits"] for attrs in quantized.values()} == {bits}
    _, error = _divergence(outcome, tokens, reference_logits)
    assert error < (0.05 if bits == 8 else 0.3)
    chatter = [r.getMessage() for r in caplog.records if r.name in weight_only.QUANTIZER_LOGGERS]
    assert chatter == []  # the quantizer logs each node at INFO
    assert "Progress:" not in capsys.readouterr().out  # and draws a progress bar on stdout


@pytest.mark.parametrize("large", [False, True], ids=["in-memory", "over-2GB-route"])
def test_gptq_calibrates_on_text_and_honours_exclusions(
    large: bool,
    run: Callable[..., PassOutcome],
    decoder: Path,
    tokens: np.ndarray,
    reference_logits: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if large:  # take the route a model over 2 GB takes, on the tiny one
        from onnxruntime.quantization.neural_compressor import onnx_model

        monkeypatch.setattr(weight_only, "GPTQ_IN_MEMORY_LIMIT", 0)
        monkeypatch.setattr(onnx_model, "MAXIMUM_PROTOBUF", 0)
    before = sorted(path.name for path in decoder.parent.iterdir())

    outcome = run(
        bits=4,
        algorithm="gptq",
        calibration={"datasetUri": "calibration.txt", "samples": 4},
        excludeNodes=[LM_HEAD],  # the library's GPTQ ignores exclusions by itself
        keepInt8=[DOWN_PROJ_1],
    )

    quantized = _nbits(outcome)
    assert LM_HEAD not in quantized and LM_HEAD in _float_matmuls(outcome)
    assert quantized.pop(DOWN_PROJ_1)["bits"] == 8
    assert len(quantized) == MATMULS - 2
    assert {attrs["bits"] for attrs in quantized.values()} == {4}
    assert "calibrated on 4 texts" in outcome.detail
    _, error = _divergence(outcome, tokens, reference_logits)
    assert error < 0.3
    assert sorted(path.name for path in decoder.parent.iterdir()) == before  # nothing written beside the input


def test_gptq_at_8_bits_is_refused(decoder: Path, tmp_path: Path) -> None:
    """The spec refuses it (tests/unit/test_generation_spec.py); the pass refuses it too, for a
    configuration built without the spec's validation."""
    calibration = Calibration(dataset_uri="calibration.txt")
    config = WeightOnlyPass.model_construct(
        type="weightonly", bits=8, algorithm=WeightOnlyAlgorithm.GPTQ, calibration=calibration
    )
    with pytest.raises(PassError, match=r"^optimization\.passes\[2\]\.bits: gptq quantizes to 4 bits only"):
        WeightOnly(config).run(decoder, _context(decoder, tmp_path), 2)


def test_an_unknown_keep_int8_node_is_refused_with_the_real_names(decoder: Path, tmp_path: Path) -> None:
    config = WeightOnlyPass.model_validate({"type": "weightonly", "bits": 4, "keepInt8": ["/lm_head/MatMul_typo"]})
    with pytest.raises(PassError) as refused:
        WeightOnly(config).run(decoder, _context(decoder, tmp_path), 3)
    message = str(refused.value)
    assert message.startswith("optimization.passes[3].keepInt8: no MatMul named /lm_head/MatMul_typo in the model")
    assert QKV_0 in message and LM_HEAD in message
    assert not (tmp_path / "work" / "03-weightonly").exists()


def test_an_unknown_excluded_node_is_refused(decoder: Path, tmp_path: Path) -> None:
    config = WeightOnlyPass.model_validate({"type": "weightonly", "excludeNodes": ["/model/layers.9/attn/qkv_proj/MatMul"]})
    with pytest.raises(PassError, match=r"^optimization\.passes\[0\]\.excludeNodes: no MatMul named /model/layers\.9/"):
        WeightOnly(config).run(decoder, _context(decoder, tmp_path), 0)


@pytest.mark.parametrize(
    ("level", "flags", "needed"),
    [
        (2, {"avx", "avx2", "avx512f"}, "AVX512-FP16"),
        (3, {"avx", "avx2", "avx512f", "avx512_vnni"}, "AVX512-BF16 or AMX-BF16"),
        (4, {"sse4_2", "avx"}, "AVX2"),
    ],
)
def test_an_accuracy_level_the_cpu_lacks_is_refused(
    level: int, flags: set[str], needed: str, decoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weight_only, "cpu_flags", lambda: frozenset(flags))
    config = WeightOnlyPass.model_validate({"type": "weightonly", "accuracyLevel": level})
    with pytest.raises(PassError) as refused:
        WeightOnly(config).run(decoder, _context(decoder, tmp_path), 1)
    message = str(refused.value)
    assert message.startswith(f"optimization.passes[1].accuracyLevel {level} (")
    assert f"this CPU has no {needed}" in message


def test_accuracy_levels_the_cpu_has_or_that_need_nothing_pass_the_check() -> None:
    from optiserve.api.generation import AccuracyLevel

    assert accuracy_level_problem(AccuracyLevel.FP16, frozenset({"avx2", "avx512_fp16"})) is None
    assert accuracy_level_problem(AccuracyLevel.BF16, frozenset({"amx_bf16"})) is None
    assert accuracy_level_problem(AccuracyLevel.INT8, frozenset({"avx2"})) is None
    assert accuracy_level_problem(AccuracyLevel.FP32, frozenset()) is None
    assert accuracy_level_problem(AccuracyLevel.UNSET, frozenset()) is None
    assert accuracy_level_problem(AccuracyLevel.FP16, None) is None  # flags unknown: the runtime decides
    assert accuracy_level_problem(AccuracyLevel.INT8, frozenset({"avx"})) is not None


def test_the_cpu_flags_are_read_from_cpuinfo() -> None:
    flags = weight_only.cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert flags is not None and ("fpu" in flags or "fp" in flags)  # x86 / Arm names for the FPU
    else:
        assert flags is None


def test_a_model_without_decoder_config_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "plain" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"")
    config = WeightOnlyPass.model_validate({"type": "weightonly"})
    with pytest.raises(PassError, match=r"^optimization\.passes\[0\]: model\.onnx has no genai_config\.json beside it"):
        WeightOnly(config).run(model, _context(model, tmp_path), 0)
