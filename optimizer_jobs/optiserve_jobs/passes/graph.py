"""Graph optimization: transformer fusion (onnxruntime.transformers), then an ONNX Runtime level."""

from __future__ import annotations

from pathlib import Path

from optiserve.api.spec import FusionKind, GraphLevel, GraphPass
from optiserve_jobs.passes.base import PassContext, PassOutcome, count_ops

_FUSED_TYPES = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "BiasGelu",
    "EmbedLayerNormalization",
    "FastGelu",
    "LayerNormalization",
    "Gelu",
)


def _fuse_transformer(model: Path, output: Path, context: PassContext) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    shape = context.source.transformer
    optimized = optimize_model(
        str(model),
        model_type=shape.model_type if shape and shape.model_type in ("bert",) else "bert",
        num_heads=shape.num_heads if shape else 0,
        hidden_size=shape.hidden_size if shape else 0,
        opt_level=0,
    )
    optimized.save_model_to_file(str(output))


def _ort_level(model: Path, output: Path, level: GraphLevel, threads: int) -> None:
    import onnxruntime as ort

    levels = {
        GraphLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        GraphLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        GraphLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(output)
    options.intra_op_num_threads = threads
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


class Graph:
    name = "graph"

    def __init__(self, config: GraphPass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        fuse = self.config.fusion is FusionKind.BERT or (
            self.config.fusion is FusionKind.AUTO and context.source.transformer is not None
        )
        if not fuse and self.config.level is GraphLevel.DISABLED:
            return PassOutcome.skipped("no fusion applies and level is disabled")
        current = model
        if fuse:
            fused = context.output_path(index, "fused")
            _fuse_transformer(current, fused, context)
            current = fused
        if self.config.level is not GraphLevel.DISABLED:
            leveled = context.output_path(index, f"graph-{self.config.level.value}")
            _ort_level(current, leveled, self.config.level, context.threads)
            current = leveled
        ops = count_ops(current)
        fused_ops = {k: v for k, v in ops.items() if k in _FUSED_TYPES}
        summary = ", ".join(f"{v} {k}" for k, v in sorted(fused_ops.items())) or "no fused operators"
        detail = f"fusion {'on' if fuse else 'off'}, level {self.config.level.value}: {summary}; {sum(ops.values())} nodes"
        return PassOutcome.ok(current, detail, nodes=sum(ops.values()))
