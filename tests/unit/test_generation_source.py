"""Where a text-generation source is found, and GGUF files the dequantizer cannot read are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optiserve_jobs.errors import SourceError
from optiserve_jobs.generative.source import find_gguf, gguf_tensor_types
from tests.support.tiny_llm import smollm_gguf


def _gguf(path: Path, quantization: str) -> Path:
    """A one-tensor GGUF file whose tensor is stored as `quantization` (raw bytes of the right size)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    quant = GGMLQuantizationType[quantization]
    _, type_size = GGML_QUANT_SIZES[quant]
    writer = GGUFWriter(str(path), "llama")
    data = np.zeros((1, type_size), dtype=np.uint8)
    writer.add_tensor("token_embd.weight", data, raw_shape=(1, type_size), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_hugging_face_folder_needs_no_gguf(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "other.gguf").write_bytes(b"")
    assert find_gguf(tmp_path) is None


def test_the_one_gguf_file_in_a_folder_is_found(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"")
    assert find_gguf(tmp_path) == tmp_path / "m.gguf"
    assert find_gguf(tmp_path / "m.gguf") == tmp_path / "m.gguf"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["a.gguf", "b.gguf"], "model.uri: .* holds several GGUF files \\(a.gguf, b.gguf\\); name one file"),
        (["notes.txt"], "model.uri: .* holds neither a Hugging Face model \\(config.json\\) nor a .gguf file"),
    ],
)
def test_folders_without_one_model_are_refused(tmp_path: Path, files: list[str], expected: str) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(SourceError, match=expected):
        find_gguf(tmp_path)


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"model\.uri: model\.bin is neither a Hugging Face folder nor a .gguf file"):
        find_gguf(tmp_path / "model.bin")


def test_a_gguf_quantization_the_dequantizer_cannot_read_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="quantized as Q8_1, which the GGUF dequantizer cannot read"):
        gguf_tensor_types(_gguf(tmp_path / "q81.gguf", "Q8_1"))


def test_a_readable_quantization_passes(tmp_path: Path) -> None:
    assert gguf_tensor_types(_gguf(tmp_path / "q40.gguf", "Q4_0")) == ("Q4_0",)


def test_a_corrupt_gguf_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(SourceError, match=r"bad\.gguf is not a readable GGUF file"):
        gguf_tensor_types(tmp_path / "bad.gguf")


def test_the_shipped_smollm_file_is_readable() -> None:
    assert gguf_tensor_types(smollm_gguf()) == ("F32", "Q4_1", "Q8_0")
