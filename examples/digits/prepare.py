"""Train the digits CNN (a few seconds on 2 cores) and write weights and data sets as .npz.

Outputs in ./artifacts: digits_cnn.pt (state_dict), calibration.npz (from the training split),
train.npz (the whole training split with labels, for distillation), validation.npz (held out, with labels).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import DigitsCNN

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
EPOCHS = 15


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(images, labels, test_size=0.3, random_state=0, stratify=labels)
    return x_train, x_val, y_train, y_val


def train(x: np.ndarray, y: np.ndarray) -> DigitsCNN:
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(EPOCHS):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 64):
            index = order[start : start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[index]), ys[index])
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    if (ARTIFACTS / "train.npz").exists():
        return
    torch.set_num_threads(2)
    x_train, x_val, y_train, y_val = _data()
    model = train(x_train, y_train)
    ARTIFACTS.mkdir(exist_ok=True)
    torch.save(model.state_dict(), ARTIFACTS / "digits_cnn.pt")
    np.savez(ARTIFACTS / "calibration.npz", image=x_train[:200])
    np.savez(ARTIFACTS / "train.npz", image=x_train, labels=y_train)
    np.savez(ARTIFACTS / "validation.npz", image=x_val, labels=y_val)
    with torch.inference_mode():
        accuracy = (model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean()
    print(f"digits CNN: validation accuracy {accuracy:.4f} on {len(y_val)} held-out images")


if __name__ == "__main__":
    main()
