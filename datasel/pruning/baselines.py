"""Baselines GAPrune is compared with, pruned by the same masks code at the same sparsity.

- ``magnitude``: |θ_j| (global magnitude pruning);
- ``fisher``: F^D_j · θ_j², the diagonal-Fisher (OBD-style) saliency on the domain data alone — no general term,
  no alignment;
- ``random``: uniform scores from a seeded generator.
"""

from __future__ import annotations

from typing import Any

import torch

from datasel.pruning.methods import PRUNERS
from datasel.pruning.stats import GradStats


@PRUNERS.register("magnitude")
def magnitude_scores(params: dict[str, torch.nn.Parameter], stats: GradStats | None, cfg: dict[str, Any],
                     seed: int = 0) -> dict[str, torch.Tensor]:
    return {n: p.detach().abs().float().cpu() for n, p in params.items()}


@PRUNERS.register("fisher")
def fisher_scores(params: dict[str, torch.nn.Parameter], stats: GradStats | None, cfg: dict[str, Any],
                  seed: int = 0) -> dict[str, torch.Tensor]:
    assert stats is not None
    return {n: stats.fisher_domain[n] * p.detach().float().cpu() ** 2 for n, p in params.items()}


@PRUNERS.register("random")
def random_scores(params: dict[str, torch.nn.Parameter], stats: GradStats | None, cfg: dict[str, Any],
                  seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) for n, p in sorted(params.items())}
