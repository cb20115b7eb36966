"""Triton `config.pbtxt`, built through Triton's own protobuf schema and rendered as protobuf text."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from optiserve.api.spec import DType, InstanceKind, TensorSpec, TritonBackend, TritonSpec

_DATA_TYPES = {
    DType.FLOAT32: mc.TYPE_FP32,
    DType.FLOAT16: mc.TYPE_FP16,
    DType.INT64: mc.TYPE_INT64,
    DType.INT32: mc.TYPE_INT32,
}
_KINDS = {InstanceKind.KIND_CPU: mc.ModelInstanceGroup.KIND_CPU, InstanceKind.KIND_GPU: mc.ModelInstanceGroup.KIND_GPU}


@dataclass(frozen=True)
class ModelIO:
    """Inputs and outputs as read from the model file (shapes without the batch axis)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    text_inputs: bool = False


def _output(spec: TensorSpec) -> mc.ModelOutput:
    return mc.ModelOutput(name=spec.name, data_type=_DATA_TYPES[spec.dtype], dims=list(spec.shape))


def _input(spec: TensorSpec, *, ragged: bool) -> mc.ModelInput:
    """`ragged` lets Triton batch requests of different sequence lengths; the Python model pads them."""
    return mc.ModelInput(name=spec.name, data_type=_DATA_TYPES[spec.dtype], dims=list(spec.shape), allow_ragged_batch=ragged)


def _warmup(io: ModelIO, batch_sizes: list[int], sequence_length: int) -> list[mc.ModelWarmup]:
    warmups = []
    for batch in sorted(set(batch_sizes)):
        inputs = {
            spec.name: mc.ModelWarmup.Input(
                data_type=_DATA_TYPES[spec.dtype],
                dims=[sequence_length if d < 0 else d for d in spec.shape],
                zero_data=True,
            )
            for spec in io.inputs
        }
        warmups.append(mc.ModelWarmup(name=f"warmup_batch_{batch}", batch_size=batch, inputs=inputs))
    return warmups


def _parameters(backend: TritonBackend, triton: TritonSpec, io: ModelIO) -> dict[str, mc.ModelParameter]:
    values: dict[str, str] = {}
    if backend is TritonBackend.PYTHON:
        values["onnx_file"] = "model.onnx"
        values["intra_op_threads"] = str(triton.intra_op_threads)
        if triton.intra_op_spin_microseconds is not None:
            values["intra_op_spin_us"] = str(triton.intra_op_spin_microseconds)
        if io.text_inputs:
            values["pad_inputs"] = ",".join(spec.name for spec in io.inputs)
    elif triton.intra_op_threads:
        values["intra_op_thread_count"] = str(triton.intra_op_threads)
    return {key: mc.ModelParameter(string_value=value) for key, value in values.items()}


def preferred_batch_sizes(triton: TritonSpec, benchmark_batch_sizes: list[int]) -> list[int]:
    if triton.dynamic_batching and triton.dynamic_batching.preferred_batch_sizes:
        sizes = triton.dynamic_batching.preferred_batch_sizes
    else:
        sizes = [b for b in benchmark_batch_sizes if b > 1]
    return sorted({b for b in sizes if b <= triton.max_batch_size})


def build_model_config(
    name: str,
    backend: TritonBackend,
    io: ModelIO,
    triton: TritonSpec,
    *,
    benchmark_batch_sizes: list[int],
    sequence_length: int,
) -> mc.ModelConfig:
    preferred = preferred_batch_sizes(triton, benchmark_batch_sizes)
    config = mc.ModelConfig(
        name=name,
        backend=backend.value,
        max_batch_size=triton.max_batch_size,
        input=[_input(s, ragged=backend is TritonBackend.PYTHON and io.text_inputs) for s in io.inputs],
        output=[_output(s) for s in io.outputs],
        instance_group=[mc.ModelInstanceGroup(kind=_KINDS[triton.instance_group.kind], count=triton.instance_group.count)],
        model_warmup=_warmup(io, [1, *preferred], sequence_length),
        parameters=_parameters(backend, triton, io),
    )
    if backend is TritonBackend.ONNXRUNTIME:
        config.default_model_filename = "model.onnx"
    if triton.dynamic_batching is not None:
        config.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(
                preferred_batch_size=preferred,
                max_queue_delay_microseconds=triton.dynamic_batching.max_queue_delay_microseconds,
            )
        )
    if triton.response_cache:
        config.response_cache.enable = True
    return config


def render_model_config(config: mc.ModelConfig) -> str:
    return str(text_format.MessageToString(config))


def parse_model_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
