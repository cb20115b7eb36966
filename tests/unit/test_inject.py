"""`--inject` values and their rewrite of a model repository through Triton's config schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from optiserve.local.inject import (
    DEFAULT_OUTPUT_NOISE,
    ERRORS_PARAMETER,
    LATENCY_PARAMETER,
    NOISE_PARAMETER,
    Injection,
    InjectionError,
    inject_config,
    inject_repository,
    injector_for,
    parse_inject,
    parse_injections,
)
from optiserve.resources.triton_config import parse_model_config, render_model_config
from optiserve_jobs import triton_python_model as tpm

MODEL_PY = Path(tpm.__file__)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("latency=2x", Injection(latency_factor=2.0)),
        ("latency=1.5", Injection(latency_factor=1.5)),
        (" Latency = 3X ", Injection(latency_factor=3.0)),
        ("errors=5%", Injection(error_fraction=0.05)),
        ("errors=0.25", Injection(error_fraction=0.25)),
        ("errors=100%", Injection(error_fraction=1.0)),
        ("accuracy-drop", Injection(output_noise=DEFAULT_OUTPUT_NOISE)),
        ("accuracy-drop=0.3", Injection(output_noise=0.3)),
    ],
)
def test_parse_inject(option: str, expected: Injection) -> None:
    assert parse_inject(option) == expected


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("latency=fast", r"--inject latency=fast: 'fast' is not a number"),
        ("latency=1x", r"--inject latency=1x: the factor must be above 1"),
        ("latency=0.5x", r"the factor must be above 1"),
        ("latency=infx", r"not a finite number"),
        ("latency=", r"--inject latency=: missing value"),
        ("latency", r"--inject latency: missing value"),
        ("errors=0%", r"--inject errors=0%: the error fraction must be above 0"),
        ("errors=150%", r"at most 100%"),
        ("errors=1.5", r"at most 100%"),
        ("errors=five%", r"'five' is not a number"),
        ("accuracy-drop=", r"missing value"),
        ("accuracy-drop=-1", r"the relative noise must be above 0"),
        ("throughput=2x", r"--inject throughput=2x: unknown kind 'throughput'"),
        ("", r"unknown kind ''"),
    ],
)
def test_bad_inject_names_the_value(option: str, message: str) -> None:
    with pytest.raises(InjectionError, match=message):
        parse_inject(option)


def test_injections_combine_each_kind_once() -> None:
    combined = parse_injections(["latency=2x", "errors=5%", "accuracy-drop=0.5"])
    assert combined == Injection(latency_factor=2.0, error_fraction=0.05, output_noise=0.5)
    assert str(combined) == "latency=2x, errors=5%, accuracy-drop=0.5"
    assert parse_injections([]) == Injection()
    with pytest.raises(InjectionError, match="--inject latency=3x: latency is given more than once"):
        parse_injections(["latency=2x", "latency=3x"])


def test_parameter_names_are_the_models() -> None:
    assert (LATENCY_PARAMETER, ERRORS_PARAMETER, NOISE_PARAMETER) == tpm.INJECTION_PARAMETERS


def python_config(name: str = "embedder") -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[3])
    config.dynamic_batching.max_queue_delay_microseconds = 500
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    config.parameters["intra_op_threads"].string_value = "2"
    return config


def test_inject_config_is_a_copy_with_parameters() -> None:
    original = python_config()
    injected = inject_config(original, Injection(latency_factor=2.0, error_fraction=0.05))
    assert injected.parameters[LATENCY_PARAMETER].string_value == "2.0"
    assert injected.parameters[ERRORS_PARAMETER].string_value == "0.05"
    assert NOISE_PARAMETER not in injected.parameters
    assert LATENCY_PARAMETER not in original.parameters
    # Everything else is untouched.
    for key in (LATENCY_PARAMETER, ERRORS_PARAMETER):
        del injected.parameters[key]
    assert injected == original


def test_the_model_reads_what_injection_writes() -> None:
    injected = inject_config(python_config(), parse_injections(["latency=2.5x", "errors=5%", "accuracy-drop"]))
    # Triton hands the Python model its config as JSON in this form.
    as_json = json.loads(json_format.MessageToJson(injected, preserving_proto_field_name=True))
    assert tpm.parse_injection(as_json) == tpm.Injection(latency_factor=2.5, error_fraction=0.05, output_noise=1.0)


def test_inject_config_refuses_other_backends() -> None:
    config = python_config()
    config.backend = "onnxruntime"
    with pytest.raises(InjectionError, match="model 'embedder': injection needs the OptiServe Python-backend model"):
        inject_config(config, Injection(latency_factor=2.0))


def write_repository(root: Path, models: dict[str, mc.ModelConfig], model_py: str | None = None) -> Path:
    for name, config in models.items():
        version = root / name / "1"
        version.mkdir(parents=True)
        (version / "model.onnx").write_bytes(b"onnx bytes")
        if model_py is None:
            shutil.copyfile(MODEL_PY, version / "model.py")
        else:
            (version / "model.py").write_text(model_py)
        (root / name / "config.pbtxt").write_text(render_model_config(config))
    return root


def test_inject_repository_rewrites_a_copy(tmp_path: Path) -> None:
    source = write_repository(tmp_path / "repo", {"a": python_config("a"), "b": python_config("b")})
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    destination = inject_repository(source, tmp_path / "injected", Injection(error_fraction=0.5))
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    for name in ("a", "b"):
        config = parse_model_config((destination / name / "config.pbtxt").read_text())
        assert config.parameters[ERRORS_PARAMETER].string_value == "0.5"
        assert config.parameters["intra_op_threads"].string_value == "2"
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert (destination / name / "1" / "model.onnx").read_bytes() == b"onnx bytes"


def test_injector_for_optiserve_run(tmp_path: Path) -> None:
    assert injector_for([]) is None
    with pytest.raises(ValueError, match="--inject errors=x%"):
        injector_for(["errors=x%"])
    repository = write_repository(tmp_path / "repo", {"m": python_config("m")})
    inject = injector_for(["accuracy-drop=0.4"])
    assert inject is not None
    inject(repository)
    config = parse_model_config((repository / "m" / "config.pbtxt").read_text())
    assert config.parameters[NOISE_PARAMETER].string_value == "0.4"


def test_a_model_that_predates_injection_is_refused(tmp_path: Path) -> None:
    source = write_repository(tmp_path / "repo", {"m": python_config("m")}, model_py="class TritonPythonModel: ...\n")
    with pytest.raises(InjectionError, match=r"model 'm': 1/model.py does not read inject_latency_factor; re-publish"):
        inject_repository(source, tmp_path / "injected", Injection(latency_factor=2.0))
    assert not (tmp_path / "injected").exists()


def test_a_refused_repository_is_left_unchanged(tmp_path: Path) -> None:
    other = python_config("z")
    other.backend = "onnxruntime"
    repository = write_repository(tmp_path / "repo", {"a": python_config("a"), "z": other})
    before = (repository / "a" / "config.pbtxt").read_text()
    inject = injector_for(["latency=2x"])
    assert inject is not None
    with pytest.raises(InjectionError, match="model 'z'"):
        inject(repository)
    assert (repository / "a" / "config.pbtxt").read_text() == before


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "is not a directory"),
        ("empty", "has no <model>/config.pbtxt"),
        ("garbled", "m/config.pbtxt: not a Triton model config"),
        ("exists", "already exists"),
    ],
)
def test_inject_repository_errors(tmp_path: Path, setup: str, message: str) -> None:
    source = tmp_path / "repo"
    destination = tmp_path / "injected"
    if setup != "missing":
        source.mkdir()
    if setup == "garbled":
        write_repository(source, {"m": python_config("m")})
        (source / "m" / "config.pbtxt").write_text("name: {{{")
    if setup == "exists":
        write_repository(source, {"m": python_config("m")})
        destination.mkdir()
    with pytest.raises(InjectionError, match=message):
        inject_repository(source, destination, Injection(latency_factor=2.0))


def test_nothing_to_inject(tmp_path: Path) -> None:
    source = write_repository(tmp_path / "repo", {"m": python_config("m")})
    with pytest.raises(InjectionError, match="nothing to inject"):
        inject_repository(source, tmp_path / "injected", Injection())
