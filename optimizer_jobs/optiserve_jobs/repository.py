"""Publish a Triton model repository atomically, with a sha256 manifest.

Everything is written into a staging directory first; the manifest is computed there; then the
repositories are renamed into place and the manifest is renamed last. A reader that finds no
manifest, or a file whose hash differs from it, must not load the repository: readers check it
with `optiserve.artifact.verify_artifact`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from optiserve.api.job import ArtifactRef
from optiserve.api.spec import DType, TensorSpec, TritonBackend, TritonSpec
from optiserve.artifact import MANIFEST as MANIFEST  # re-exported: the published layout
from optiserve.artifact import sha256_file
from optiserve.golden import GOLDEN_FILE, GoldenSample, write_golden
from optiserve.resources.triton_config import ModelIO, build_model_config, render_model_config

READY_REQUEST = "ready_request.json"
GOLDEN_GENERATION = "golden_generation.jsonl"
"""A generative model's golden prompts with the baseline's greedy answers (`generative.publish`)."""
_KSERVE_TYPES = {DType.FLOAT32: "FP32", DType.FLOAT16: "FP16", DType.INT64: "INT64", DType.INT32: "INT32"}
REPOSITORIES = {backend: backend.repository for backend in TritonBackend}
_PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
_ONNX_TO_DTYPE = {1: DType.FLOAT32, 10: DType.FLOAT16, 7: DType.INT64, 6: DType.INT32}


@dataclass(frozen=True)
class PublishSettings:
    name: str
    triton: TritonSpec
    benchmark_batch_sizes: list[int]
    sequence_length: int
    text_inputs: bool


def read_model_io(model_path: Path, text_inputs: bool) -> ModelIO:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
            out.append(TensorSpec(name=value.name, shape=dims, dtype=_ONNX_TO_DTYPE[tensor.elem_type]))
        return out

    inputs = [v for v in graph.input if v.name not in initializers]
    return ModelIO(specs(inputs), specs(list(graph.output)), text_inputs)


def _write_model(repository: Path, backend: TritonBackend, model_path: Path, io: ModelIO, settings: PublishSettings) -> None:
    version_dir = repository / settings.name / "1"
    version_dir.mkdir(parents=True)
    shutil.copyfile(model_path, version_dir / "model.onnx")
    if backend is TritonBackend.PYTHON:
        shutil.copyfile(_PYTHON_MODEL, version_dir / "model.py")
    config = build_model_config(
        settings.name,
        backend,
        io,
        settings.triton,
        benchmark_batch_sizes=settings.benchmark_batch_sizes,
        sequence_length=settings.sequence_length,
    )
    (repository / settings.name / "config.pbtxt").write_text(render_model_config(config))


def ready_request(io: ModelIO, sequence_length: int) -> dict[str, object]:
    """A real inference (KServe v2 JSON, batch 1, zeros) that a readiness probe sends to prove the model is warm."""
    inputs = []
    for spec in io.inputs:
        shape = [1, *(sequence_length if d < 0 else d for d in spec.shape)]
        count = 1
        for dim in shape:
            count *= dim
        inputs.append({"name": spec.name, "shape": shape, "datatype": _KSERVE_TYPES[spec.dtype], "data": [0] * count})
    return {"inputs": inputs}


def file_manifest(root: Path) -> dict[str, dict[str, str | int]]:
    return {
        str(path.relative_to(root)): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def publish(out_dir: Path, model_path: Path, settings: PublishSettings, golden: Sequence[GoldenSample] = ()) -> ArtifactRef:
    """Write both repositories under `out_dir` and return the artifact reference.

    `golden` (validation samples as requests) becomes `golden.jsonl`, covered by the manifest.
    """
    io = read_model_io(model_path, settings.text_inputs)
    staging = out_dir / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for backend, directory in REPOSITORIES.items():
            _write_model(staging / directory, backend, model_path, io, settings)
        (staging / READY_REQUEST).write_text(json.dumps(ready_request(io, settings.sequence_length)))
        if golden:
            write_golden(staging / GOLDEN_FILE, golden)
        manifest_text = json.dumps({"model": settings.name, "files": file_manifest(staging)}, indent=2, sort_keys=True)
        (staging / MANIFEST).write_text(manifest_text)
        (out_dir / MANIFEST).unlink(missing_ok=True)  # the old manifest goes first: no reader trusts a mix
        for directory in REPOSITORIES.values():
            target = out_dir / directory
            if target.exists():
                shutil.rmtree(target)
            (staging / directory).rename(target)
        (staging / READY_REQUEST).replace(out_dir / READY_REQUEST)
        (out_dir / GOLDEN_FILE).unlink(missing_ok=True)
        if golden:
            (staging / GOLDEN_FILE).replace(out_dir / GOLDEN_FILE)
        (staging / MANIFEST).rename(out_dir / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ArtifactRef(
        uri=str(out_dir.resolve() / REPOSITORIES[settings.triton.backend]),
        sha256=hashlib.sha256(manifest_text.encode()).hexdigest(),
        size_bytes=model_path.stat().st_size,
    )


def seal(out_dir: Path, model: str) -> None:
    """Record the files of ``out_dir`` as they are now in a new manifest (written, then renamed).

    Only for a copy its owner verified and then changed on purpose (local mode's candidate with a
    regression injected into its config.pbtxt): the copy is then checked like any published
    repository before it is served, and a later change to it is caught.
    """
    text = json.dumps({"model": model, "files": file_manifest(out_dir)}, indent=2, sort_keys=True)
    staged = out_dir / f".{MANIFEST}.tmp"
    staged.write_text(text)
    staged.replace(out_dir / MANIFEST)


def remove_published(out_dir: Path) -> None:
    """Remove a previous run's repositories, so a failed run leaves none behind."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    (out_dir / READY_REQUEST).unlink(missing_ok=True)
    (out_dir / GOLDEN_FILE).unlink(missing_ok=True)
    (out_dir / GOLDEN_GENERATION).unlink(missing_ok=True)
    for directory in REPOSITORIES.values():
        shutil.rmtree(out_dir / directory, ignore_errors=True)
