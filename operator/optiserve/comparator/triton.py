"""One variant's Triton, reached over HTTP with tritonclient's asyncio client."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import tritonclient.http.aio as triton_http

from optiserve.golden import TRITON_DATATYPES, GoldenSample


class EmptyOutputError(RuntimeError):
    """Triton answered without data (e.g. a Python-backend stub with a broken numpy): an error, not an output."""


def split_url(url: str) -> tuple[str, bool]:
    """'http://host:8000' or 'host:8000' -> ('host:8000', uses TLS); anything else is a ValueError."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError(f"expected http://HOST:PORT or HOST:PORT, got {url!r}")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad port in {url!r}") from e
    return (parts.netloc if port else f"{parts.hostname}:{443 if parts.scheme == 'https' else 80}"), parts.scheme == "https"


class TritonHttpModel:
    """`await model(sample)` -> the output array. Create and use it inside one running event loop."""

    def __init__(self, url: str, model: str, output: str | None, timeout_s: float) -> None:
        address, tls = split_url(url)
        self.model = model
        self.output = output
        self.client = triton_http.InferenceServerClient(address, conn_timeout=timeout_s, ssl=tls)

    async def __call__(self, sample: GoldenSample) -> npt.NDArray[Any]:
        inputs = []
        for name, array in sample.inputs.items():
            tensor = triton_http.InferInput(name, list(array.shape), TRITON_DATATYPES[array.dtype.name])
            tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
            inputs.append(tensor)
        requested = [triton_http.InferRequestedOutput(self.output, binary_data=True)] if self.output else None
        result = await self.client.infer(self.model, inputs, outputs=requested)
        name = self.output or str(result.get_response()["outputs"][0]["name"])
        output = result.as_numpy(name)
        if output is None or output.size == 0:
            raise EmptyOutputError(f"model {self.model!r} answered no data for output {name!r}")
        return np.asarray(output)

    async def close(self) -> None:
        await self.client.close()
