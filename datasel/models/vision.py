"""Small classifiers for vector inputs (MNIST-1D, sklearn digits): an MLP and a 1-D CNN.

The last layer is always an ``nn.Linear`` named ``head`` so that "last layer" parameter sets find it by name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from datasel.models.registry import register_model


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (the input to ``head``)."""
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNN1D(nn.Module):
    """The MNIST-1D paper's small convnet: three conv layers over the 1-D signal, then a linear head."""

    def __init__(self, in_len: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            d = self.body(torch.zeros(1, 1, in_len)).shape[1]
        self.head = nn.Linear(d, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(x.shape[0], 1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("mlp", kinds=("vector",))
def _mlp(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
    return MLP(int(meta["input_dim"]), list(cfg.get("hidden", [100, 100])), int(meta["num_classes"]))


@register_model("cnn1d", kinds=("vector",))
def _cnn(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
    return CNN1D(int(meta["input_dim"]), int(cfg.get("channels", 25)), int(meta["num_classes"]))
