"""The golden set: validation samples as ready-to-send inference requests.

The optimization job publishes ``golden.jsonl`` next to the model repositories: one line per
validation sample, its inputs already tokenized / preprocessed into the model's input tensors, plus
its label when the data has labels. The comparator (online accuracy) and the load generator read it
with numpy alone, so neither needs the model's tokenizer or the optimizer's heavy dependencies.

One line::

    {"inputs": {"input_ids": {"datatype": "INT64", "shape": [1, 12], "data": [101, ...]}, ...},
     "label": 3}

``shape`` includes the batch axis (1); ``label`` is null when the data has none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

GOLDEN_FILE = "golden.jsonl"

TRITON_DATATYPES: dict[str, str] = {
    "int64": "INT64",
    "int32": "INT32",
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "bool": "BOOL",
    "uint8": "UINT8",
}
NUMPY_DTYPES = {triton: np.dtype(name) for name, triton in TRITON_DATATYPES.items()}


class GoldenSetError(ValueError):
    """The golden set cannot be read: the message names the line and the field."""


@dataclass(frozen=True)
class GoldenSample:
    inputs: Mapping[str, npt.NDArray[Any]] = field(repr=False)
    label: int | None = None


def _tensor_json(name: str, array: npt.NDArray[Any]) -> dict[str, object]:
    datatype = TRITON_DATATYPES.get(array.dtype.name)
    if datatype is None:
        raise GoldenSetError(f"inputs.{name}: dtype {array.dtype} is not supported ({', '.join(TRITON_DATATYPES)})")
    return {"datatype": datatype, "shape": list(array.shape), "data": array.reshape(-1).tolist()}


def sample_line(sample: GoldenSample) -> str:
    inputs = {name: _tensor_json(name, np.asarray(array)) for name, array in sample.inputs.items()}
    return json.dumps({"inputs": inputs, "label": sample.label}, separators=(",", ":"))


def write_golden(path: Path, samples: Iterable[GoldenSample]) -> int:
    """Write the samples, one JSON line each; returns how many were written."""
    lines = [sample_line(sample) for sample in samples]
    path.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def _tensor(where: str, value: object) -> npt.NDArray[Any]:
    if not isinstance(value, Mapping):
        raise GoldenSetError(f"{where}: expected an object with datatype, shape and data")
    try:
        dtype = NUMPY_DTYPES[str(value["datatype"])]
        shape = [int(n) for n in value["shape"]]
        return np.asarray(value["data"], dtype=dtype).reshape(shape)
    except KeyError as e:
        raise GoldenSetError(f"{where}: missing or unknown {e.args[0]}") from e
    except (TypeError, ValueError) as e:
        raise GoldenSetError(f"{where}: {e}") from e


def parse_line(line: str, where: str) -> GoldenSample:
    try:
        document = json.loads(line)
    except json.JSONDecodeError as e:
        raise GoldenSetError(f"{where}: not JSON ({e.msg})") from e
    inputs = document.get("inputs") if isinstance(document, Mapping) else None
    if not isinstance(inputs, Mapping) or not inputs:
        raise GoldenSetError(f"{where}: inputs: expected a non-empty object")
    label = document.get("label")
    if label is not None and not isinstance(label, int):
        raise GoldenSetError(f"{where}: label: expected an integer or null, got {label!r}")
    tensors = {str(name): _tensor(f"{where}: inputs.{name}", value) for name, value in inputs.items()}
    return GoldenSample(inputs=tensors, label=label)


def load_golden(path: Path, limit: int | None = None) -> list[GoldenSample]:
    """Read up to ``limit`` samples (all when None); an empty or malformed file is an error."""
    samples: list[GoldenSample] = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(samples) >= limit:
                break
            if line.strip():
                samples.append(parse_line(line, f"{path.name} line {number}"))
    if not samples:
        raise GoldenSetError(f"{path.name}: no samples")
    return samples
