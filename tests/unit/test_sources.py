"""URIs and data sets: supported schemes resolve, anything else fails naming the problem."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from optiserve.api.spec import ModelSpec
from optiserve_jobs.datasets import load_dataset
from optiserve_jobs.errors import SourceError
from optiserve_jobs.source_model import load_source_model
from optiserve_jobs.sources import resolve_uri
from tests.support.models import tiny_dataset, tiny_mlp


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_plain_relative_and_file_uris(tmp_path: Path) -> None:
    model = tiny_mlp(tmp_path / "m.onnx")
    assert resolve_uri("m.onnx", base_dir=tmp_path, download_dir=tmp_path) == model
    assert resolve_uri(f"file://{model}", base_dir=None, download_dir=tmp_path) == model


def test_http_download(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, root = http_root
    tiny_mlp(root / "m.onnx")
    got = resolve_uri(f"{url}/m.onnx", base_dir=None, download_dir=tmp_path / "dl")
    assert got.read_bytes() == (root / "m.onnx").read_bytes()
    with pytest.raises(SourceError, match="download failed"):
        resolve_uri(f"{url}/absent.onnx", base_dir=None, download_dir=tmp_path / "dl")


@pytest.mark.parametrize("uri", ["s3://bucket/model.onnx", "pvc://models/m.onnx", "gs://b/m"])
def test_unsupported_scheme_is_named(tmp_path: Path, uri: str) -> None:
    scheme = uri.split(":")[0]
    with pytest.raises(SourceError, match=f"scheme '{scheme}' is not supported"):
        resolve_uri(uri, base_dir=None, download_dir=tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        resolve_uri("absent.onnx", base_dir=tmp_path, download_dir=tmp_path)


def _source(tmp_path: Path) -> object:
    tiny_mlp(tmp_path / "m.onnx")
    spec = ModelSpec.model_validate({"uri": "m.onnx", "format": "onnx"})
    return load_source_model(spec, base_dir=tmp_path, download_dir=tmp_path)


def test_onnx_io_is_read_from_the_model(tmp_path: Path) -> None:
    source = _source(tmp_path)
    assert [(i.name, i.shape) for i in source.inputs] == [("x", [8])]  # type: ignore[attr-defined]
    assert source.outputs == ["y"]  # type: ignore[attr-defined]


def test_corrupt_onnx(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x01garbage that is not a protobuf \xff\xff")
    spec = ModelSpec.model_validate({"uri": "m.onnx", "format": "onnx"})
    with pytest.raises(SourceError, match="not a readable ONNX model"):
        load_source_model(spec, base_dir=tmp_path, download_dir=tmp_path)


def test_declared_input_names_must_match(tmp_path: Path) -> None:
    tiny_mlp(tmp_path / "m.onnx")
    spec = ModelSpec.model_validate({"uri": "m.onnx", "format": "onnx", "inputs": [{"name": "pixels", "shape": [8]}]})
    with pytest.raises(SourceError, match=r"model.inputs: names \['pixels'\] do not match"):
        load_source_model(spec, base_dir=tmp_path, download_dir=tmp_path)


def test_dataset_with_wrong_input_names(tmp_path: Path) -> None:
    source = _source(tmp_path)
    with pytest.raises(SourceError, match=r"arrays \['pixels'\] do not match the model's input names \['x'\]"):
        load_dataset(tiny_dataset(tmp_path / "d.npz", name="pixels"), source, limit=10)  # type: ignore[arg-type]


def test_empty_dataset(tmp_path: Path) -> None:
    source = _source(tmp_path)
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8), dtype=np.float32))
    with pytest.raises(SourceError, match="contains no samples"):
        load_dataset(tmp_path / "empty.npz", source, limit=10)  # type: ignore[arg-type]


def test_text_data_for_a_tensor_model(tmp_path: Path) -> None:
    source = _source(tmp_path)
    (tmp_path / "t.txt").write_text("hello\n")
    with pytest.raises(SourceError, match="text data needs a text model"):
        load_dataset(tmp_path / "t.txt", source, limit=10)  # type: ignore[arg-type]


def test_dataset_limit_and_labels(tmp_path: Path) -> None:
    source = _source(tmp_path)
    data = load_dataset(tiny_dataset(tmp_path / "d.npz", labels=True), source, limit=10)  # type: ignore[arg-type]
    assert len(data) == 10 and data.labels is not None and len(data.labels) == 10
    assert data.repeat_to(25)["x"].shape == (25, 8)
