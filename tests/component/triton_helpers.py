"""Talking to a real Triton server in tests: inference over HTTP and gRPC, and its metrics."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from optiserve.local.triton import TritonServer
from tests.support.eventually import eventually

_TRITON_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def _infer(client_module: Any, url: str, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    with client_module.InferenceServerClient(url) as client:
        tensors = []
        for name, array in inputs.items():
            tensor = client_module.InferInput(name, list(array.shape), _TRITON_DTYPES[array.dtype])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return np.asarray(client.infer(model, tensors).as_numpy(output))


def infer_http(url: str, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    return _infer(httpclient, url, model, inputs, output)


def infer_grpc(url: str, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    return _infer(grpcclient, url, model, inputs, output)


def _metrics_text(server: TritonServer) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return str(response.read().decode())


def _value(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {model} missing from /metrics"
    return float(match.group(1))


def model_metric(server: TritonServer, name: str, model: str) -> float:
    """The value of metric ``name`` for ``model`` on Triton's /metrics (Triton's own or the model's)."""
    return _value(_metrics_text(server), name, model)


def model_counters(server: TritonServer, model: str) -> tuple[float, float]:
    """(executions, successful requests) of ``model``, from one read of Triton's /metrics."""
    text = _metrics_text(server)
    return _value(text, "nv_inference_exec_count", model), _value(text, "nv_inference_request_success", model)


def settled_counters(server: TritonServer, model: str, min_success: float, timeout_s: float = 15.0) -> tuple[float, float]:
    """model_counters once the success count has reached `min_success`.

    Triton answers a request before it records the request's statistics, so counters read right
    after the last answer can lag behind by a few requests (seen: 21 of 24).
    """
    return eventually(
        lambda: model_counters(server, model),
        timeout_s=timeout_s,
        interval_s=0.1,
        description=f"{model}'s success count to reach {min_success:g}",
        satisfied=lambda counters: counters[1] >= min_success,
    )
