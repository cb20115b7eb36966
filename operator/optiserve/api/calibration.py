"""Calibration data: what static quantization, smoothing and GPTQ measure activations on."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from optiserve.api.base import ApiModel


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class Calibration(ApiModel):
    dataset_uri: str = Field(description="Calibration data (.txt, .jsonl or .npz); never the validation set.")
    samples: int = Field(default=200, ge=1, le=100_000, description="How many calibration samples to use at most.")
    method: CalibrationMethod = Field(default=CalibrationMethod.MINMAX, description="Range estimation method.")
    percentile: float = Field(default=99.999, gt=90, le=100, description="Percentile for method percentile.")
