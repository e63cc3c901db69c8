"""The registry of per-weight importance scorers: config names → functions; a high score means "keep".

Every scorer has the signature ``fn(params, stats, cfg, seed) -> {name: score tensor}`` over the candidate
parameters, so DAI and the baselines are pruned with the same masks code at the same sparsity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from datasel.pruning.stats import GradStats
from datasel.registry import Registry

WeightScorer = Callable[[dict[str, torch.nn.Parameter], "GradStats | None", dict[str, Any], int],
                        dict[str, torch.Tensor]]
PRUNERS: Registry[WeightScorer] = Registry("pruning method", "datasel.pruning")
NEEDS_STATS = {"dai", "fisher"}


def score_weights(method: str, params: dict[str, torch.nn.Parameter], stats: GradStats | None,
                  cfg: dict[str, Any] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Scores (CPU float32) for every candidate weight under ``method``."""
    fn = PRUNERS.get(method, where="gaprune.methods")
    if method in NEEDS_STATS and stats is None:
        from datasel.errors import ConfigError

        raise ConfigError(f"pruning method '{method}' needs gradient statistics", field="gaprune.methods")
    return fn(params, stats, cfg or {}, seed)
