"""What the job knows about its source model, without loading any framework yet."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from optiserve.api.spec import DType, ModelFormat, ModelSpec, Task, TensorSpec
from optiserve_jobs.errors import SourceError
from optiserve_jobs.sources import resolve_uri

BERT_LIKE_TYPES = frozenset({"bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet", "camembert"})
_ONNX_DTYPES = {1: DType.FLOAT32, 10: DType.FLOAT16, 7: DType.INT64, 6: DType.INT32}


@dataclass(frozen=True)
class TransformerShape:
    model_type: str
    num_heads: int
    hidden_size: int


@dataclass(frozen=True)
class SourceModel:
    spec: ModelSpec
    path: Path
    inputs: list[TensorSpec]
    outputs: list[str]
    tokenizer_dir: Path | None
    transformer: TransformerShape | None

    @property
    def format(self) -> ModelFormat:
        return self.spec.format

    @property
    def is_text(self) -> bool:
        return self.tokenizer_dir is not None

    @property
    def baseline_runtime(self) -> str:
        """The runtime the source runs on as given: PyTorch eager, or ONNX Runtime for ONNX."""
        return "onnxruntime" if self.format is ModelFormat.ONNX else "pytorch"


def default_output_names(spec: ModelSpec) -> list[str]:
    if spec.outputs:
        return list(spec.outputs)
    return {Task.EMBEDDING: ["embedding"], Task.CLASSIFICATION: ["logits"]}.get(spec.task, ["output"])


def _transformer_shape(model_dir: Path) -> TransformerShape | None:
    config_path = model_dir / "config.json"
    if not config_path.exists():
        return None
    config = json.loads(config_path.read_text())
    model_type = str(config.get("model_type", ""))
    if model_type not in BERT_LIKE_TYPES:
        return None
    return TransformerShape(model_type, int(config["num_attention_heads"]), int(config["hidden_size"]))


def _text_inputs(tokenizer_dir: Path) -> list[TensorSpec]:
    from transformers import AutoTokenizer  # heavy; only for text models

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return [TensorSpec(name=n, shape=[-1], dtype=DType.INT64) for n in tokenizer.model_input_names]


def _onnx_io(path: Path) -> tuple[list[TensorSpec], list[str]]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for corrupt files
        raise SourceError(f"{path.name}: not a readable ONNX model: {e}") from e
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise SourceError(f"{path.name}: input '{value.name}' has an unsupported element type {tensor_type.elem_type}")
        inputs.append(TensorSpec(name=value.name, shape=dims[1:], dtype=dtype))
    return inputs, [o.name for o in model.graph.output]


def load_source_model(spec: ModelSpec, *, base_dir: Path | None, download_dir: Path) -> SourceModel:
    path = resolve_uri(spec.uri, base_dir=base_dir, download_dir=download_dir)
    tokenizer_dir = None
    if spec.tokenizer_uri:
        tokenizer_dir = resolve_uri(spec.tokenizer_uri, base_dir=base_dir, download_dir=download_dir)
    if spec.format is ModelFormat.HUGGINGFACE:
        if not (path / "config.json").is_file():
            raise SourceError(f"{spec.uri}: not a Hugging Face model directory (no config.json)")
        tokenizer_dir = path if (path / "tokenizer_config.json").exists() else tokenizer_dir
        inputs = _text_inputs(path) if tokenizer_dir else list(spec.inputs)
        if not inputs:
            raise SourceError(f"{spec.uri}: no tokenizer in the directory and no inputs in the spec")
        return SourceModel(spec, path, inputs, default_output_names(spec), tokenizer_dir, _transformer_shape(path))
    if spec.format is ModelFormat.ONNX:
        inputs, outputs = _onnx_io(path)
        declared = {i.name for i in spec.inputs}
        actual = {i.name for i in inputs}
        if declared and declared != actual:
            raise SourceError(f"model.inputs: names {sorted(declared)} do not match the ONNX model's inputs {sorted(actual)}")
        transformer = _transformer_shape(tokenizer_dir) if tokenizer_dir else None
        return SourceModel(spec, path, inputs, outputs, tokenizer_dir, transformer)
    if path.is_dir():
        raise SourceError(f"{spec.uri}: expected a file for format {spec.format.value}, found a directory")
    return SourceModel(spec, path, list(spec.inputs), default_output_names(spec), tokenizer_dir, None)
