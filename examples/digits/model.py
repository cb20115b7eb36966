"""A small CNN for scikit-learn's bundled 8x8 digits: trained in seconds, with real labels."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))  # type: ignore[no-any-return]


def build(weights_path: str | None) -> nn.Module:
    """The factory named by the manifest's entrypoint: a DigitsCNN with the trained weights."""
    model = DigitsCNN()
    if weights_path:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval()
