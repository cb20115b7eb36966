"""Inference clients of the load generator: async gRPC straight to Triton, or HTTP through a proxy.

Each client prepares every golden sample's request once, up front, so the load loop spends its
time waiting on the server and not building requests.

gRPC sends requests built once from tritonclient's protobuf stubs (:class:`GrpcClient`). HTTP posts the KServe v2 request that
``tritonclient.http`` builds (:meth:`generate_request_body`, binary tensors) with a plain
``aiohttp`` session and parses the answer with ``tritonclient``'s own ``InferResult``: the
``tritonclient.http.aio`` client drops the response headers, and the traffic split marks each
answer with the ``X-OptiServe-Variant`` header that says which variant served it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from optiserve.golden import TRITON_DATATYPES, GoldenSample

VARIANT_HEADER = "X-OptiServe-Variant"
"""Response header the local traffic split adds: ``baseline`` or ``candidate``."""

WireProtocol = Literal["grpc", "http"]


class InferError(Exception):
    """A request the server (or the proxy) answered with an error; ``variant`` when the answer had one."""

    def __init__(self, message: str, variant: str | None = None) -> None:
        super().__init__(message)
        self.variant = variant


class InferClient(Protocol):
    """Sends one prepared sample; returns the variant that answered (None when unknown)."""

    async def infer(self, sample_index: int) -> str | None: ...

    async def close(self) -> None: ...


class ClientOpener(Protocol):
    """Makes the client of one load run (a :class:`LoadTarget`, or a fake in tests)."""

    def open(self, samples: Sequence[GoldenSample], *, timeout_s: float, connections: int) -> InferClient: ...


@dataclass(frozen=True)
class LoadTarget:
    """Where the load goes.

    ``url`` is ``host:port`` without a scheme (as tritonclient takes it). ``variant`` labels
    the answers when they carry no variant header (load sent straight to one server).
    """

    url: str
    model: str
    protocol: WireProtocol = "grpc"
    variant: str | None = None

    def __post_init__(self) -> None:
        if "://" in self.url or not self.url:
            raise ValueError(f"url: expected host:port without a scheme, got {self.url!r}")
        if not self.model:
            raise ValueError("model: must not be empty")
        if self.protocol not in ("grpc", "http"):
            raise ValueError(f"protocol: expected 'grpc' or 'http', got {self.protocol!r}")

    def open(self, samples: Sequence[GoldenSample], *, timeout_s: float, connections: int) -> InferClient:
        """A connected client; call it from inside the event loop that will use it."""
        if not samples:
            raise ValueError("samples: at least one golden sample is needed")
        if self.protocol == "grpc":
            return GrpcClient(self, samples, timeout_s)
        return HttpClient(self, samples, timeout_s, connections)


def _datatype(name: str, array: npt.NDArray[Any]) -> str:
    datatype = TRITON_DATATYPES.get(array.dtype.name)
    if datatype is None:
        raise ValueError(f"inputs.{name}: dtype {array.dtype} cannot be sent ({', '.join(TRITON_DATATYPES)})")
    return datatype


def _infer_inputs(client_module: Any, sample: GoldenSample) -> list[Any]:
    inputs = []
    for name, value in sample.inputs.items():
        array = np.ascontiguousarray(value)
        tensor = client_module.InferInput(name, list(array.shape), _datatype(name, array))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _error_text(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return str(text) or type(exc).__name__


class GrpcClient:
    """KServe v2 gRPC (Triton's ``GRPCInferenceService``) against one Triton server.

    Each sample's ``ModelInferRequest`` is built once, up front, from tritonclient's generated
    protobuf and gRPC stubs, and sent as it is, as ``perf_analyzer`` preloads its data.
    ``tritonclient.grpc.aio``'s ``infer`` rebuilt the request on every call: about 0.25 ms of
    client CPU per request, and with 8 requests in flight and one batch of 8 on the server,
    those 8 rebuilds run one after another while the server waits for the batch to fill.
    """

    def __init__(self, target: LoadTarget, samples: Sequence[GoldenSample], timeout_s: float) -> None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self._variant = target.variant
        self._timeout_s = timeout_s
        self._requests = [_infer_request(target.model, sample) for sample in samples]
        unlimited = 2**31 - 1  # as tritonclient sets it: a model's answer may exceed gRPC's 4 MiB default
        options = [("grpc.max_send_message_length", unlimited), ("grpc.max_receive_message_length", unlimited)]
        self._channel = grpc.aio.insecure_channel(target.url, options=options)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def infer(self, sample_index: int) -> str | None:
        import grpc

        try:
            response = await self._stub.ModelInfer(self._requests[sample_index], timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise InferError(exc.details() or str(exc.code()), self._variant) from exc
        if not response.outputs:
            raise InferError("the answer has no outputs", self._variant)
        return self._variant

    async def close(self) -> None:
        await self._channel.close()


def _infer_request(model: str, sample: GoldenSample) -> Any:
    """The ``ModelInferRequest`` of one sample, its tensors as raw little-endian contents."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, value in sample.inputs.items():
        array = np.ascontiguousarray(value)
        request.inputs.add(name=name, datatype=_datatype(name, array), shape=list(array.shape))
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return request


class HttpClient:
    """KServe v2 over HTTP with binary tensors, reading the variant header of every answer."""

    def __init__(self, target: LoadTarget, samples: Sequence[GoldenSample], timeout_s: float, connections: int) -> None:
        import aiohttp
        import tritonclient.http as httpclient

        self._variant = target.variant
        self._url = f"http://{target.url}/v2/models/{target.model}/infer"
        self._parse = httpclient.InferenceServerClient.parse_response_body
        self._bodies: list[tuple[bytes, dict[str, str]]] = []
        for sample in samples:
            body, json_size = httpclient.InferenceServerClient.generate_request_body(_infer_inputs(httpclient, sample))
            headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
            self._bodies.append((body if isinstance(body, bytes) else body.encode(), headers))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def infer(self, sample_index: int) -> str | None:
        body, headers = self._bodies[sample_index]
        async with self._session.post(self._url, data=body, headers=headers) as response:
            variant = response.headers.get(VARIANT_HEADER, self._variant)
            payload = await response.read()
            status = response.status
            header_length = response.headers.get("Inference-Header-Content-Length")
        if status != 200:
            raise InferError(_http_error(status, payload), variant)
        try:
            # aiohttp has already undone any Content-Encoding (it decompresses by default).
            result = self._parse(payload, header_length=None if header_length is None else int(header_length))
        except Exception as exc:  # tritonclient raises its own exception type or plain ones on a garbled body
            raise InferError(f"unreadable answer: {_error_text(exc)}", variant) from exc
        if not result.get_response().get("outputs"):
            raise InferError("the answer has no outputs", variant)
        return variant

    async def close(self) -> None:
        await self._session.close()


def _http_error(status: int, payload: bytes) -> str:
    """Triton answers ``{"error": "..."}``; a proxy may answer HTML or nothing."""
    try:
        message = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        message = None
    if not message:
        message = payload[:200].decode("utf-8", errors="replace").strip() or "no body"
    return f"HTTP {status}: {message}"
