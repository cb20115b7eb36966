"""The `OptimizedModel` resource: spec models.

These models are the single source of truth for the CRD schema and for offline validation.
Every field carries a description, because it becomes `kubectl explain` output.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Final, Literal, get_args

from pydantic import Field, model_validator

from optiserve.api.base import ApiModel
from optiserve.api.calibration import Calibration as Calibration  # re-exported: the spec's public names
from optiserve.api.calibration import CalibrationMethod as CalibrationMethod
from optiserve.api.compression import TRAINING_PASS_TYPES, DistillPass, PrunePass
from optiserve.api.generation import GenerationValidation, WeightOnlyPass
from optiserve.api.rollout import RolloutSpec

API_GROUP = "optiserve.io"
API_VERSION = "v1alpha1"
KIND = "OptimizedModel"


class ModelFormat(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    HUGGINGFACE = "huggingface"
    PYTORCH = "pytorch"


class Task(StrEnum):
    EMBEDDING = "embedding"
    CLASSIFICATION = "classification"
    GENERIC = "generic"
    TEXT_GENERATION = "text-generation"


class DType(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT64 = "int64"
    INT32 = "int32"


class TensorSpec(ApiModel):
    name: str = Field(description="Input tensor name, as the model and Triton clients will see it.", min_length=1)
    shape: list[int] = Field(
        description="Shape without the batch dimension; -1 marks a dynamic axis (e.g. sequence length).",
        min_length=0,
        max_length=8,
    )
    dtype: DType = Field(default=DType.FLOAT32, description="Element type of the tensor.")


class ModelSpec(ApiModel):
    uri: str = Field(
        description=(
            "Where the model is: a plain path, file://, http(s)://. ONNX and TorchScript name a file, "
            "huggingface names a directory (loaded offline), pytorch names an optional state_dict file."
        ),
        min_length=1,
    )
    format: ModelFormat = Field(description="Serialization of the source model.")
    task: Task = Field(
        default=Task.GENERIC,
        description=(
            "What the outputs mean; chooses the fidelity metric: embedding (cosine), "
            "classification (top-1 agreement and label accuracy), generic (max abs error), text-generation "
            "(a causal language model: exported with its KV cache, judged on perplexity, KL and top-1 agreement)."
        ),
    )
    entrypoint: str | None = Field(
        default=None,
        description=(
            "For format pytorch: 'package.module:factory' or 'path/to/file.py:factory'; the factory "
            "returns a torch.nn.Module and receives the state_dict path from uri (or None)."
        ),
    )
    inputs: list[TensorSpec] = Field(
        default_factory=list,
        description="Input tensors; required for torchscript and pytorch sources (read from the model otherwise).",
    )
    outputs: list[str] = Field(
        default_factory=list,
        description="Output names for exported models (default: 'output', or 'embedding'/'logits' by task).",
    )
    sequence_length: int = Field(
        default=128, ge=1, le=8192, description="Token sequence length used for text validation and benchmarks."
    )
    tokenizer_uri: str | None = Field(
        default=None,
        description="Tokenizer directory for an ONNX text model; huggingface sources use their own directory.",
    )

    @model_validator(mode="after")
    def _check_format_needs(self) -> ModelSpec:
        if self.format in (ModelFormat.TORCHSCRIPT, ModelFormat.PYTORCH) and not self.inputs:
            raise ValueError(f"inputs: required for format {self.format.value} (the export needs example inputs)")
        if self.format is ModelFormat.PYTORCH and not self.entrypoint:
            raise ValueError("entrypoint: required for format pytorch ('module:factory' or 'file.py:factory')")
        return self


class ExportPass(ApiModel):
    type: Literal["export"] = Field(
        description="Export the model to ONNX (added automatically after prune and distill, before the ONNX passes)."
    )
    opset: int = Field(default=17, ge=13, le=23, description="ONNX opset version of the export.")
    atol: float = Field(default=1e-4, ge=0, description="Absolute tolerance of the numerical check against the source.")
    rtol: float = Field(default=1e-3, ge=0, description="Relative tolerance of the numerical check against the source.")


class GraphLevel(StrEnum):
    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class FusionKind(StrEnum):
    AUTO = "auto"
    BERT = "bert"
    NONE = "none"


class GraphPass(ApiModel):
    type: Literal["graph"] = Field(description="Graph optimization: transformer fusion and ONNX Runtime levels.")
    level: GraphLevel = Field(
        default=GraphLevel.BASIC,
        description="ONNX Runtime optimization level applied offline (basic is portable across machines).",
    )
    fusion: FusionKind = Field(
        default=FusionKind.AUTO,
        description="Transformer fusion through onnxruntime.transformers; auto fuses BERT-like Hugging Face models.",
    )


class Fp16Pass(ApiModel):
    type: Literal["fp16"] = Field(description="Convert weights and compute to float16.")
    keep_io_types: bool = Field(default=True, description="Keep float32 inputs and outputs (casts at the edges).")
    op_block_list: list[str] = Field(default_factory=list, description="Operator types kept in float32.")


class Smoothing(ApiModel):
    alpha: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="SmoothQuant migration strength: how much activation outlier range moves into the weights.",
    )
    min_outlier_ratio: float = Field(
        default=6.0,
        ge=0,
        description=(
            "Smooth only activations whose largest channel maximum is this many times their median channel "
            "maximum; each smoothed activation costs one Mul at run time (0 smooths all)."
        ),
    )


class QuantMode(StrEnum):
    DYNAMIC = "dynamic"
    STATIC = "static"


class QuantizePass(ApiModel):
    type: Literal["quantize"] = Field(description="INT8 quantization through onnxruntime.quantization.")
    precision: Literal["int8"] = Field(default="int8", description="Target precision.")
    mode: QuantMode = Field(default=QuantMode.DYNAMIC, description="dynamic (weights only) or static (QDQ).")
    per_channel: bool = Field(default=True, description="Per-output-channel weight scales.")
    reduce_range: bool = Field(default=False, description="7-bit weights, for CPUs without VNNI.")
    smoothing: Smoothing | None = Field(
        default=None,
        description="SmoothQuant-style activation smoothing before quantization (needs calibration data).",
    )
    calibration: Calibration | None = Field(
        default=None, description="Calibration data; required for static mode and for smoothing."
    )
    exclude_op_types: list[str] = Field(default_factory=list, description="Operator types kept in float.")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names kept in float.")

    @model_validator(mode="after")
    def _check_calibration(self) -> QuantizePass:
        if self.mode is QuantMode.STATIC and self.calibration is None:
            raise ValueError("calibration: required when mode is static")
        if self.smoothing is not None and self.calibration is None:
            raise ValueError("calibration: required when smoothing is set")
        return self


class TensorRTPass(ApiModel):
    type: Literal["tensorrt"] = Field(description="Build a TensorRT engine (GPU only; skipped with a reason otherwise).")
    precision: Literal["fp16", "int8"] = Field(default="fp16", description="Engine precision.")
    workspace_mib: int = Field(default=2048, ge=64, description="Builder workspace memory pool.")
    max_batch_size: int = Field(default=32, ge=1, description="Largest batch of the optimization profile.")


Pass = Annotated[
    PrunePass | DistillPass | ExportPass | GraphPass | Fp16Pass | QuantizePass | TensorRTPass | WeightOnlyPass,
    Field(discriminator="type"),
]
"""Every optimization pass: the one list of them. A new pass is a configuration model added here
and an implementation registered in `optiserve_jobs.passes.REGISTRY`; the CRD schema, manifest
validation and `PASS_TYPES` follow from this union."""


def pass_type(config: type[ApiModel]) -> str:
    """The `type` tag of a pass configuration model (its `Literal`)."""
    (tag,) = get_args(config.model_fields["type"].annotation)
    return str(tag)


PASS_CONFIGS: Final[tuple[type[ApiModel], ...]] = get_args(get_args(Pass)[0])
PASS_TYPES: Final[tuple[str, ...]] = tuple(pass_type(config) for config in PASS_CONFIGS)
TORCH_PASSES: Final[tuple[type[ApiModel], ...]] = (PrunePass, DistillPass)
"""Passes that change the PyTorch module: they come before the export pass."""
TORCH_PASS_TYPES: Final[tuple[str, ...]] = tuple(pass_type(config) for config in TORCH_PASSES)
JOB_RESERVE_SECONDS: Final = 600
"""What a Job's deadline keeps for everything but training: loading, export, validation, benchmark, publish."""
MAX_PASSES: Final = 16
"""Passes in one spec at most: bounds what the API server's CEL rules over the list may cost."""


def first_onnx_pass(passes: Sequence[Pass]) -> int:
    """Where the ONNX passes begin: the index of the first pass that is not a PyTorch pass
    (`len(passes)` when there is none). The export pass belongs exactly there."""
    return next((index for index, step in enumerate(passes) if not isinstance(step, TORCH_PASSES)), len(passes))


def training_budgets(passes: Sequence[Pass]) -> list[tuple[int, int]]:
    """(index, maxTrainingSeconds) of every pass that trains, in order."""
    return [(index, step.max_training_seconds) for index, step in enumerate(passes) if isinstance(step, DistillPass)]


def trains(passes: Sequence[Pass]) -> bool:
    """Whether any pass trains the model (its Job then gets the training resources)."""
    return any(step.type in TRAINING_PASS_TYPES for step in passes)


class OptimizationSpec(ApiModel):
    passes: list[Pass] = Field(
        default_factory=list,
        max_length=MAX_PASSES,
        description=(
            "Passes, applied in order: prune and distill on the PyTorch model, then export, then the ONNX passes "
            f"(at most {MAX_PASSES})."
        ),
    )
    deadline_seconds: int = Field(
        default=3600,
        ge=60,
        le=7 * 86400,
        description=(
            "The optimization Job's activeDeadlineSeconds. It must hold every training budget "
            f"(maxTrainingSeconds) plus {JOB_RESERVE_SECONDS} s for the rest of the job."
        ),
    )

    @model_validator(mode="after")
    def _check_deadline(self) -> OptimizationSpec:
        training = training_budgets(self.passes)
        total = sum(seconds for _, seconds in training)
        if training and total + JOB_RESERVE_SECONDS > self.deadline_seconds:
            fields = " + ".join(f"optimization.passes[{i}].maxTrainingSeconds ({s} s)" for i, s in training)
            raise ValueError(
                f"deadlineSeconds: {fields} and {JOB_RESERVE_SECONDS} s for the rest of the job need "
                f"{total + JOB_RESERVE_SECONDS} s, more than optimization.deadlineSeconds ({self.deadline_seconds} s); "
                "raise the deadline or lower the budget"
            )
        return self


DEFAULT_SPEED_GATE = "faster_than_baseline"
DEFAULT_SPEED_GATE_DETAIL = (
    "default: faster than the source in every undisturbed paired round (validation.minSpeedup: 0 turns it off)"
)


class ValidationSpec(ApiModel):
    dataset_uri: str = Field(description="Validation data (.txt, .jsonl or .npz, labels optional).")
    samples: int = Field(default=1000, ge=1, description="Validate on at most this many samples.")
    max_degradation: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Largest allowed drop: of label accuracy (absolute), and of mean fidelity below 1.",
    )
    min_worst_fidelity: float | None = Field(
        default=None, ge=-1, le=1, description="Lowest allowed fidelity of the worst single sample."
    )
    min_speedup: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Smallest allowed p50 speedup over the source model at the first batch size, from paired rounds. "
            "Unset: the candidate must be faster than the source in every undisturbed paired round "
            "(gate faster_than_baseline); 0: no speed gate (a size-only optimization)."
        ),
    )
    max_size_ratio: float | None = Field(default=None, gt=0, description="Largest allowed candidate/baseline size.")
    generation: GenerationValidation | None = Field(
        default=None,
        description=(
            "Task text-generation: how the language model is judged (the validation data is plain text); unset: the defaults."
        ),
    )

    @property
    def generation_or_default(self) -> GenerationValidation:
        return self.generation or GenerationValidation()

    def gates(self, task: Task = Task.GENERIC) -> list[str]:
        """The gates this spec sets, defaults included, in words (`optiserve validate` prints them)."""
        if task is Task.TEXT_GENERATION:
            lines = self.generation_or_default.gate_lines()
        else:
            lines = [f"fidelity_mean >= {1.0 - self.max_degradation:g} (maxDegradation {self.max_degradation:g})"]
            if self.min_worst_fidelity is not None:
                lines.append(f"fidelity_worst >= {self.min_worst_fidelity:g}")
            lines.append(f"accuracy_drop <= {self.max_degradation:g} (when the validation data has labels)")
        if self.min_speedup is None:
            lines.append(f"{DEFAULT_SPEED_GATE} > 1 ({DEFAULT_SPEED_GATE_DETAIL})")
        elif self.min_speedup > 0:
            measure = "decode tokens/s at batch 1" if task is Task.TEXT_GENERATION else "p50"
            lines.append(f"speedup_p50 >= {self.min_speedup:g} ({measure}, median of the undisturbed paired rounds)")
        else:
            lines.append("no speed gate (minSpeedup: 0)")
        if self.max_size_ratio is not None:
            lines.append(f"size_ratio <= {self.max_size_ratio:g}")
        return lines


class StabilitySpec(ApiModel):
    max_wait_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description=(
            "A timed round in which the variant's threads waited runnable for a CPU longer than this share of "
            "its wall time (the kernel's run-queue delay) was disturbed by other work and is measured again."
        ),
    )
    confidence: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description=(
            "Coverage of the distribution-free interval of the median paired speedup a speed gate is judged on: "
            "a threshold inside the interval is within the measured noise."
        ),
    )
    budget: int = Field(
        default=3,
        ge=1,
        le=20,
        description=(
            "Rounds measured at most, in multiples of repeats, while rounds come out disturbed or the speed gate's "
            "threshold lies within the noise; then an explicit minSpeedup is inconclusive (the job fails naming the "
            "busy machine or the interval), and the default gate refuses a candidate not faster beyond the noise."
        ),
    )


class BenchmarkSpec(ApiModel):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8], min_length=1, description="Batch sizes to time.")
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description=(
            "Intra-op threads, the same for every variant (default: the CPUs this container may use, "
            "from its cpuset and CPU quota)."
        ),
    )
    warmup: int = Field(default=10, ge=0, description="Untimed runs before timing.")
    iterations: int = Field(default=30, ge=1, description="Timed runs per repeat.")
    repeats: int = Field(
        default=5, ge=1, description="Undisturbed paired rounds needed; each variant alternates with the baseline."
    )
    profile: bool = Field(default=True, description="Record ONNX Runtime per-operator time for each variant.")
    stability: StabilitySpec = Field(
        default_factory=StabilitySpec, description="When timed rounds are too disturbed to judge speed on."
    )


class InstanceKind(StrEnum):
    KIND_CPU = "KIND_CPU"
    KIND_GPU = "KIND_GPU"


class DynamicBatching(ApiModel):
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="Batch sizes the scheduler prefers (default: benchmark batch sizes > 1)."
    )
    max_queue_delay_microseconds: int = Field(
        default=500, ge=0, description="How long a request may wait for others to form a batch."
    )


class InstanceGroup(ApiModel):
    kind: InstanceKind = Field(default=InstanceKind.KIND_CPU, description="Where instances run.")
    count: int = Field(default=1, ge=1, le=64, description="Model instances per server.")


class TritonBackend(StrEnum):
    ONNXRUNTIME = "onnxruntime"
    PYTHON = "python"

    @property
    def repository(self) -> str:
        """The folder of a published artifact that holds this backend's Triton model repository."""
        return "model_repository" if self is TritonBackend.ONNXRUNTIME else "model_repository_python"


class TritonSpec(ApiModel):
    image: str = Field(default="nvcr.io/nvidia/tritonserver:24.10-py3", description="Triton server image.")
    backend: TritonBackend = Field(
        default=TritonBackend.ONNXRUNTIME,
        description="onnxruntime (production) or python (ONNX Runtime inside a Python-backend model, CPU-only Triton).",
    )
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="max_batch_size in config.pbtxt.")
    dynamic_batching: DynamicBatching | None = Field(
        default_factory=DynamicBatching, description="Dynamic batching; null turns it off."
    )
    instance_group: InstanceGroup = Field(default_factory=InstanceGroup, description="instance_group settings.")
    response_cache: bool = Field(default=False, description="Enable Triton's response cache for this model.")
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads (0: runtime default).")
    intra_op_spin_microseconds: int | None = Field(
        default=None,
        ge=-1,
        le=100_000,
        description=(
            "Python backend only: how long an idle ONNX Runtime intra-op thread spins before it sleeps "
            "(0, the default: sleep at once, for servers that share their cores; -1: ONNX Runtime's own "
            "spinning; 200 served 1.2x on dedicated cores, docs/benchmarks.md)."
        ),
    )

    @model_validator(mode="after")
    def _check_spin_backend(self) -> TritonSpec:
        if self.intra_op_spin_microseconds is not None and self.backend is not TritonBackend.PYTHON:
            raise ValueError(
                "intraOpSpinMicroseconds: only the python backend takes it "
                f"(backend is {self.backend.value}; Triton's onnxruntime backend has no such model parameter)"
            )
        return self


class ServingSpec(ApiModel):
    replicas: int = Field(default=1, ge=0, le=1000, description="Triton replicas of the promoted variant.")
    triton: TritonSpec = Field(default_factory=TritonSpec, description="Triton model configuration.")


class OptimizedModelSpec(ApiModel):
    model: ModelSpec = Field(description="The source model.")
    optimization: OptimizationSpec = Field(default_factory=OptimizationSpec, description="Optimization passes.")
    validation: ValidationSpec = Field(description="Offline proof against the unoptimized model.")
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec, description="Offline benchmark settings.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="How the model is served.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec, description="Canary rollout: traffic steps, analysis metrics and promotion policy."
    )

    @model_validator(mode="after")
    def _check_passes(self) -> OptimizedModelSpec:
        passes = self.optimization.passes
        if sum(isinstance(step, QuantizePass) for step in passes) > 1:
            raise ValueError("optimization.passes: at most one quantize pass")
        _refuse_torch_passes_without_torch_model(passes, self.model.format)
        _refuse_torch_passes_after_onnx_passes(passes)
        _refuse_export_out_of_place(passes)
        _check_generative(passes, self.model)
        return self


GENERATIVE_PASSES: Final[tuple[type[ApiModel], ...]] = (ExportPass, WeightOnlyPass)
"""What a text-generation model's pipeline may hold: the decoder export and weight-only quantization."""
GENERATIVE_PASS_TYPES: Final[tuple[str, ...]] = tuple(pass_type(config) for config in GENERATIVE_PASSES)


def _check_generative(passes: Sequence[Pass], model: ModelSpec) -> None:
    generative = model.task is Task.TEXT_GENERATION
    if generative and model.format is not ModelFormat.HUGGINGFACE:
        raise ValueError(
            f"model.format: task text-generation takes format huggingface (a model directory, or a GGUF file in one), "
            f"not {model.format.value}"
        )
    for index, step in enumerate(passes):
        if isinstance(step, WeightOnlyPass) and not generative:
            raise ValueError(f"optimization.passes[{index}]: weightonly needs model.task text-generation")
        if generative and not isinstance(step, GENERATIVE_PASSES):
            raise ValueError(
                f"optimization.passes[{index}]: {step.type} does not apply to a text-generation model "
                "(its passes are export and weightonly)"
            )
    if sum(isinstance(step, WeightOnlyPass) for step in passes) > 1:
        raise ValueError("optimization.passes: at most one weightonly pass")


def _refuse_torch_passes_without_torch_model(passes: Sequence[Pass], model_format: ModelFormat) -> None:
    if model_format is not ModelFormat.ONNX:
        return
    for index, step in enumerate(passes):
        if isinstance(step, TORCH_PASSES):
            raise ValueError(f"optimization.passes[{index}]: {step.type} needs the PyTorch model; model.format onnx has none")


def _refuse_torch_passes_after_onnx_passes(passes: Sequence[Pass]) -> None:
    first_onnx = first_onnx_pass(passes)
    for index, step in enumerate(passes[first_onnx:], start=first_onnx):
        if isinstance(step, TORCH_PASSES):
            raise ValueError(
                f"optimization.passes[{index}]: {step.type} changes the PyTorch model, so it comes before "
                f"export and the ONNX passes (passes[{first_onnx}] is {passes[first_onnx].type})"
            )


def _refuse_export_out_of_place(passes: Sequence[Pass]) -> None:
    first_onnx = first_onnx_pass(passes)
    for index, step in enumerate(passes):
        if isinstance(step, ExportPass) and index != first_onnx:
            raise ValueError(
                f"optimization.passes[{index}]: export must be the first pass after prune and distill, and only once "
                f"(passes[{first_onnx}] is {passes[first_onnx].type})"
            )


class ObjectMeta(ApiModel):
    """The metadata fields OptiServe reads; the rest of Kubernetes metadata is accepted and ignored."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    name: str = Field(description="Resource name.", min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str | None = Field(default=None, description="Namespace.")


class OptimizedModel(ApiModel):
    """A whole manifest. Parts that are not about optimization are the operator's (`extra` ignored here)."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["optiserve.io/v1alpha1"] = Field(description="optiserve.io/v1alpha1")
    kind: Literal["OptimizedModel"] = Field(description="OptimizedModel")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: OptimizedModelSpec = Field(description="Desired state.")
