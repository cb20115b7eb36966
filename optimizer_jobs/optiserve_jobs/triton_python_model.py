"""Triton Python-backend model that serves an ONNX file with onnxruntime.

This file is copied to ``<repository>/<model>/1/model.py`` next to
``1/model.onnx``. Triton's Python backend runs it in the server's own
environment (numpy<2), so it sticks to APIs that numpy 1.x provides.

Model config ``parameters`` understood by :class:`TritonPythonModel`:

``onnx_file``
    ONNX file name, relative to the version directory (default ``model.onnx``).
``intra_op_threads``
    onnxruntime intra-op thread count; ``0`` keeps onnxruntime's default.
``intra_op_spin_us``
    How long, in microseconds, an idle onnxruntime intra-op thread spins for
    work before it sleeps: ``0`` (the default) sleeps at once, ``-1`` keeps
    onnxruntime's own spinning. A server shares its cores with Triton's
    threads, the client connections and other processes; threads that spin
    on after a run take the cores those need, and a parallel section then
    waits on threads that were preempted. Measured on 2 cores with dynamic
    batching (docs/benchmarks.md): beside two busy processes, sleeping at once
    served 1.29x what a 200 us spin did and 1.75x onnxruntime's own spinning;
    on a quiet machine a 200 us spin served 1.21x what sleeping did. Sleeping
    is the default because OptiServe's servers share their cores (two
    variants side by side in a canary, CPU limits in a cluster); with cores
    of its own, set 200 (``spec.serving.triton.intraOpSpinMicroseconds``).
``pad_inputs``
    Comma-separated input names whose axis 1 has a variable length (token
    ids, attention masks). Requests that are run together get these inputs
    right-padded with zeros to the longest one among them, so requests of
    different lengths still share one ``session.run``. Triton's dynamic
    batcher only hands requests of different shapes to one ``execute`` when
    those inputs set ``allow_ragged_batch: true`` in the model config.

Regressions on purpose, so a canary can be shown to roll back (``optiserve run --inject``; never
set by the optimization job):

``inject_latency_factor``
    e.g. ``2.0``: every batch takes that many times as long; the model sleeps
    (factor - 1) x the measured ONNX Runtime time after running it.
``inject_error_fraction``
    e.g. ``0.05``: that fraction of requests get an error response, deterministically
    (request ``n`` of this instance fails when ``floor((n + 1) f) > floor(n f)``: every
    20th for 0.05), counted like any other failure.
``inject_output_noise``
    e.g. ``1.0``: every output row gets noise of that norm relative to the row's own
    norm (fixed seed), so an embedding's cosine to the true one falls to about
    ``1 / sqrt(1 + noise^2)`` (0.71 for 1.0).

With dynamic batching Triton hands :meth:`TritonPythonModel.execute` several
requests at once. They are grouped by compatible shapes, each group is merged
along axis 0 into a single ``session.run`` and the outputs are split back per
request. The grouping, padding and splitting helpers are plain functions so
they can be unit tested without Triton.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

try:  # Only importable inside the Triton Python-backend stub.
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton, e.g. unit tests of the helpers below
    pb_utils = None

logger = logging.getLogger(__name__)

# Shape key of one request: per input, its dtype and its shape past axis 0,
# with axis 1 left out for padded inputs (they are padded to a common length).
ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]


class BadRequestError(ValueError):
    """A request whose inputs cannot be served; only that request fails."""


def parse_pad_inputs(value: str | None) -> frozenset[str]:
    """Parse the ``pad_inputs`` parameter (comma-separated input names)."""
    if not value:
        return frozenset()
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def request_batch_size(inputs: Mapping[str, np.ndarray], pad_inputs: Iterable[str] = ()) -> int:
    """Return the batch size (axis 0) shared by all inputs of one request.

    Raises :class:`BadRequestError` when inputs disagree on axis 0 or a
    padded input has no axis 1.
    """
    if not inputs:
        raise BadRequestError("request has no inputs")
    pad = frozenset(pad_inputs)
    sizes = set()
    for name, array in inputs.items():
        if array.ndim < 1:
            raise BadRequestError(f"input {name!r} has no batch dimension")
        if name in pad and array.ndim < 2:
            raise BadRequestError(f"input {name!r} is padded along axis 1 but has shape {array.shape}")
        sizes.add(int(array.shape[0]))
    if len(sizes) != 1:
        raise BadRequestError(f"inputs disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


def shape_key(inputs: Mapping[str, np.ndarray], pad_inputs: Iterable[str] = ()) -> ShapeKey:
    """Key under which requests can share one merged ``session.run``."""
    pad = frozenset(pad_inputs)
    key = []
    for name in sorted(inputs):
        array = inputs[name]
        trailing = tuple(int(d) for d in array.shape[2 if name in pad else 1 :])
        key.append((name, array.dtype.str, trailing))
    return tuple(key)


def group_requests(requests_inputs: Sequence[Mapping[str, np.ndarray]], pad_inputs: Iterable[str] = ()) -> list[list[int]]:
    """Group request indices whose inputs can be concatenated along axis 0.

    Requests fall into one group when every input has the same dtype and the
    same shape past axis 0 (past axis 1 for padded inputs). Groups are ordered
    by their first request and keep request order inside.
    """
    pad = frozenset(pad_inputs)
    groups: dict[ShapeKey, list[int]] = {}
    for index, inputs in enumerate(requests_inputs):
        groups.setdefault(shape_key(inputs, pad), []).append(index)
    return list(groups.values())


def merge_inputs(requests_inputs: Sequence[Mapping[str, np.ndarray]], pad_inputs: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Concatenate one group's inputs along axis 0, zero-padding axis 1 where asked.

    Every output array is written exactly once: padded inputs go straight into
    a zero-filled buffer of the final shape instead of being padded per
    request and then concatenated. A lone request with nothing to pad is
    passed through without any copy.
    """
    if not requests_inputs:
        raise ValueError("no requests to merge")
    pad = frozenset(pad_inputs)
    merged: dict[str, np.ndarray] = {}
    for name in requests_inputs[0]:
        parts = [inputs[name] for inputs in requests_inputs]
        if name in pad:
            longest = max(int(part.shape[1]) for part in parts)
            if len(parts) == 1 and int(parts[0].shape[1]) == longest:
                merged[name] = parts[0]
                continue
            first = parts[0]
            total = sum(int(part.shape[0]) for part in parts)
            out = np.zeros((total, longest, *first.shape[2:]), dtype=first.dtype)
            row = 0
            for part in parts:
                rows = int(part.shape[0])
                out[row : row + rows, : part.shape[1]] = part
                row += rows
            merged[name] = out
        elif len(parts) == 1:
            merged[name] = parts[0]
        else:
            merged[name] = np.concatenate(parts, axis=0)
    return merged


def split_outputs(outputs: Sequence[np.ndarray], batch_sizes: Sequence[int]) -> list[list[np.ndarray]]:
    """Split merged outputs back per request along axis 0.

    Returns, per request, its slice of every output. The slices are views
    (C-contiguous rows of the merged arrays), not copies.
    """
    total = sum(batch_sizes)
    for output in outputs:
        if output.ndim < 1 or int(output.shape[0]) != total:
            raise ValueError(f"output with shape {output.shape} does not cover the merged batch of {total}")
    per_request: list[list[np.ndarray]] = []
    row = 0
    for size in batch_sizes:
        per_request.append([output[row : row + size] for output in outputs])
        row += size
    return per_request


INJECTION_PARAMETERS = ("inject_latency_factor", "inject_error_fraction", "inject_output_noise")
NOISE_SEED = 20261123


@dataclass(frozen=True)
class Injection:
    """Regressions this model makes on purpose (all off by default)."""

    latency_factor: float = 1.0
    error_fraction: float = 0.0
    output_noise: float = 0.0

    @property
    def active(self) -> bool:
        return self.latency_factor != 1.0 or self.error_fraction > 0 or self.output_noise > 0


def _number(config: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    text = _parameter(config, key, "")
    if text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"parameters.{key}: expected a number, got {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"parameters.{key}: {text} is outside [{low:g}, {high:g}]")
    return value


def parse_injection(config: Mapping[str, Any]) -> Injection:
    """Read the ``inject_*`` parameters of a model config (JSON form); bad values name the parameter."""
    return Injection(
        latency_factor=_number(config, "inject_latency_factor", 1.0, 1.0, 1000.0),
        error_fraction=_number(config, "inject_error_fraction", 0.0, 0.0, 1.0),
        output_noise=_number(config, "inject_output_noise", 0.0, 0.0, 1000.0),
    )


class ErrorSchedule:
    """Which requests fail, deterministically: exactly ``fraction`` of any run of requests, evenly spread."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        # As an exact ratio: with floats, 30 x 0.1 rounds across an integer and a window of
        # 100 requests at 10 % could hold 9 or 11 failures.
        ratio = Fraction(fraction).limit_denominator(1_000_000)
        self._numerator, self._denominator = ratio.numerator, ratio.denominator
        self._count = 0

    def next_fails(self) -> bool:
        n, self._count = self._count, self._count + 1
        return (n + 1) * self._numerator // self._denominator > n * self._numerator // self._denominator


def add_relative_noise(output: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """``output`` plus, per row (axis 0), random noise whose norm is ``scale`` x the row's norm."""
    if scale <= 0 or output.ndim == 0 or output.size == 0 or not np.issubdtype(output.dtype, np.floating):
        return output
    rows = output.reshape(output.shape[0], -1).astype(np.float64)
    noise = rng.standard_normal(rows.shape)
    noise_norms = np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    noise *= scale * np.linalg.norm(rows, axis=1, keepdims=True) / noise_norms
    return (rows + noise).astype(output.dtype).reshape(output.shape)


DEFAULT_SPIN_US = 0


def spin_config_entries(spin_us: str) -> dict[str, str]:
    """onnxruntime session config entries for the ``intra_op_spin_us`` parameter."""
    try:
        value = int(spin_us)
    except ValueError:
        raise ValueError(f"parameters.intra_op_spin_us: expected microseconds (or 0, or -1), got {spin_us!r}") from None
    if value < -1:
        raise ValueError(f"parameters.intra_op_spin_us: {value} is below -1")
    if value == -1:
        return {}
    if value == 0:
        return {"session.intra_op.allow_spinning": "0"}
    return {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": str(value)}


def _parameter(config: Mapping[str, Any], key: str, default: str) -> str:
    """Read a string ``parameters`` entry of a Triton model config (JSON form)."""
    entry = config.get("parameters", {}).get(key)
    if not entry:
        return default
    value = entry.get("string_value", "") if isinstance(entry, Mapping) else str(entry)
    return value if value != "" else default


class TritonPythonModel:
    """Triton Python-backend entry point serving one ONNX model on CPU."""

    def initialize(self, args: Mapping[str, str]) -> None:
        """Create the onnxruntime session from the model config."""
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.input_names = [entry["name"] for entry in config.get("input", [])]
        self.output_names = [entry["name"] for entry in config.get("output", [])]
        self.output_dtypes = [_triton_dtype_to_numpy(entry["data_type"]) for entry in config.get("output", [])]
        self.pad_inputs = parse_pad_inputs(_parameter(config, "pad_inputs", ""))
        unknown = self.pad_inputs.difference(self.input_names)
        if unknown:
            raise ValueError(f"pad_inputs names unknown inputs: {sorted(unknown)}")

        not_ragged = sorted(
            entry["name"]
            for entry in config.get("input", [])
            if entry["name"] in self.pad_inputs and not entry.get("allow_ragged_batch", False)
        )
        if not_ragged and self.max_batch_size > 0:
            logger.warning(
                "pad_inputs %s lack allow_ragged_batch: Triton will not batch requests of different lengths together",
                not_ragged,
            )

        onnx_file = _parameter(config, "onnx_file", "model.onnx")
        model_dir = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        threads = int(_parameter(config, "intra_op_threads", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        for key, value in spin_config_entries(_parameter(config, "intra_op_spin_us", str(DEFAULT_SPIN_US))).items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(
            str(model_dir / onnx_file),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self.run_seconds = 0.0  # ONNX Runtime time of the current execute(), for the latency injection
        self.injection = parse_injection(config)
        self.error_schedule = ErrorSchedule(self.injection.error_fraction)
        self.noise_rng = np.random.default_rng(NOISE_SEED)
        if self.injection.active:
            logger.warning("injecting regressions on purpose: %s", self.injection)
        # Keep each family alive as long as its metric: Triton refuses to count into an orphan.
        self.failure_family, self.failures = _counter(args, FAILURE_METRIC, FAILURE_HELP)
        self.run_family, self.run_microseconds = _counter(args, RUN_TIME_METRIC, RUN_TIME_HELP)
        self.duration_family, self.durations = _histogram(args, DURATION_METRIC, DURATION_HELP, DURATION_BUCKETS)
        session_inputs = {node.name for node in self.session.get_inputs()}
        if session_inputs != set(self.input_names):
            raise ValueError(
                f"config inputs {sorted(self.input_names)} do not match the ONNX model's inputs {sorted(session_inputs)}"
            )
        logger.info(
            "loaded %s (inputs %s, outputs %s, pad %s)",
            onnx_file,
            self.input_names,
            self.output_names,
            sorted(self.pad_inputs),
        )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """Serve a batch of requests with one ``session.run`` per shape group."""
        began = time.perf_counter()
        responses: list[Any] = [None] * len(requests)
        inputs_by_request: list[dict[str, np.ndarray]] = []
        sizes: list[int] = []
        valid: list[int] = []
        self.run_seconds = 0.0
        for index, request in enumerate(requests):
            if self.injection.error_fraction > 0 and self.error_schedule.next_fails():
                responses[index] = _error_response(f"injected error (inject_error_fraction={self.injection.error_fraction:g})")
                continue
            try:
                inputs = self._read_inputs(request)
                size = request_batch_size(inputs, self.pad_inputs) if self.max_batch_size > 0 else 0
            except BadRequestError as exc:
                responses[index] = _error_response(str(exc))
                continue
            inputs_by_request.append(inputs)
            sizes.append(size)
            valid.append(index)

        if self.max_batch_size > 0:
            groups = group_requests(inputs_by_request, self.pad_inputs)
        else:  # Without a batch dimension, axis 0 is not ours to merge along.
            groups = [[position] for position in range(len(valid))]

        for group in groups:
            self._run_group(
                [inputs_by_request[p] for p in group],
                [sizes[p] for p in group],
                [valid[p] for p in group],
                responses,
            )
        if self.injection.latency_factor > 1.0:
            time.sleep((self.injection.latency_factor - 1.0) * self.run_seconds)
        self._count(responses, time.perf_counter() - began)
        return responses

    def _count(self, responses: Sequence[Any], seconds: float) -> None:
        """The batch's failures, compute time and per-request durations, in the model's own metrics."""
        failed = sum(1 for response in responses if response.has_error())
        if failed and self.failures is not None:
            self.failures.increment(failed)
        if self.run_seconds and self.run_microseconds is not None:
            self.run_microseconds.increment(self.run_seconds * 1e6)
        if self.durations is not None:
            for _ in range(len(responses) - failed):
                self.durations.observe(seconds)

    def _read_inputs(self, request: Any) -> dict[str, np.ndarray]:
        inputs: dict[str, np.ndarray] = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise BadRequestError(f"missing input {name!r}")
            inputs[name] = tensor.as_numpy()
        return inputs

    def _run_group(
        self,
        group_inputs: list[dict[str, np.ndarray]],
        batch_sizes: list[int],
        indices: list[int],
        responses: list[Any],
    ) -> None:
        """Run one merged group; on failure retry its requests one by one.

        A merged run fails as a whole (for instance one request carries an
        out-of-range token id), so the retry isolates the bad request and
        the others still get their results.
        """
        try:
            merged = merge_inputs(group_inputs, self.pad_inputs if self.max_batch_size > 0 else ())
            started = time.perf_counter()
            outputs = self.session.run(self.output_names, merged)
            self.run_seconds += time.perf_counter() - started
            if self.injection.output_noise > 0:
                outputs = [add_relative_noise(output, self.injection.output_noise, self.noise_rng) for output in outputs]
            per_request = split_outputs(outputs, batch_sizes) if len(indices) > 1 else [list(outputs)]
        except Exception as exc:  # onnxruntime raises plain RuntimeErrors and more
            if len(indices) > 1:
                logger.warning("merged run of %d requests failed (%s); retrying one by one", len(indices), exc)
                for position, index in enumerate(indices):
                    self._run_group([group_inputs[position]], [batch_sizes[position]], [index], responses)
                return
            responses[indices[0]] = _error_response(f"inference failed: {exc}")
            return
        for index, arrays in zip(indices, per_request, strict=True):
            try:
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(array, dtype=dtype))
                    for name, array, dtype in zip(self.output_names, arrays, self.output_dtypes, strict=True)
                ]
            except Exception as exc:  # report it on this request only
                responses[index] = _error_response(f"cannot return outputs: {exc}")
                continue
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        """Release the onnxruntime session, and each metric before its family."""
        self.session = None
        self.failures = None
        self.failure_family = None
        self.run_microseconds = None
        self.run_family = None


_TRITON_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


def _triton_dtype_to_numpy(data_type: str) -> Any:
    """Map a config ``data_type`` (``TYPE_FP32``...) to a numpy dtype."""
    try:
        return np.dtype(_TRITON_TO_NUMPY[data_type])
    except KeyError:
        raise ValueError(f"unsupported output data_type {data_type!r}") from None


def _error_response(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


FAILURE_METRIC = "optiserve_request_failure_total"
FAILURE_HELP = "Requests the OptiServe Python-backend model answered with an error"
RUN_TIME_METRIC = "optiserve_onnxruntime_run_duration_us"
RUN_TIME_HELP = (
    "Cumulative microseconds the OptiServe Python-backend model spent inside ONNX Runtime's session.run; "
    "nv_inference_compute_infer_duration_us minus this is what the model and the backend stub add"
)


DURATION_METRIC = "optiserve_request_duration_seconds"
DURATION_HELP = (
    "Seconds each request spent in the OptiServe Python-backend model's execute (its batch's time; Triton's "
    "queue not included): a histogram, so the canary can judge each scrape's median request, not its mean"
)
DURATION_BUCKETS = tuple(round(0.0002 * 1.25**k, 7) for k in range(52))
"""0.2 ms to about 21 s in steps of 25 %: fine enough to tell a 10 % latency tolerance apart by
interpolation, at 52 series per model instance."""


def _histogram(args: Mapping[str, str], name: str, description: str, buckets: Sequence[float]) -> tuple[Any, Any]:
    """A histogram of this model instance's on Triton's /metrics (Triton 2.51's Python backend has
    MetricFamily.HISTOGRAM; an older one exports none and the canary falls back to Triton's means)."""
    family_type = getattr(pb_utils, "MetricFamily", None)
    if family_type is None or not hasattr(family_type, "HISTOGRAM"):
        return None, None
    family = family_type(name=name, description=description, kind=family_type.HISTOGRAM)
    labels = {"model": str(args["model_name"]), "version": str(args["model_version"])}
    return family, family.Metric(labels=labels, buckets=list(buckets))


def _counter(args: Mapping[str, str], name: str, description: str) -> tuple[Any, Any]:
    """A counter of this model instance's, exported on Triton's /metrics with Triton's own metrics.

    `optiserve_request_failure_total`: Triton 2.51 counts a Python-backend request that got an
    error *response* as a success and leaves `nv_inference_request_failure` at 0 (measured), so
    the canary's error rate needs it. `optiserve_onnxruntime_run_duration_us`: Triton's compute
    time covers the whole `execute` and the round trip to the backend stub; this is the ONNX
    Runtime part of it, so the serving overhead can be read off a running server.
    """
    family_type = getattr(pb_utils, "MetricFamily", None)
    if family_type is None:  # a Triton without custom metrics
        return None, None
    family = family_type(name=name, description=description, kind=family_type.COUNTER)
    return family, family.Metric(labels={"model": str(args["model_name"]), "version": str(args["model_version"])})
