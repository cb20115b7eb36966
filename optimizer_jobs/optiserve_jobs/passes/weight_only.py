"""Weight-only quantization of a decoder's MatMul weights to 8 or 4 bits (ONNX Runtime MatMulNBits).

The input is an exported decoder directory: `model.onnx` (weights in external data) beside
genai_config.json and the tokenizer files. The output is a new directory holding the quantized
model and a copy of every other file, so the decoder, its KV-cache shape and its tokenizer keep
loading from it.

Three algorithms, all through onnxruntime.quantization's MatMulNBitsQuantizer:

- rtn: round to nearest per block, in ONNX Runtime's native (MLAS) kernels; seconds even for
  billions of weights.
- kquant: llama.cpp-style k-quant scale search per block (always asymmetric: it stores zero points).
- gptq: error-correcting quantization from activation statistics of calibration text. ONNX
  Runtime's GPTQ writes MatMulNBits at 4 bits only (at 8 bits it leaves float weights that merely
  look quantized), and it ignores `nodes_to_exclude`; this pass refuses gptq at 8 bits and passes
  the excluded nodes to it as float itself.

`keepInt8` nodes are quantized at 8 bits first; the 4-bit stage then leaves them alone (it only
touches nodes that are still MatMul).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from optiserve.api.generation import AccuracyLevel, WeightOnlyAlgorithm, WeightOnlyPass
from optiserve_jobs.errors import PassError
from optiserve_jobs.generative.decoder import DECODER_CONFIG, DecoderShape
from optiserve_jobs.passes.base import PassContext, PassOutcome, save_model
from optiserve_jobs.sources import resolve_uri

MAX_CALIBRATION_TOKENS = 128
"""Tokens kept of each calibration text: GPTQ needs activation statistics, not long contexts."""

GPTQ_IN_MEMORY_LIMIT = 2**31
"""Initializer bytes up to which GPTQ gets the model in memory; above, a path (the library's own 2 GB line)."""

QUANTIZER_LOGGERS = ("onnxruntime.quantization.matmul_nbits_quantizer", "neural_compressor")
"""Loggers that report every node at INFO; kept at WARNING while the pass runs."""

ACCURACY_FLAGS: dict[AccuracyLevel, tuple[tuple[str, ...], str]] = {
    AccuracyLevel.FP16: (("avx512_fp16", "asimdhp"), "AVX512-FP16"),
    AccuracyLevel.BF16: (("avx512_bf16", "amx_bf16", "bf16"), "AVX512-BF16 or AMX-BF16"),
    AccuracyLevel.INT8: (("avx2", "asimddp"), "AVX2"),
}
"""The /proc/cpuinfo flags (x86 first, then the Arm equivalent) an accuracy level needs.

ONNX Runtime's CPU MatMulNBits never fails on an accuracy level it has no kernel for: it silently
computes at the next more accurate level, down to fp32. So a model asking for a level the CPU
cannot honour is refused here rather than served slower than it claims. Kernels as of ONNX Runtime
1.2x/1.3x (MLAS): int8 compute has x86 kernels from AVX2 up (Arm: dot-product instructions). For
float32 activations there is no fp16 or bf16 kernel at all (those exist for fp16 activations on
Arm), so on any CPU levels 2 and 3 currently run as fp32; the flags required here are the least a
CPU needs, not a promise the runtime uses them.
"""


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where it cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def accuracy_level_problem(level: AccuracyLevel, flags: frozenset[str] | None) -> str | None:
    """Why this CPU cannot compute at `level`, or None when it can (or its flags are unknown)."""
    needed = ACCURACY_FLAGS.get(level)
    if needed is None or flags is None:
        return None
    names, label = needed
    if flags.intersection(names):
        return None
    fallback = "4 (int8) or 1 (fp32)" if level is not AccuracyLevel.INT8 else "1 (fp32)"
    return (
        f"accuracyLevel {level.value} ({level.name.lower()}): this CPU has no {label} (its flags lack "
        f"{' / '.join(names)}), so ONNX Runtime would silently compute at a more accurate, slower level; "
        f"use accuracyLevel {fallback}"
    )


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose second input is an initializer (the quantizable ones), in graph order."""
    initializers = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in initializers]


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers, from their shapes (so external data need not be loaded)."""
    total = 0
    for tensor in model.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total


def external_data_files(model: onnx.ModelProto) -> set[str]:
    """The files (relative to the model) that hold its external tensor data."""
    files: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return files


@dataclass(frozen=True)
class QuantizedCounts:
    """What the quantized graph holds: MatMulNBits by bit width, and MatMuls with float weights left."""

    int4: int
    int8: int
    kept_float: int

    @classmethod
    def of(cls, model: onnx.ModelProto) -> QuantizedCounts:
        bits = [int(onnx.helper.get_node_attr_value(n, "bits")) for n in model.graph.node if n.op_type == "MatMulNBits"]
        return cls(int4=bits.count(4), int8=bits.count(8), kept_float=len(weight_matmuls(model)))


class CalibrationFeeds:
    """A CalibrationDataReader (duck-typed) over ready decoder feeds: one text, one feed, empty KV cache.

    The quantizer deep-copies its reader before reading it, so the feeds are plain arrays, not a tokenizer.
    """

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0

    def __iter__(self) -> CalibrationFeeds:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def read_calibration_texts(path: Path, limit: int, field: str) -> list[str]:
    if path.suffix != ".txt":
        raise PassError(f"{field}.calibration.datasetUri: gptq calibrates on plain text (.txt, one text a line), not {path.name}")
    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise PassError(f"{field}.calibration.datasetUri: {path.name} has no text")
    return texts[:limit]


def decoder_feeds(model_dir: Path, graph: onnx.ModelProto, texts: list[str], field: str) -> list[dict[str, np.ndarray]]:
    """One decoder feed per text: its first MAX_CALIBRATION_TOKENS tokens after an empty KV cache."""
    from transformers import AutoTokenizer

    shape = DecoderShape.read(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    pasts: dict[str, np.ndarray] = {}
    for value in graph.graph.input:
        if value.name.startswith("past_key_values."):
            dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            pasts[value.name] = np.zeros((1, shape.kv_heads, 0, shape.head_size), dtype)
        elif value.name not in ("input_ids", "attention_mask"):
            raise PassError(f"{field}: the decoder takes input '{value.name}', which gptq calibration cannot feed")
    feeds = []
    for text in texts:
        ids = tokenizer(text)["input_ids"][:MAX_CALIBRATION_TOKENS]
        if ids:
            tokens = np.asarray([ids], np.int64)
            feeds.append({"input_ids": tokens, "attention_mask": np.ones_like(tokens), **pasts})
    return feeds


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """Keep the quantizer's per-node INFO lines, its progress bar and k-quant's 0/0 warnings out of the log."""
    loggers = [logging.getLogger(name) for name in QUANTIZER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def quantized_model(quantizer: Any) -> onnx.ModelProto:
    """The quantizer's result, with the com.microsoft opset MatMulNBits needs declared."""
    quantizer.process()
    model: onnx.ModelProto = quantizer.model.model
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


def copy_companions(source_dir: Path, skip: set[str], target_dir: Path) -> list[str]:
    """Copy every file of `source_dir` except the model's own (config, tokenizer, chat template...)."""
    copied = []
    for item in sorted(source_dir.iterdir()):
        if item.is_file() and item.name not in skip:
            shutil.copy2(item, target_dir / item.name)
            copied.append(item.name)
    return copied


class WeightOnly:
    name = "weightonly"

    def __init__(self, config: WeightOnlyPass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        started = time.perf_counter()
        field = f"optimization.passes[{index}]"
        config = self.config
        self._check_runnable(model, field)
        graph = onnx.load(str(model), load_external_data=False)
        matmuls = weight_matmuls(graph)
        self._check_names(matmuls, field)
        context.progress(f"weightonly: {config.algorithm.value} int{config.bits} on {len(matmuls)} MatMuls")
        feeds = self._calibration(model, graph, context, field) if config.algorithm is WeightOnlyAlgorithm.GPTQ else []
        calibrated = f", calibrated on {len(feeds)} texts" if feeds else ""
        with quiet_quantizer():  # the progress display may write to stdout: nothing reports in here
            if config.algorithm is WeightOnlyAlgorithm.GPTQ:
                proto = self._gptq(model, graph, feeds, context.work_dir / f"{index:02d}-weightonly-gptq-input")
                proto = self._keep_int8(proto, matmuls)
            elif config.algorithm is WeightOnlyAlgorithm.KQUANT:
                proto = self._kquant(onnx.load(str(model)), matmuls)
            else:
                proto = self._keep_int8(onnx.load(str(model)), matmuls)
                proto = self._rtn(proto, config.bits, config.exclude_nodes)
        counts = QuantizedCounts.of(proto)
        output_dir = context.work_dir / f"{index:02d}-weightonly"
        output = self._write(proto, model, graph, output_dir)
        size = sum(f.stat().st_size for f in (output, output.with_name(f"{output.name}.data")) if f.is_file())
        detail = self._detail(counts, size, calibrated)
        return PassOutcome.ok(
            output,
            detail,
            bits=config.bits,
            algorithm=config.algorithm.value,
            block_size=config.block_size,
            accuracy_level=int(config.accuracy_level),
            quantized_matmuls=counts.int4 + counts.int8,
            int8_matmuls=counts.int8,
            int4_matmuls=counts.int4,
            float_matmuls=counts.kept_float,
            output_bytes=size,
            seconds=round(time.perf_counter() - started, 2),
        )

    def _check_runnable(self, model: Path, field: str) -> None:
        config = self.config
        if not (model.parent / DECODER_CONFIG).is_file():
            raise PassError(
                f"{field}: {model.name} has no {DECODER_CONFIG} beside it; weightonly quantizes a decoder exported "
                "for task text-generation"
            )
        if config.algorithm is WeightOnlyAlgorithm.GPTQ and config.bits == 8:
            raise PassError(
                f"{field}.bits: gptq quantizes to 4 bits only (ONNX Runtime's GPTQ writes no 8-bit MatMulNBits); "
                "use algorithm rtn for 8 bits, which is nearly lossless at 8 bits anyway"
            )
        problem = accuracy_level_problem(config.accuracy_level, cpu_flags())
        if problem is not None:
            raise PassError(f"{field}.{problem}")

    def _check_names(self, matmuls: list[str], field: str) -> None:
        known = set(matmuls)
        shown = matmuls[:3] + (["...", matmuls[-1]] if len(matmuls) > 4 else matmuls[3:])
        names = f"{', '.join(shown)} ({len(matmuls)} MatMuls with constant weights)"
        for key, listed in (("keepInt8", self.config.keep_int8), ("excludeNodes", self.config.exclude_nodes)):
            missing = [name for name in listed if name not in known]
            if missing:
                raise PassError(f"{field}.{key}: no MatMul named {', '.join(missing)} in the model; it has {names}")
        both = sorted(set(self.config.keep_int8) & set(self.config.exclude_nodes))
        if both:
            raise PassError(f"{field}.keepInt8: {', '.join(both)} also in excludeNodes (kept float)")

    def _calibration(self, model: Path, graph: onnx.ModelProto, context: PassContext, field: str) -> list[dict[str, np.ndarray]]:
        calibration = self.config.calibration
        assert calibration is not None  # the spec requires it for gptq
        path = resolve_uri(calibration.dataset_uri, base_dir=context.base_dir, download_dir=context.work_dir / "downloads")
        feeds = decoder_feeds(model.parent, graph, read_calibration_texts(path, calibration.samples, field), field)
        if not feeds:
            raise PassError(f"{field}.calibration.datasetUri: no text in {path.name} tokenizes to any token")
        context.progress(f"weightonly: gptq on {len(feeds)} calibration texts")
        return feeds

    def _rtn(self, model: onnx.ModelProto, bits: int, exclude: list[str]) -> onnx.ModelProto:
        """Round to nearest in ONNX Runtime's kernels; nodes already MatMulNBits are left alone."""
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        config = self.config
        level = int(config.accuracy_level)
        algo = DefaultWeightOnlyQuantConfig(
            bits=bits, block_size=config.block_size, is_symmetric=config.symmetric, accuracy_level=level
        )
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=bits,
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=level,
            nodes_to_exclude=list(exclude),
            algo_config=algo,
        )
        return quantized_model(quantizer)

    def _keep_int8(self, model: onnx.ModelProto, matmuls: list[str]) -> onnx.ModelProto:
        """The keepInt8 nodes at 8 bits (round to nearest); every other node untouched."""
        if not self.config.keep_int8:
            return model
        keep = set(self.config.keep_int8)
        return self._rtn(model, 8, [name for name in matmuls if name not in keep])

    def _kquant(self, model: onnx.ModelProto, matmuls: list[str]) -> onnx.ModelProto:
        from onnxruntime.quantization.matmul_nbits_quantizer import KQuantWeightOnlyQuantConfig, MatMulNBitsQuantizer

        config = self.config
        # The quantizer's per-node template says 4 bits whatever `bits` is: name every node's bits.
        eight_bit = matmuls if config.bits == 8 else config.keep_int8
        algo = KQuantWeightOnlyQuantConfig(customized_weight_config={name: {"bits": 8} for name in eight_bit})
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=config.bits,
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=int(config.accuracy_level),
            nodes_to_exclude=list(config.exclude_nodes),
            algo_config=algo,
        )
        return quantized_model(quantizer)

    def _gptq(self, model: Path, graph: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], scratch: Path) -> onnx.ModelProto:
        """GPTQ at 4 bits on every MatMul but the excluded and keepInt8 ones.

        The library takes a model object or a path, and each works for one size only: given a path, it
        reads external data only for models over 2 GB (a smaller one then fails to open), and it
        serializes a model object whole (which a protobuf cannot hold over 2 GB). Over 2 GB it also
        writes an augmented copy beside the model it reads, so it reads a private copy of the files.
        """
        if tensor_bytes(graph) <= GPTQ_IN_MEMORY_LIMIT:
            return self._run_gptq(onnx.load(str(model)), feeds)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            for name in {model.name, *external_data_files(graph)}:
                shutil.copy2(model.parent / name, scratch / name)
            return self._run_gptq(str(scratch / model.name), feeds)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_gptq(self, model: onnx.ModelProto | str, feeds: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
        from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer

        config = self.config
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=int(config.accuracy_level),
            algo_config=GPTQWeightOnlyQuantConfig(calibration_data_reader=CalibrationFeeds(feeds)),
        )
        # Its GPTQ path ignores nodes_to_exclude; float ("fp32") entries in its node config it does honour.
        node_config = quantizer._generate_q4_node_config
        skipped = {name: "fp32" for name in [*config.exclude_nodes, *config.keep_int8]}
        quantizer._generate_q4_node_config = lambda: {**node_config(), **skipped}
        try:
            return quantized_model(quantizer)
        except np.linalg.LinAlgError as e:
            raise PassError(
                f"gptq: the calibration statistics are degenerate ({e}); give more or longer calibration texts"
            ) from e

    def _write(self, proto: onnx.ModelProto, model: Path, graph: onnx.ModelProto, output_dir: Path) -> Path:
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True)
        output = output_dir / model.name
        save_model(proto, output)
        copy_companions(model.parent, {model.name, *external_data_files(graph)}, output_dir)
        return output

    def _detail(self, counts: QuantizedCounts, size: int, calibrated: str) -> str:
        config = self.config
        symmetric = "symmetric" if config.symmetric else "asymmetric"
        if config.algorithm is WeightOnlyAlgorithm.KQUANT:
            symmetric = "asymmetric (k-quant)"
        level = config.accuracy_level
        kept = f" ({counts.int8} kept at 8 bits)" if config.bits == 4 and counts.int8 else ""
        return (
            f"{config.algorithm.value} int{config.bits}, blocks of {config.block_size}, {symmetric}, accuracy level "
            f"{level.value} ({level.name.lower()}){calibrated}: {counts.int4 + counts.int8} MatMuls quantized{kept}, "
            f"{counts.kept_float} kept float; {size / 1e6:.1f} MB"
        )
