"""GraNd (Paul, Ganguli, Dziugaite 2021): ‖∇_θ ℓ(p(θ_t, x), y)‖₂, averaged over K proxy runs at checkpoint t.

``params: all`` is the paper's score (every trainable parameter, no projection); ``params: last_layer`` is a cheaper
variant over the classifier head only, named ``grand_last_layer`` by convention; ``params: lora`` takes the LoRA
adapters of a LoRA proxy. The loss is the task's (cross-entropy on logits).

The norms come from :mod:`datasel.features.norms`: by ghost norms (per-layer Gram products from one batched backward
pass, exact, no per-example gradient formed) where every chosen parameter is a Linear/Conv weight or bias, checked
against the per-example loop on the first rows; otherwise from per-example gradients (the per-layer path, vmap or
the loop), reduced chunk by chunk. ``mode`` forces one of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from datasel.features.compute import cross_entropy
from datasel.features.norms import grad_norms
from datasel.scoring.base import SCORERS, CheckpointMeanScorer
from datasel.tasks.base import Inputs


@SCORERS.register("grand")
class GraNd(CheckpointMeanScorer):
    def per_checkpoint(self, model: nn.Module, x: Inputs, y: torch.Tensor, task: Any = None) -> torch.Tensor:
        return grad_norms(
            model, x, y, task.loss_fn if task is not None else cross_entropy, params=self.cfg.get("params", "all"),
            chunk_size=int(self.cfg.get("chunk_size", 512)), mode=str(self.cfg.get("mode", "auto")),
        )
