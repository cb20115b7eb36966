"""The golden set the job publishes: validation samples as the served model's own input tensors.

Each sample is one request (batch axis 1) in the dtypes the served model declares, so a client
with numpy alone (the comparator, a load generator) can send it unchanged. Text inputs are
tokenized to a fixed length for validation; here the padding is cut off again (the last position
the attention mask covers), because a real client sends unpadded token ids and the served model
pads ragged batches itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from optiserve.api.spec import TensorSpec
from optiserve.golden import GoldenSample
from optiserve_jobs.datasets import Dataset
from optiserve_jobs.errors import JobError

GOLDEN_SAMPLES = 200
"""At most this many validation samples go into the golden set."""
GOLDEN_MAX_VALUES = 2_000_000
"""And at most this many tensor values in all (about 20 MB of JSON), so large inputs stay bounded."""
ATTENTION_MASK = "attention_mask"


def _unpadded(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cut every [1, L] input to the tokens the attention mask covers (at least one)."""
    mask = row.get(ATTENTION_MASK)
    if mask is None or mask.ndim != 2:
        return row
    covered = np.flatnonzero(mask[0])
    length = int(covered[-1]) + 1 if covered.size else 1
    padded = mask.shape[1]
    return {name: array[:, :length] if array.ndim == 2 and array.shape[1] == padded else array for name, array in row.items()}


def golden_samples(
    dataset: Dataset,
    inputs: Sequence[TensorSpec],
    *,
    text_inputs: bool,
    limit: int = GOLDEN_SAMPLES,
    max_values: int = GOLDEN_MAX_VALUES,
) -> list[GoldenSample]:
    """The first `limit` validation samples (fewer when `max_values` is reached), one request each."""
    missing = [spec.name for spec in inputs if spec.name not in dataset.inputs]
    if missing:
        raise JobError(f"golden set: the served model's inputs {missing} are not in the validation data")
    samples: list[GoldenSample] = []
    values = 0
    for index in range(min(len(dataset), limit)):
        row = {
            spec.name: np.ascontiguousarray(dataset.inputs[spec.name][index : index + 1], dtype=np.dtype(spec.dtype.value))
            for spec in inputs
        }
        if text_inputs:
            row = _unpadded(row)
        values += sum(array.size for array in row.values())
        if samples and values > max_values:
            break
        label = None if dataset.labels is None else int(dataset.labels[index])
        samples.append(GoldenSample(inputs=row, label=label))
    return samples
