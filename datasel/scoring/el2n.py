"""EL2N (Paul, Ganguli, Dziugaite 2021): ‖p(θ_t, x) − y‖₂, averaged over K proxy runs at checkpoint t.

High EL2N = the proxy is far from the label: hard or mislabeled examples.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datasel.scoring.base import SCORERS, CheckpointMeanScorer
from datasel.tasks.base import Inputs
from datasel.training.classify import predict_proba


def el2n(model: nn.Module, x: Inputs, y: torch.Tensor) -> torch.Tensor:
    p = predict_proba(model, x)
    return (p - F.one_hot(y, p.shape[1]).to(p.dtype)).norm(dim=1)


@SCORERS.register("el2n")
class EL2N(CheckpointMeanScorer):
    def per_checkpoint(self, model: nn.Module, x: Inputs, y: torch.Tensor, task: Any = None) -> torch.Tensor:
        return el2n(model, x, y)
