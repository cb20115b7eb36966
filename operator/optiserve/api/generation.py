"""Generative models (task text-generation): the weight-only quantization pass and the LLM gates.

A causal language model is exported with its KV cache as explicit inputs and outputs, then its
MatMul weights are quantized to 8 or 4 bits (activations stay float, or are quantized on the fly
with accuracy level 4). Its quality is judged against the source model's next-token distributions
on held-out text, never on exact-match answers alone: a 4-bit model can answer more questions right
and still be a worse model.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from optiserve.api.base import ApiModel
from optiserve.api.calibration import Calibration


class WeightOnlyAlgorithm(StrEnum):
    RTN = "rtn"
    GPTQ = "gptq"
    KQUANT = "kquant"


class AccuracyLevel(IntEnum):
    """MatMulNBits' accuracy_level: the type the product is computed in."""

    UNSET = 0
    FP32 = 1
    FP16 = 2
    BF16 = 3
    INT8 = 4


class WeightOnlyPass(ApiModel):
    type: Literal["weightonly"] = Field(
        description=(
            "Weight-only quantization of a decoder's MatMul weights to 8 or 4 bits in blocks (ONNX Runtime "
            "MatMulNBits); activations stay float. Task text-generation only."
        )
    )
    bits: Literal[4, 8] = Field(default=8, description="Bits per weight.")
    algorithm: WeightOnlyAlgorithm = Field(
        default=WeightOnlyAlgorithm.RTN,
        description=(
            "rtn: round to nearest, per block; gptq: error-correcting, calibrated on calibration text; "
            "kquant: llama.cpp-style k-quant scales searched per block."
        ),
    )
    block_size: int = Field(default=32, description="Weights sharing one scale (16, 32, 64, 128 or 256).")
    symmetric: bool = Field(default=True, description="Symmetric blocks (no zero point).")
    accuracy_level: AccuracyLevel = Field(
        default=AccuracyLevel.INT8,
        description=(
            "What the product is computed in: 4 quantizes activations to INT8 on the fly (fastest on CPUs "
            "with AVX2/AVX-512 VNNI), 1 FP32, 2 FP16 and 3 BF16 need CPU support; 0 leaves it to the runtime."
        ),
    )
    keep_int8: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="With bits 4: MatMul node names kept at 8 bits (e.g. /lm_head/MatMul, the most sensitive).",
    )
    exclude_nodes: list[str] = Field(default_factory=list, max_length=256, description="MatMul node names kept in float.")
    calibration: Calibration | None = Field(default=None, description="Calibration text for gptq (never the validation text).")

    @field_validator("block_size")
    @classmethod
    def _check_block_size(cls, value: int) -> int:
        if value not in (16, 32, 64, 128, 256):
            raise ValueError(f"blockSize {value}: must be 16, 32, 64, 128 or 256")
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> WeightOnlyPass:
        if self.algorithm is WeightOnlyAlgorithm.GPTQ and self.calibration is None:
            raise ValueError("calibration: required for algorithm gptq (it corrects errors on calibration text)")
        if self.algorithm is WeightOnlyAlgorithm.GPTQ and self.bits != 4:
            raise ValueError("bits: algorithm gptq writes 4-bit weights only (ONNX Runtime's GPTQ); set bits: 4")
        if self.keep_int8 and self.bits == 8:
            raise ValueError("keepInt8: only with bits 4 (every weight is 8-bit already)")
        return self


class GenerationGates(ApiModel):
    max_perplexity_ratio: float = Field(
        default=1.05, ge=1, description="Largest candidate/baseline perplexity on the validation text."
    )
    max_kl: float = Field(
        default=0.05,
        ge=0,
        description="Largest mean KL divergence (nats) of the candidate's next-token distribution from the baseline's.",
    )
    min_top1: float = Field(default=0.9, ge=0, le=1, description="Smallest teacher-forced top-1 agreement with the baseline.")
    max_flips_to_wrong: int = Field(
        default=2,
        ge=0,
        description=(
            "Most task answers the baseline gets right and the candidate gets wrong. Greedy answers are discrete: "
            "a near-tie can flip one on another CPU's rounding, so the default leaves room for 2; the "
            "distribution gates (KL, top-1) are what catch a worse model."
        ),
    )


class GenerationValidation(ApiModel):
    context_tokens: int = Field(
        default=256, ge=16, le=8192, description="Tokens per teacher-forced window of the validation text."
    )
    windows: int = Field(default=16, ge=1, le=1000, description="Validation windows scored (each context_tokens long).")
    golden_prompts_uri: str | None = Field(
        default=None,
        description=(
            "Prompts (.txt, one per line, or .jsonl with 'prompt') answered greedily by both models; their "
            "agreement is reported and the baseline's answers are published with the model."
        ),
    )
    tasks_uri: str | None = Field(
        default=None,
        description="Questions with answers (.jsonl: 'prompt', 'answer'); right/wrong flips against the baseline.",
    )
    max_new_tokens: int = Field(default=24, ge=1, le=1024, description="Tokens generated per golden prompt or task.")
    chat_template: bool = Field(default=True, description="Wrap prompts in the tokenizer's chat template (instruct models).")
    gates: GenerationGates = Field(default_factory=GenerationGates, description="The LLM quality gates.")

    def gate_lines(self) -> list[str]:
        limits = self.gates
        lines = [
            f"perplexity_ratio <= {limits.max_perplexity_ratio:g} (candidate/baseline on the validation text)",
            f"kl_mean <= {limits.max_kl:g} (nats per token, against the baseline's next-token distribution)",
            f"top1_agreement >= {limits.min_top1:g} (teacher-forced)",
        ]
        if self.tasks_uri:
            lines.append(f"flips_right_to_wrong <= {limits.max_flips_to_wrong} (tasks in {self.tasks_uri})")
        return lines


GenerationTask = Literal["text-generation"]
