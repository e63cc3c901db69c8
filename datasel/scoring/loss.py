"""Loss baseline: the proxy's cross-entropy on the example, averaged over K runs (high = hard or mislabeled)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datasel.scoring.base import SCORERS, CheckpointMeanScorer


@SCORERS.register("loss")
class Loss(CheckpointMeanScorer):
    @torch.no_grad()
    def per_checkpoint(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.cross_entropy(model(xb), yb, reduction="none") for xb, yb in zip(x.split(4096), y.split(4096))])
