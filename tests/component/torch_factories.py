"""Small PyTorch models for the job's torch sources (imported by the job through `entrypoint`)."""

from __future__ import annotations

import torch


class TinyClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def build(weights_path: str | None) -> torch.nn.Module:
    model = TinyClassifier()
    if weights_path:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval()


def not_a_module(weights_path: str | None) -> object:
    return {"weights": weights_path}
