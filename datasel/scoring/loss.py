"""Loss baseline: the proxy's per-example loss (the task's: cross-entropy), averaged over K runs (high = hard or
mislabeled)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from datasel.scoring.base import SCORERS, CheckpointMeanScorer
from datasel.tasks.base import Inputs, per_example_cross_entropy
from datasel.training.classify import logits_of


@SCORERS.register("loss")
class Loss(CheckpointMeanScorer):
    @torch.no_grad()
    def per_checkpoint(self, model: nn.Module, x: Inputs, y: torch.Tensor, task: Any = None) -> torch.Tensor:
        loss = task.per_example_loss if task is not None else per_example_cross_entropy
        return loss(logits_of(model, x), y)
