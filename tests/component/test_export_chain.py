"""The export pass's exporter chain: the first exporter whose model passes every check is kept,
the others' reasons are recorded, and exporter output goes to a log file, not the terminal."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from optiserve.api.spec import ExportPass, ModelSpec
from optiserve.cli import main
from optiserve_jobs.datasets import load_dataset
from optiserve_jobs.passes import PassContext, PassOutcome, PassStatus, build_pass
from optiserve_jobs.passes.export import TORCH_EXPORT, TORCHSCRIPT, TORCHSCRIPT_TRACED, captured_output
from optiserve_jobs.runners import OrtRunner
from optiserve_jobs.source_model import load_source_model
from tests.component.torch_factories import TinyClassifier
from tests.support.models import FAST_BENCHMARK, manifest, tiny_dataset

D_MODEL = 64
SEQUENCE = 5
ENCODER_INPUTS = [{"name": "x", "shape": [-1, D_MODEL], "dtype": "float32"}]
CLASSIFIER_INPUTS = [{"name": "x", "shape": [8], "dtype": "float32"}]
ENCODER_FACTORY = """
import torch


def build(weights_path):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    encoder.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return encoder.eval()
"""

NOISY_FACTORY = """
import torch


class Noisy(torch.nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)


def build(weights_path):
    return Noisy().eval()
"""


class ScaledClassifier(torch.nn.Module):
    """A classifier whose forward takes an optional second argument the source does not feed."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyClassifier()

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.body(x)
        if scale is not None:
            logits = logits * scale
        return logits  # type: ignore[no-any-return]


def _transformer_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, 4, batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def _encoder_data(path: Path, rows: int = 8) -> Path:
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.normal(size=(rows, SEQUENCE, D_MODEL)).astype(np.float32))
    return path


def _export(tmp_path: Path, model: dict[str, Any], data: Path, config: ExportPass | None = None) -> PassOutcome:
    """Run the export pass alone on a source, with the job's context minus the rest of the job."""
    spec = ModelSpec.model_validate(model)
    source = load_source_model(spec, base_dir=tmp_path, download_dir=tmp_path)
    sample = load_dataset(data, source, limit=8)
    context = PassContext(
        work_dir=tmp_path,
        source=source,
        base_dir=tmp_path,
        threads=2,
        sample=sample,
        load_dataset=lambda uri, n: load_dataset(Path(uri), source, limit=n),
        log_dir=tmp_path / "logs",
    )
    return build_pass(config or ExportPass(type="export")).run(source.path, context, 0)


def _assert_terminal_is_quiet(capfd: pytest.CaptureFixture[str]) -> str:
    """No TorchScript IR on stdout/stderr (a dump runs to hundreds of lines); the CLI's own table may wrap."""
    out, err = capfd.readouterr()
    terminal = out + err
    assert not any("graph(" in line or "%" in line for line in terminal.splitlines()), terminal[:2000]
    assert len(terminal.splitlines()) < 40, terminal[:2000]
    return terminal


def test_plain_module_keeps_the_first_exporter(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    torch.save(TinyClassifier().state_dict(), tmp_path / "weights.pt")
    tiny_dataset(tmp_path / "validation.npz")
    model = {
        "uri": "weights.pt",
        "format": "pytorch",
        "entrypoint": "tests.component.torch_factories:build",
        "inputs": CLASSIFIER_INPUTS,
    }
    outcome = _export(tmp_path, model, tmp_path / "validation.npz")
    assert outcome.status is PassStatus.OK, outcome.detail
    assert outcome.facts["exporter"] == TORCHSCRIPT
    assert not any(key.startswith("rejected_") for key in outcome.facts)
    assert outcome.detail.startswith(f"exporter {TORCHSCRIPT}, opset 17, checker ok")
    assert "tried first" not in outcome.detail
    assert (tmp_path / "logs/00-export.log").is_file()
    _assert_terminal_is_quiet(capfd)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_scripted_module_with_optional_argument_exports_through_a_trace(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The TorchScript-based exporter cannot leave a ScriptModule's optional argument unset; a trace binds it."""
    torch.jit.save(torch.jit.script(ScaledClassifier().eval()), str(tmp_path / "model.pt"))
    tiny_dataset(tmp_path / "validation.npz")
    model = {"uri": "model.pt", "format": "torchscript", "inputs": CLASSIFIER_INPUTS}
    outcome = _export(tmp_path, model, tmp_path / "validation.npz")
    assert outcome.status is PassStatus.OK, outcome.detail
    assert outcome.facts["exporter"] == TORCHSCRIPT_TRACED
    assert f"tried first: {TORCHSCRIPT}: RuntimeError" in outcome.detail
    assert set(outcome.facts) >= {f"rejected_{TORCHSCRIPT}", "export_log"}
    assert outcome.output is not None
    data = np.load(tmp_path / "validation.npz")["x"]
    for batch in (1, 3, 8):
        expected = TinyClassifier()(torch.from_numpy(data[:batch])).detach().numpy()
        np.testing.assert_allclose(OrtRunner(outcome.output, threads=2).run({"x": data[:batch]}), expected, atol=1e-4)
    _assert_terminal_is_quiet(capfd)


def test_transformer_encoder_module_falls_back_to_torch_export(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """As an nn.Module, TransformerEncoder takes its fused fast path under the TorchScript-based exporter;
    torch.export captures the unfused ops, with dynamic batch and sequence."""
    (tmp_path / "encoder.py").write_text(ENCODER_FACTORY)
    torch.save(_transformer_encoder().state_dict(), tmp_path / "weights.pt")
    model = {"uri": "weights.pt", "format": "pytorch", "entrypoint": "encoder.py:build", "inputs": ENCODER_INPUTS}
    outcome = _export(tmp_path, model, _encoder_data(tmp_path / "validation.npz"))
    assert outcome.status is PassStatus.OK, outcome.detail
    assert outcome.facts["exporter"] == TORCH_EXPORT
    assert "(dynamic shapes)" in outcome.detail
    assert f"tried first: {TORCHSCRIPT}: " in outcome.detail
    assert outcome.output is not None
    longer = np.random.default_rng(2).normal(size=(3, SEQUENCE + 2, D_MODEL)).astype(np.float32)
    with torch.inference_mode():
        expected = _transformer_encoder()(torch.from_numpy(longer)).numpy()
    np.testing.assert_allclose(OrtRunner(outcome.output, threads=2).run({"x": longer}), expected, atol=1e-4)
    _assert_terminal_is_quiet(capfd)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_scripted_transformer_encoder_lists_every_exporter_and_keeps_the_ir_in_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The scripted TransformerEncoder defeats all three exporters; the job fails naming each, quietly."""
    scripted = torch.jit.script(_transformer_encoder())
    torch.jit.save(scripted, str(tmp_path / "model.pt"))
    _encoder_data(tmp_path / "validation.npz")
    spec = {
        "model": {"uri": "model.pt", "format": "torchscript", "task": "generic", "inputs": ENCODER_INPUTS, "outputs": ["y"]},
        "optimization": {"passes": [{"type": "export"}]},
        "validation": {"datasetUri": "validation.npz"},
        "benchmark": FAST_BENCHMARK,
    }
    (tmp_path / "om.yaml").write_text(yaml.safe_dump(manifest(spec)))
    capfd.readouterr()
    assert main(["optimize", "-f", str(tmp_path / "om.yaml"), "--out", str(tmp_path / "out")]) == 1
    terminal = _assert_terminal_is_quiet(capfd)
    reason = json.loads((tmp_path / "out/report.json").read_text())["reason"]
    assert reason.startswith("pass export failed: no exporter produced a model that passes the checks")
    for name in (TORCHSCRIPT, TORCHSCRIPT_TRACED, TORCH_EXPORT):
        assert f"{name}: " in reason
    assert "unavailable: torch.export takes nn.Module sources" in reason
    log = tmp_path / "out/logs/00-export.log"
    assert str(log) in reason and "no exporter produced" in terminal
    text = log.read_text()
    assert f"--- exporter {TORCHSCRIPT} failed: RuntimeError" in text
    assert "graph(" in text, "the TorchScript IR dump belongs in the log"


def test_numerical_mismatch_on_every_exporter_fails_with_each_reason(tmp_path: Path) -> None:
    """Random noise exports, but ONNX Runtime's draws are not PyTorch's: every exporter fails the check."""
    (tmp_path / "noisy.py").write_text(NOISY_FACTORY)
    (tmp_path / "weights.pt").write_bytes(b"")
    tiny_dataset(tmp_path / "validation.npz")
    model = {"uri": "weights.pt", "format": "pytorch", "entrypoint": "noisy.py:build", "inputs": CLASSIFIER_INPUTS}
    outcome = _export(tmp_path, model, tmp_path / "validation.npz")
    assert outcome.status is PassStatus.FAILED
    assert outcome.detail.startswith("no exporter produced a model that passes the checks: ")
    for name in (TORCHSCRIPT, TORCH_EXPORT):
        assert f"{name}: numerical check failed: max abs error" in outcome.detail, outcome.detail
        assert str(outcome.facts[f"rejected_{name}"]).startswith("numerical check failed")
    assert outcome.detail.endswith(f"(log: {tmp_path / 'logs/00-export.log'})")
    assert float(outcome.facts["max_abs_error"]) > 1e-3


def test_captured_output_restores_the_terminal_after_an_exception(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "export.log"
    with pytest.raises(RuntimeError, match="exporter broke"), captured_output(log):
        os.write(1, b"fd 1 from C\n")
        os.write(2, b"fd 2 from C\n")
        sys.stdout.write("python stdout\n")
        warnings.warn("an exporter warning", UserWarning, stacklevel=1)
        raise RuntimeError("exporter broke")
    sys.stdout.write("after\n")
    os.write(2, b"after on fd 2\n")
    out, err = capfd.readouterr()
    assert (out, err) == ("after\n", "after on fd 2\n")
    text = log.read_text()
    assert all(s in text for s in ("fd 1 from C", "fd 2 from C", "python stdout", "an exporter warning"))
