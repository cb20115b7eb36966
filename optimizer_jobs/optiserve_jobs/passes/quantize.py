"""INT8 quantization: dynamic (weights, activations at run time) or static QDQ with calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from optiserve.api.spec import CalibrationMethod, QuantizePass, QuantMode
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.passes.base import PassContext, PassOutcome, save_model
from optiserve_jobs.passes.smoothing import activation_channel_max, apply_smoothing, find_targets, with_outliers


class _DatasetReader:
    """onnxruntime.quantization's CalibrationDataReader over a Dataset, one sample per call."""

    def __init__(self, data: Dataset, input_names: list[str]) -> None:
        self._rows = iter(range(len(data)))
        self._data = data
        self._names = input_names

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        if row is None:
            return None
        return {n: self._data.inputs[n][row : row + 1] for n in self._names}

    def rewind(self) -> None:
        self._rows = iter(range(len(self._data)))


def _input_names(model: onnx.ModelProto) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


class Quantize:
    name = "quantize"

    def __init__(self, config: QuantizePass) -> None:
        self.config = config

    def _calibration(self, context: PassContext) -> Dataset:
        assert self.config.calibration is not None
        return context.load_dataset(self.config.calibration.dataset_uri, self.config.calibration.samples)

    def _smooth(self, model: Path, context: PassContext, index: int, data: Dataset) -> tuple[Path, int]:
        assert self.config.smoothing is not None
        proto = onnx.load(str(model))
        targets = find_targets(proto, set(self.config.exclude_nodes))
        maxima = activation_channel_max(proto, [t.activation for t in targets], data, threads=context.threads)
        selected = with_outliers(targets, maxima, self.config.smoothing.min_outlier_ratio)
        count = apply_smoothing(proto, selected, maxima, self.config.smoothing.alpha)
        onnx.checker.check_model(proto)
        return save_model(proto, context.output_path(index, "smoothed")), count

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        data = self._calibration(context) if self.config.calibration else None
        smoothed = 0
        if self.config.smoothing is not None and data is not None:
            model, smoothed = self._smooth(model, context, index, data)
        output = context.output_path(index, f"int8-{self.config.mode.value}")
        if self.config.mode is QuantMode.DYNAMIC:
            self._dynamic(model, output)
        else:
            assert data is not None
            self._static(model, output, data)
        smoothing = ""
        if self.config.smoothing:
            smoothing = (
                f", {smoothed} activations smoothed (alpha {self.config.smoothing.alpha}, "
                f"outlier ratio >= {self.config.smoothing.min_outlier_ratio:g})"
            )
        calibration = f", calibrated on {len(data)} samples" if data is not None else ""
        detail = (
            f"int8 {self.config.mode.value}, {'per-channel' if self.config.per_channel else 'per-tensor'} weights"
            f"{smoothing}{calibration}"
        )
        return PassOutcome.ok(output, detail, smoothed_activations=smoothed)

    def _op_types(self, defaults: list[str]) -> list[str] | None:
        if not self.config.exclude_op_types:
            return None
        return [op for op in defaults if op not in set(self.config.exclude_op_types)]

    def _dynamic(self, model: Path, output: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(model),
            str(output),
            per_channel=self.config.per_channel,
            reduce_range=self.config.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(self.config.exclude_nodes),
            op_types_to_quantize=self._op_types(
                ["MatMul", "Attention", "Gather", "Gemm", "Conv", "LSTM", "EmbedLayerNormalization"]
            ),
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )

    def _static(self, model: Path, output: Path, data: Dataset) -> None:
        from onnxruntime.quantization import CalibrationMethod as OrtMethod
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        assert self.config.calibration is not None
        methods = {
            CalibrationMethod.MINMAX: OrtMethod.MinMax,
            CalibrationMethod.ENTROPY: OrtMethod.Entropy,
            CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
        }
        extra: dict[str, Any] = {
            "CalibPercentile": self.config.calibration.percentile,
            "DefaultTensorType": onnx.TensorProto.FLOAT,
        }
        reader = _DatasetReader(data, _input_names(onnx.load(str(model), load_external_data=False)))
        quantize_static(
            str(model),
            str(output),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=self.config.per_channel,
            reduce_range=self.config.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[self.config.calibration.method],
            nodes_to_exclude=list(self.config.exclude_nodes),
            op_types_to_quantize=self._op_types(
                ["MatMul", "Attention", "Gemm", "Conv", "Add", "Mul", "Relu", "MaxPool", "AveragePool", "Gather"]
            ),
            extra_options=extra,
        )
