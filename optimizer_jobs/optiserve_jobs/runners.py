"""Run a model variant on a batch: ONNX Runtime for ONNX files, PyTorch eager for torch sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def session_feed(session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs the session declares, cast to its types (a float16-IO candidate takes float16)."""
    feed = {}
    for declared in session.get_inputs():
        dtype = _ORT_TYPES.get(declared.type)
        value = inputs[declared.name]
        feed[declared.name] = value if dtype is None else value.astype(dtype, copy=False)
    return feed


class Runner(Protocol):
    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The first output for a batch of inputs."""
        ...


def ort_session(
    path: Path, *, threads: int, spinning: bool = True, spin_between_runs: bool = True, profile_prefix: str | None = None
) -> Any:
    """An ONNX Runtime CPU session. `spin_between_runs=False` stops the pool's threads spinning
    when a run ends (they still spin within it): an idle benchmark worker's spinning threads
    took a core from the worker being timed and made it measure 3.5x slower (measured on 2 cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not spin_between_runs:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtRunner:
    def __init__(self, path: Path, *, threads: int, spinning: bool = True, spin_between_runs: bool = True) -> None:
        self.session = ort_session(path, threads=threads, spinning=spinning, spin_between_runs=spin_between_runs)
        self.input_types = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()}

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch; inputs are cast to what the model declares (a float16-IO candidate takes float16)."""
        feed = {
            name: inputs[name] if dtype is None else inputs[name].astype(dtype, copy=False)
            for name, dtype in self.input_types.items()
        }
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


class TorchRunner:
    def __init__(self, module: Any, input_names: list[str], *, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.module = module
        self.input_names = input_names

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self.module(*(torch.from_numpy(inputs[n]) for n in self.input_names))
        if isinstance(output, (tuple, list)):
            output = output[0]
        return np.asarray(output.float().numpy())


@dataclass(frozen=True)
class VariantSpec:
    """A picklable description of a variant, so a worker process can build its own runner."""

    name: str
    onnx_path: Path | None = None
    torch_source: Any = None  # a SourceModel, for the PyTorch baseline
    base_dir: Path | None = None

    def build(self, threads: int) -> Runner:
        """The variant's runner; ONNX Runtime's threads stop spinning between runs, so a variant
        waiting for its next round takes no CPU from the one being timed."""
        if self.onnx_path is not None:
            return OrtRunner(self.onnx_path, threads=threads, spin_between_runs=False)
        from optiserve_jobs.torch_models import load_torch_module

        module = load_torch_module(self.torch_source, self.base_dir)
        return TorchRunner(module, [i.name for i in self.torch_source.inputs], threads=threads)
