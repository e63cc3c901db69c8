"""GraNd (Paul, Ganguli, Dziugaite 2021): ‖∇_θ ℓ(p(θ_t, x), y)‖₂, averaged over K proxy runs at checkpoint t.

``params: all`` is the paper's score (every parameter, per-example gradients by vmap, no projection);
``params: last_layer`` is a cheaper variant over the classifier head only, named ``grand_last_layer`` by convention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datasel.features.grads import per_sample_grad_norms
from datasel.scoring.base import SCORERS, CheckpointMeanScorer


@SCORERS.register("grand")
class GraNd(CheckpointMeanScorer):
    def per_checkpoint(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_sample_grad_norms(
            model, x, y, F.cross_entropy, params=self.cfg.get("params", "all"),
            chunk_size=int(self.cfg.get("chunk_size", 512)),
        )
