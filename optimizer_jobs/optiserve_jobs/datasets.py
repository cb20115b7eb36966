"""Validation and calibration data: text files, JSON lines, or NumPy archives keyed by input name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optiserve_jobs.errors import SourceError
from optiserve_jobs.source_model import SourceModel

LABELS_KEY = "labels"
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


@dataclass(frozen=True)
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, count: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:count]
        return Dataset({k: v[:count] for k, v in self.inputs.items()}, labels)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}

    def repeat_to(self, count: int) -> dict[str, np.ndarray]:
        """The first `count` rows, cycling when the set is smaller (for benchmark batches)."""
        index = np.arange(count) % len(self)
        return {k: np.ascontiguousarray(v[index]) for k, v in self.inputs.items()}


def _read_texts(path: Path) -> tuple[list[str], list[int] | None]:
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()], None
    texts, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            texts.append(str(record["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SourceError(f"{path.name}:{number}: expected a JSON object with a 'text' field") from e
        if "label" in record:
            labels.append(int(record["label"]))
    if labels and len(labels) != len(texts):
        raise SourceError(f"{path.name}: some records have a 'label' and some do not")
    return texts, labels or None


def _tokenize(texts: list[str], source: SourceModel) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    assert source.tokenizer_dir is not None
    tokenizer = AutoTokenizer.from_pretrained(str(source.tokenizer_dir), local_files_only=True)
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=source.spec.sequence_length, return_tensors="np")
    return {i.name: np.asarray(encoded[i.name], dtype=np.int64) for i in source.inputs}


def _read_arrays(path: Path, source: SourceModel) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SourceError(f"{path.name}: not a readable .npz archive: {e}") from e
    expected = {i.name for i in source.inputs}
    found = set(archive.files) - {LABELS_KEY}
    if found != expected:
        raise SourceError(f"{path.name}: arrays {sorted(found)} do not match the model's input names {sorted(expected)}")
    inputs = {i.name: np.ascontiguousarray(archive[i.name], dtype=_NUMPY_DTYPES[i.dtype.value]) for i in source.inputs}
    labels = np.asarray(archive[LABELS_KEY]) if LABELS_KEY in archive.files else None
    return inputs, labels


def load_dataset(path: Path, source: SourceModel, *, limit: int) -> Dataset:
    if path.suffix == ".npz":
        inputs, labels = _read_arrays(path, source)
    elif path.suffix in (".txt", ".jsonl"):
        if not source.is_text:
            raise SourceError(f"{path.name}: text data needs a text model (a tokenizer), this model takes tensors")
        texts, label_list = _read_texts(path)
        if not texts:
            raise SourceError(f"{path.name}: contains no samples")
        inputs = _tokenize(texts, source)
        labels = None if label_list is None else np.asarray(label_list)
    else:
        raise SourceError(f"{path.name}: unknown data format '{path.suffix}' (use .txt, .jsonl or .npz)")
    dataset = Dataset(inputs, labels)
    if len(dataset) == 0:
        raise SourceError(f"{path.name}: contains no samples")
    lengths = {len(v) for v in inputs.values()} | ({len(labels)} if labels is not None else set())
    if len(lengths) != 1:
        raise SourceError(f"{path.name}: arrays have different numbers of samples {sorted(lengths)}")
    return dataset.take(limit)
