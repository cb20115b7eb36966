"""config.pbtxt is built through Triton's schema; golden files pin what Triton will read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from optiserve.api.spec import DType, TensorSpec, TritonBackend, TritonSpec
from optiserve.resources.triton_config import ModelIO, build_model_config, parse_model_config, render_model_config

GOLDEN = Path(__file__).parent / "golden"
TEXT_IO = ModelIO(
    inputs=[TensorSpec(name=n, shape=[-1], dtype=DType.INT64) for n in ("input_ids", "token_type_ids", "attention_mask")],
    outputs=[TensorSpec(name="embedding", shape=[384], dtype=DType.FLOAT32)],
    text_inputs=True,
)
TRITON = TritonSpec.model_validate(
    {
        "maxBatchSize": 32,
        "dynamicBatching": {"preferredBatchSizes": [8, 16], "maxQueueDelayMicroseconds": 2000},
        "instanceGroup": {"kind": "KIND_CPU", "count": 2},
        "intraOpThreads": 2,
    }
)


def _render(backend: TritonBackend, triton: TritonSpec = TRITON) -> str:
    config = build_model_config("minilm", backend, TEXT_IO, triton, benchmark_batch_sizes=[1, 8], sequence_length=128)
    return render_model_config(config)


@pytest.mark.parametrize("backend", list(TritonBackend), ids=lambda b: b.value)
def test_golden(backend: TritonBackend) -> None:
    golden = GOLDEN / f"minilm_{backend.value}.pbtxt"
    rendered = _render(backend)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_round_trip_through_triton_schema() -> None:
    config = parse_model_config(_render(TritonBackend.PYTHON))
    assert config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.instance_group[0].count == 2
    assert [w.batch_size for w in config.model_warmup] == [1, 8, 16]
    assert list(config.model_warmup[0].inputs["input_ids"].dims) == [128]
    assert config.parameters["pad_inputs"].string_value == "input_ids,token_type_ids,attention_mask"


def test_dynamic_batching_off_and_response_cache() -> None:
    triton = TritonSpec.model_validate({"dynamicBatching": None, "responseCache": True})
    config = parse_model_config(_render(TritonBackend.ONNXRUNTIME, triton))
    assert not config.HasField("dynamic_batching")
    assert config.response_cache.enable
    assert config.default_model_filename == "model.onnx"


def test_preferred_sizes_never_exceed_max_batch() -> None:
    triton = TritonSpec.model_validate({"maxBatchSize": 8, "dynamicBatching": {"preferredBatchSizes": [4, 8, 64]}})
    config = parse_model_config(_render(TritonBackend.PYTHON, triton))
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]


def test_spin_setting_reaches_the_python_model_and_is_left_out_by_default() -> None:
    spinning = TritonSpec.model_validate({"backend": "python", "intraOpThreads": 2, "intraOpSpinMicroseconds": 200})
    config = parse_model_config(_render(TritonBackend.PYTHON, spinning))
    assert config.parameters["intra_op_spin_us"].string_value == "200"
    default = parse_model_config(_render(TritonBackend.PYTHON))
    assert "intra_op_spin_us" not in default.parameters


@pytest.mark.parametrize("value", [-2, 100_001])
def test_spin_setting_out_of_range_names_the_field(value: int) -> None:
    with pytest.raises(ValueError, match="intraOpSpinMicroseconds"):
        TritonSpec.model_validate({"backend": "python", "intraOpSpinMicroseconds": value})


def test_spin_setting_is_refused_for_the_onnxruntime_backend() -> None:
    with pytest.raises(ValueError, match="intraOpSpinMicroseconds: only the python backend"):
        TritonSpec.model_validate({"backend": "onnxruntime", "intraOpSpinMicroseconds": 200})
