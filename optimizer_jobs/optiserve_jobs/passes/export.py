"""Export a PyTorch source to ONNX, check it, and compare its outputs with the source.

Exporters are tried in order; the first whose model passes `onnx.checker`, has a dynamic batch
dimension and matches PyTorch within atol/rtol is kept. What the exporters print (warnings,
TorchScript IR dumps written by C++ code) goes to a log file, not to the terminal.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import onnx

from optiserve.api.spec import ExportPass, ModelFormat, Task
from optiserve_jobs.passes.base import PassContext, PassOutcome, save_model
from optiserve_jobs.runners import OrtRunner, TorchRunner

if TYPE_CHECKING:
    import torch

TORCHSCRIPT = "torchscript"
TORCHSCRIPT_TRACED = "torchscript-traced"
TORCH_EXPORT = "torch.export"
REASON_CHARS = 200
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class ExportCheckError(Exception):
    """An exporter produced a model, but the model failed one of the pass's checks."""

    def __init__(self, message: str, max_abs_error: float | None = None) -> None:
        super().__init__(message)
        self.max_abs_error = max_abs_error


class ExporterUnavailableError(Exception):
    """The exporter cannot run here, or does not take this kind of module."""


@dataclass(frozen=True)
class Exporter:
    name: str
    write: Callable[[Path], str]
    """Write the ONNX model to the path; return a note on how it was exported ('' for none)."""


@dataclass(frozen=True)
class Accepted:
    exporter: str
    note: str
    max_abs_error: float


def _dynamic_axes(context: PassContext) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for spec in context.source.inputs:
        axes[spec.name] = {0: "batch"} | {i + 1: f"{spec.name}_dim{i + 1}" for i, d in enumerate(spec.shape) if d < 0}
        if context.source.is_text:
            axes[spec.name] = {0: "batch", 1: "sequence"}
    for name in context.source.outputs:
        axes[name] = {0: "batch"}
    return axes


def _dynamic_shapes(context: PassContext) -> tuple[dict[int, Any], ...]:
    """The same axes as `_dynamic_axes`, as torch.export dimensions, one dict per positional input."""
    from torch.export import Dim

    batch, sequence = Dim("batch"), Dim("sequence")
    shapes: list[dict[int, Any]] = []
    for spec in context.source.inputs:
        if context.source.is_text:
            shapes.append({0: batch, 1: sequence})
            continue
        name = re.sub(r"\W", "_", spec.name)
        shapes.append({0: batch} | {i + 1: Dim(f"{name}_dim{i + 1}") for i, d in enumerate(spec.shape) if d < 0})
    return tuple(shapes)


def one_line_reason(error: BaseException) -> str:
    """`Type: first line` of an exception, trimmed, and with the innermost cause for torch.onnx's wrappers.

    torch.onnx's dynamo errors open with a generic line ('Failed to export the model with
    torch.export'); the cause they wrap says what went wrong.
    """
    reason = f"{type(error).__name__}: {_first_line(error)}"
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is not error and type(error).__module__.startswith("torch.onnx"):
        reason = f"{type(error).__name__} ({type(cause).__name__}: {_first_line(cause)})"
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in _ANSI_ESCAPE.sub("", str(error)).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _positional_call(module: torch.nn.Module) -> torch.nn.Module:
    """An nn.Module that calls a TorchScript module with the example's inputs only.

    `torch.jit.trace` returns a ScriptModule unchanged, so the trace goes through this wrapper. The
    trace binds the arguments the example leaves out (an optional mask, say) to their defaults, which
    the TorchScript-based exporter cannot do for a ScriptModule, and types the graph's inputs from the
    example; the script's own control flow is kept as written.
    """
    import torch

    class PositionalCall(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> Any:
            return self.inner(*inputs)

    return PositionalCall(module).eval()


class _ExportChain:
    """The exporters this source can go through, in the order they are tried."""

    def __init__(
        self, module: torch.nn.Module, example: tuple[torch.Tensor, ...], context: PassContext, opset: int, log: TextIO
    ) -> None:
        self.module = module
        self.log = log
        self.example = example
        self.context = context
        self.opset = opset
        self.names = [i.name for i in context.source.inputs]

    def exporters(self) -> list[Exporter]:
        import torch

        chain = [Exporter(TORCHSCRIPT, lambda path: self._torchscript(self.module, path))]
        if isinstance(self.module, torch.jit.ScriptModule):
            chain.append(Exporter(TORCHSCRIPT_TRACED, self._traced))
        chain.append(Exporter(TORCH_EXPORT, self._torch_export))
        return chain

    def _torchscript(self, module: Any, path: Path) -> str:
        import torch

        torch.onnx.export(
            module,
            self.example,
            str(path),
            input_names=self.names,
            output_names=self.context.source.outputs,
            dynamic_axes=_dynamic_axes(self.context),
            opset_version=self.opset,
            dynamo=False,
        )
        return ""

    def _traced(self, path: Path) -> str:
        import torch

        traced = torch.jit.trace(_positional_call(self.module), self.example, check_trace=False)  # type: ignore[no-untyped-call]  # unannotated in torch
        return self._torchscript(traced, path)

    def _torch_export(self, path: Path) -> str:
        import torch

        if isinstance(self.module, torch.jit.ScriptModule):
            raise ExporterUnavailableError("torch.export takes nn.Module sources, not TorchScript modules")
        if importlib.util.find_spec("onnxscript") is None:
            raise ExporterUnavailableError("onnxscript is not installed (the torch.export-based exporter needs it)")
        note = "dynamic shapes"
        try:
            program = self._dynamo(_dynamic_shapes(self.context))
        except Exception as e:  # torch.export refuses dims it cannot keep dynamic; a static export still says why
            _log_failure(self.log, f"{TORCH_EXPORT} with dynamic shapes", e)
            note = f"static shapes, dynamic ones failed: {one_line_reason(e)}"
            program = self._dynamo(None)
        save_model(program.model_proto, path)
        return note

    def _dynamo(self, dynamic_shapes: tuple[dict[int, Any], ...] | None) -> Any:
        import torch

        return torch.onnx.export(
            self.module,
            self.example,
            input_names=self.names,
            output_names=self.context.source.outputs,
            opset_version=self.opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
        )


class _NumericalCheck:
    """PyTorch's outputs on the sample, and ONNX Runtime's on the whole sample and at batch 1 and 3.

    The example the exporters see has batch 2, so the other sizes show whether the batch axis stayed
    dynamic through the export.
    """

    def __init__(self, module: torch.nn.Module, context: PassContext, config: ExportPass) -> None:
        self.context = context
        self.config = config
        sample = context.sample
        sizes = [len(sample)] + ([1, 3] if len(sample) >= 3 else [])
        self.batches = [sample.take(n).inputs for n in dict.fromkeys(sizes)]
        torch_runner = TorchRunner(module, [i.name for i in context.source.inputs], threads=context.threads)
        self.expected = [torch_runner.run(batch) for batch in self.batches]

    def max_abs_error(self, path: Path) -> float:
        runner = OrtRunner(path, threads=self.context.threads)
        max_abs = 0.0
        for batch, expected in zip(self.batches, self.expected, strict=True):
            size = len(next(iter(batch.values())))
            try:
                actual = runner.run(batch)
            except Exception as e:
                raise ExportCheckError(f"ONNX Runtime cannot run it at batch {size}: {_first_line(e)}") from e
            if actual.shape != expected.shape:
                raise ExportCheckError(f"output shape {actual.shape} at batch {size}, PyTorch gives {expected.shape}")
            error = float(np.max(np.abs(expected - actual))) if expected.size else 0.0
            max_abs = max(max_abs, error)
            if not np.allclose(actual, expected, atol=self.config.atol, rtol=self.config.rtol):
                raise ExportCheckError(
                    f"numerical check failed: max abs error {error:.3g} at batch {size} exceeds "
                    f"atol {self.config.atol} / rtol {self.config.rtol}",
                    max_abs_error=error,
                )
        return max_abs


def _require_dynamic_batch(path: Path) -> None:
    for value in onnx.load(str(path), load_external_data=False).graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            raise ExportCheckError(f"input {value.name} has a fixed batch dimension {dims[0].dim_value}")


def _opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _log_failure(log: TextIO, what: str, error: BaseException) -> None:
    """The full exception, traceback and message (IR dumps included), goes to the log only."""
    log.write(f"--- {what} failed: {one_line_reason(error)}\n")
    if not isinstance(error, ExportCheckError):  # a failed check is said in full by its one line
        traceback.print_exception(error, file=log)


def _rejection(error: Exception) -> str:
    if isinstance(error, ExportCheckError):
        return str(error)
    if isinstance(error, ExporterUnavailableError):
        return f"unavailable: {error}"
    return one_line_reason(error)


def _flush_c_stdio() -> None:
    """Flush C stdio buffers, so what C++ code printed lands in the log and not after the redirect ends."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[TextIO]:
    """Send Python warnings, sys.stdout/sys.stderr and file descriptors 1 and 2 to `log_path`.

    The descriptors matter because the TorchScript-based exporter prints IR dumps from C++, which no
    Python-level redirect sees. Everything is restored on the way out, exceptions included.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8", errors="replace", buffering=1) as log:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        _flush_c_stdio()
        saved: list[tuple[int, int]] = []
        try:
            for fd in (1, 2):
                with contextlib.suppress(OSError):  # a closed descriptor has nothing to redirect
                    saved.append((fd, os.dup(fd)))
                    os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = _warnings_to(log)
                yield log
        finally:
            log.flush()
            for stream in (sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.flush()
            _flush_c_stdio()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _warnings_to(log: TextIO) -> Callable[..., None]:
    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        log.write(warnings.formatwarning(message, category, filename, lineno, line))

    return show


def _keep_log(log_path: Path, log_dir: Path | None) -> Path:
    """Copy the log where it outlives the job's work directory; return the copy that will remain."""
    if log_dir is None:
        return log_path
    log_dir.mkdir(parents=True, exist_ok=True)
    kept = log_dir / log_path.name
    shutil.copyfile(log_path, kept)
    return kept


class Export:
    name = "export"

    def __init__(self, config: ExportPass) -> None:
        self.config = config

    def run(self, model: Path, context: PassContext, index: int) -> PassOutcome:
        if context.source.spec.task is Task.TEXT_GENERATION:
            from optiserve_jobs.generative.export_pass import export_decoder

            return export_decoder(self.config, context, index)
        import torch

        from optiserve_jobs.torch_models import load_torch_module

        if context.source.format is ModelFormat.ONNX:
            return PassOutcome.skipped("source is already ONNX")
        module = context.torch_module if context.torch_module is not None else load_torch_module(context.source, context.base_dir)
        names = [i.name for i in context.source.inputs]
        example = tuple(torch.from_numpy(context.sample.take(2).inputs[n]) for n in names)
        output = context.output_path(index, self.name)
        log_path = output.with_suffix(".log")
        rejected: list[tuple[str, str]] = []
        accepted: Accepted | None = None
        last_error: float | None = None
        try:
            with captured_output(log_path) as log:
                check = _NumericalCheck(module, context, self.config)
                for exporter in _ExportChain(module, example, context, self.config.opset, log).exporters():
                    try:
                        accepted = self._attempt(exporter, output, check, log)
                        break
                    except Exception as e:  # an exporter's failure is that exporter's; the next one is tried
                        _log_failure(log, f"exporter {exporter.name}", e)
                        rejected.append((exporter.name, _rejection(e)))
                        if isinstance(e, ExportCheckError) and e.max_abs_error is not None:
                            last_error = e.max_abs_error
        finally:
            kept_log = _keep_log(log_path, context.log_dir)
        return self._outcome(output, accepted, rejected, kept_log, last_error)

    def _attempt(self, exporter: Exporter, output: Path, check: _NumericalCheck, log: TextIO) -> Accepted:
        log.write(f"=== exporter {exporter.name}\n")
        output.unlink(missing_ok=True)
        note = exporter.write(output)
        onnx.checker.check_model(str(output), full_check=True)
        _require_dynamic_batch(output)
        max_abs = check.max_abs_error(output)
        log.write(f"=== exporter {exporter.name} accepted, max abs error {max_abs:.3g}\n")
        return Accepted(exporter.name, note, max_abs)

    def _outcome(
        self, output: Path, accepted: Accepted | None, rejected: list[tuple[str, str]], log: Path, last_error: float | None
    ) -> PassOutcome:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in rejected)
        facts: dict[str, float | int | str] = {"export_log": str(log)}
        facts |= {f"rejected_{name}": reason for name, reason in rejected}
        if accepted is None:
            if last_error is not None:
                facts["max_abs_error"] = last_error
            return PassOutcome.failed(f"no exporter produced a model that passes the checks: {reasons} (log: {log})", **facts)
        note = f" ({accepted.note})" if accepted.note else ""
        earlier = f"; tried first: {reasons}" if rejected else ""
        detail = (
            f"exporter {accepted.exporter}{note}, opset {_opset(output)}, checker ok, "
            f"max abs error {accepted.max_abs_error:.2g}{earlier}; log: {log}"
        )
        return PassOutcome.ok(output, detail, exporter=accepted.exporter, max_abs_error=accepted.max_abs_error, **facts)
