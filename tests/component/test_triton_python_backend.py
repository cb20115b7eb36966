"""Serve tiny ONNX models on a real Triton through the OptiServe Python-backend model.

Checks real output values over HTTP and gRPC (a model can load READY yet return
empty outputs when the server environment is wrong), that dynamic batching
merges concurrent requests, variable-length ones included, that one bad request
does not fail the others it was batched with, and that stopping the server
leaves no process behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

import optiserve_jobs.triton_python_model as triton_python_model
from optiserve.local.triton import (
    TritonInstall,
    TritonNotInstalledError,
    TritonServer,
    TritonStartError,
    find_triton_install,
)
from tests.component.triton_helpers import infer_grpc, model_counters, model_metric, settled_counters

MODEL_PY = Path(triton_python_model.__file__)

LINEAR = "linear"
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 4.0
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)

TOKENS = "token_sum"
VOCAB = 10
# Row 0 is the pad id and embeds to 0, so zero padding leaves every sum unchanged.
EMBEDDING = (np.arange(VOCAB, dtype=np.float32) * 1.5).reshape(VOCAB, 1)

MAX_BATCH = 8
CONCURRENCY = 8
REQUESTS = 32


# -- model repository ----------------------------------------------------------------------


def linear_onnx() -> onnx.ModelProto:
    """Y = X @ W + B for X float32 [N, 4]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def token_sum_onnx() -> onnx.ModelProto:
    """S[n] = sum_t EMBEDDING[IDS[n, t]] for IDS int64 [N, T] (T varies per request).

    The Gather fails on an id outside the vocabulary, which gives a request
    Triton accepts but the model cannot serve.
    """
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "IDS"], ["EMB"], axis=0),
            helper.make_node("ReduceSum", ["EMB", "AXES"], ["S"], keepdims=0),
        ],
        "token_sum",
        [helper.make_tensor_value_info("IDS", TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info("S", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(EMBEDDING, "E"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "AXES"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def model_config(
    name: str,
    inputs: list[tuple[str, int, list[int]]],
    outputs: list[tuple[str, int, list[int]]],
    parameters: dict[str, str] | None = None,
    ragged: frozenset[str] = frozenset(),
) -> str:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=MAX_BATCH)
    for input_name, dtype, dims in inputs:
        entry = config.input.add()
        entry.name, entry.data_type = input_name, dtype
        entry.dims.extend(dims)
        # Triton's batcher only merges requests of different shapes for ragged inputs.
        entry.allow_ragged_batch = input_name in ragged
    for output_name, dtype, dims in outputs:
        entry = config.output.add()
        entry.name, entry.data_type = output_name, dtype
        entry.dims.extend(dims)
    # A generous delay so concurrent requests reliably land in one execute().
    config.dynamic_batching.max_queue_delay_microseconds = 20_000
    group = config.instance_group.add()
    group.kind, group.count = mc.ModelInstanceGroup.KIND_CPU, 1
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return str(text_format.MessageToString(config))


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / "model.onnx"))
    shutil.copyfile(MODEL_PY, version / "model.py")
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("model_repository")
    write_model(
        repo,
        LINEAR,
        linear_onnx(),
        model_config(
            LINEAR,
            [("X", mc.TYPE_FP32, [4])],
            [("Y", mc.TYPE_FP32, [3])],
            {"intra_op_threads": "1"},
        ),
    )
    write_model(
        repo,
        TOKENS,
        token_sum_onnx(),
        model_config(
            TOKENS,
            [("IDS", mc.TYPE_INT64, [-1])],
            [("S", mc.TYPE_FP32, [1])],
            {"pad_inputs": "IDS", "onnx_file": "model.onnx"},
            ragged=frozenset({"IDS"}),
        ),
    )
    return repo


@pytest.fixture(scope="module")
def server(
    triton_install: TritonInstall, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    log_path = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer(model_repository, install=triton_install, log_path=log_path) as running:
        running.wait_model_ready(LINEAR, timeout_s=60)
        running.wait_model_ready(TOKENS, timeout_s=60)
        yield running


# -- helpers -------------------------------------------------------------------------------


def expected_linear(x: np.ndarray) -> np.ndarray:
    return np.asarray(x @ W + B)


def expected_token_sum(ids: np.ndarray) -> np.ndarray:
    return np.asarray(EMBEDDING[ids, 0].sum(axis=1, keepdims=True))


def http_infer(client: httpclient.InferenceServerClient, model: str, name: str, array: np.ndarray) -> httpclient.InferResult:
    tensor = httpclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor])


def grpc_infer(client: grpcclient.InferenceServerClient, model: str, name: str, array: np.ndarray) -> grpcclient.InferResult:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor])


def linear_inputs(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    # Batch sizes 1..3 so merged groups mix requests of different sizes.
    return [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(count)]


def token_inputs(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(1, VOCAB, size=(1 + i % 2, 1 + (i * 5) % 11)).astype(np.int64) for i in range(count)]


# -- tests ---------------------------------------------------------------------------------


def test_linear_http(server: TritonServer) -> None:
    x = np.array([[1, 2, 3, 4], [-1, 0, 0.5, 2]], dtype=np.float32)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        y = http_infer(client, LINEAR, "X", x).as_numpy("Y")
    finally:
        client.close()
    assert y is not None and y.shape == (2, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y, expected_linear(x), rtol=1e-6)


def test_linear_grpc(server: TritonServer) -> None:
    x = np.array([[0.25, -2, 3, 1]], dtype=np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        y = grpc_infer(client, LINEAR, "X", x).as_numpy("Y")
    finally:
        client.close()
    assert y is not None and y.shape == (1, 3)
    np.testing.assert_allclose(y, expected_linear(x), rtol=1e-6)


def test_variable_length_http_and_grpc(server: TritonServer) -> None:
    ids = np.array([[1, 2, 3], [9, 9, 0]], dtype=np.int64)
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        via_http = http_infer(http, TOKENS, "IDS", ids).as_numpy("S")
        via_grpc = grpc_infer(grpc, TOKENS, "IDS", ids).as_numpy("S")
    finally:
        http.close()
        grpc.close()
    np.testing.assert_allclose(via_http, [[9.0], [27.0]])
    np.testing.assert_allclose(via_grpc, [[9.0], [27.0]])


def test_concurrent_http_requests_are_merged(server: TritonServer) -> None:
    inputs = linear_inputs(REQUESTS)
    execs_before, success_before = model_counters(server, LINEAR)
    client = httpclient.InferenceServerClient(server.http_url, concurrency=CONCURRENCY)
    try:
        pending = []
        for x in inputs:
            tensor = httpclient.InferInput("X", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            pending.append(client.async_infer(LINEAR, [tensor]))
        results = [request.get_result().as_numpy("Y") for request in pending]
    finally:
        client.close()
    for x, y in zip(inputs, results, strict=True):
        assert y is not None and y.shape == (x.shape[0], 3)
        np.testing.assert_allclose(y, expected_linear(x), rtol=1e-5, atol=1e-6)
    execs_after, success_after = settled_counters(server, LINEAR, success_before + REQUESTS)
    assert success_after - success_before == REQUESTS
    assert execs_after - execs_before < success_after - success_before, "no batch was merged"


def test_onnxruntime_time_is_exported_within_tritons_compute_time(server: TritonServer) -> None:
    """The model's ONNX Runtime counter grows with the load and stays below Triton's compute
    time for the same executions (which also covers the model's code and the stub round trip)."""
    metric = triton_python_model.RUN_TIME_METRIC
    onnx_before = model_metric(server, metric, LINEAR)
    compute_before = model_metric(server, "nv_inference_compute_infer_duration_us", LINEAR)
    _, success_before = model_counters(server, LINEAR)
    for x in linear_inputs(8):
        infer_grpc(server.grpc_url, LINEAR, {"X": x}, "Y")
    settled_counters(server, LINEAR, success_before + 8)
    onnx_spent = model_metric(server, metric, LINEAR) - onnx_before
    compute_spent = model_metric(server, "nv_inference_compute_infer_duration_us", LINEAR) - compute_before
    assert onnx_spent > 0
    assert onnx_spent < compute_spent


def test_concurrent_grpc_variable_length_requests_are_merged(server: TritonServer) -> None:
    inputs = token_inputs(REQUESTS)
    assert len({ids.shape[1] for ids in inputs}) > 1
    execs_before, success_before = model_counters(server, TOKENS)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            results = list(pool.map(lambda ids: grpc_infer(client, TOKENS, "IDS", ids).as_numpy("S"), inputs))
    finally:
        client.close()
    for ids, s in zip(inputs, results, strict=True):
        np.testing.assert_allclose(s, expected_token_sum(ids), rtol=1e-6)
    execs_after, success_after = settled_counters(server, TOKENS, success_before + REQUESTS)
    assert success_after - success_before == REQUESTS
    # Requests of different lengths only share a run because IDS is padded.
    assert execs_after - execs_before < success_after - success_before, "no batch was merged"


def test_bad_request_fails_alone(server: TritonServer) -> None:
    inputs = token_inputs(CONCURRENCY)
    bad_index = 3
    inputs[bad_index] = np.array([[1, 100, 2]], dtype=np.int64)  # 100 is outside the vocabulary
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def call(ids: np.ndarray) -> np.ndarray | InferenceServerException:
        try:
            result: np.ndarray = grpc_infer(client, TOKENS, "IDS", ids).as_numpy("S")
        except InferenceServerException as exc:
            return exc
        return result

    try:
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            outcomes = list(pool.map(call, inputs))
    finally:
        client.close()
    for index, (ids, outcome) in enumerate(zip(inputs, outcomes, strict=True)):
        if index == bad_index:
            assert isinstance(outcome, InferenceServerException)
            assert "inference failed" in str(outcome)
        else:
            assert isinstance(outcome, np.ndarray), f"request {index} failed: {outcome}"
            np.testing.assert_allclose(outcome, expected_token_sum(ids), rtol=1e-6)


def process_group(pgid: int) -> set[int]:
    """Pids of the live processes in process group ``pgid`` (Linux /proc)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def test_stop_leaves_no_process(triton_install: TritonInstall, model_repository: Path) -> None:
    server = TritonServer(model_repository, install=triton_install)
    server.start(timeout_s=120)
    try:
        server.wait_model_ready(LINEAR, timeout_s=60)
        pid = server.pid
        assert pid is not None
        group = process_group(pid)
        assert pid in group
        assert len(group) > 1, "expected Python-backend stub processes in the server's group"
        log_path = server.log_path
    finally:
        server.stop()
    assert not server.is_running()
    assert process_group(pid) == set(), "processes left in the server's group"
    assert log_path is not None and not log_path.exists(), "temporary log not removed"
    server.stop()  # a second stop is a no-op


def test_start_failure_reports_log_tail(triton_install: TritonInstall, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "broken",
        linear_onnx(),
        model_config(
            "broken",
            [("X", mc.TYPE_FP32, [4])],
            [("Y", mc.TYPE_FP32, [3])],
            {"onnx_file": "missing.onnx"},
        ),
    )
    server = TritonServer(repo, install=triton_install)
    with pytest.raises(TritonStartError) as info:
        server.start(timeout_s=120)
    assert "missing.onnx" in str(info.value)
    assert not server.is_running()
    server.stop()


def test_missing_install_names_setup_command(tmp_path: Path) -> None:
    with pytest.raises(TritonNotInstalledError) as info:
        find_triton_install(tmp_path)
    message = str(info.value)
    assert "tritonserver binary" in message
    assert "scripts/setup_triton.sh" in message


def test_install_location_from_environment(triton_install: TritonInstall, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTISERVE_TRITON_HOME", os.fspath(triton_install.home))
    assert find_triton_install() == triton_install
