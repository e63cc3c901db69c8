"""Shift-Gsampling (Alchemist, Ding et al. 2025; METHODS.md §3): drop the top-rated share, then sample the rest
around a percentile band with a Gaussian, without replacement, until the retention budget is met.

Sorted by score (high first), example i gets its percentile w_i = (rank_i − 1) / (N − 1) ∈ [0, 1] (0 = the highest
score, 1 = the lowest; N = pool size). The rows with w_i < ``drop_top`` are removed; from the rest, ``n_keep`` rows
are drawn without replacement with probability ∝ exp(−(w_i − μ)² / (2σ²)).

Why: the top of a rater's ranking is the easiest, most redundant data, the bottom the noisy or harmful data; the paper
finds the most useful band around percentiles 40–60. Top-k keeps only the redundant head; the shift and the Gaussian
keep a band that is informative yet clean, with some spread for diversity.

Sequential sampling without replacement ∝ p_i is drawn in one pass with the Gumbel-top-k trick (Efraimidis–Spirakis):
keep the n_keep largest log p_i + G_i, G_i ~ Gumbel(0, 1). Working in log space keeps tiny σ from underflowing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import polars as pl

from datasel.errors import ConfigError
from datasel.selection.base import POLICIES, Policy

if TYPE_CHECKING:  # torch is imported where it is used: every select job loads this module through the registry
    import torch

log = logging.getLogger(__name__)


def percentiles(n: int) -> torch.Tensor:
    """Percentile of each position 0..n-1 of a best-first ranking: 0 for the best, 1 for the worst."""
    import torch

    if n == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.arange(n, dtype=torch.float64) / (n - 1)


def shift_gsample(n: int, n_keep: int, drop_top: float, mu: float, sigma: float, seed: int,
                  where: str = "selection.policies.shift_gsampling") -> torch.Tensor:
    """Positions (into a best-first ranking of ``n`` rows) of the ``n_keep`` rows Shift-Gsampling keeps, in the
    order they were drawn."""
    import torch

    if not 0.0 <= drop_top < 1.0:
        raise ConfigError(f"drop_top {drop_top} is outside [0, 1)", field=f"{where}.drop_top", fix="use e.g. 0.1")
    if not 0.0 <= mu <= 1.0:
        raise ConfigError(f"mu {mu} is outside [0, 1] (it is a percentile)", field=f"{where}.mu", fix="use e.g. 0.5")
    if not sigma > 0.0:
        raise ConfigError(f"sigma {sigma} must be positive", field=f"{where}.sigma", fix="use e.g. 0.15")
    w = percentiles(n)
    eligible = torch.nonzero(w >= drop_top - 1e-12).squeeze(1)
    if n_keep > eligible.numel():
        raise ConfigError(
            f"cannot keep {n_keep} of {n} rows after dropping the top {drop_top:.0%} ({eligible.numel()} remain)",
            field=f"{where}.drop_top",
            fix=f"lower drop_top to at most {1 - n_keep / n:.3f} or keep a smaller fraction",
        )
    logp = -((w[eligible] - mu) ** 2) / (2 * sigma**2)
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(eligible.numel(), generator=gen, dtype=torch.float64).clamp_min(1e-300)
    keys = logp - torch.log(-torch.log(u))  # log p + Gumbel(0, 1)
    top = torch.topk(keys, n_keep, sorted=True).indices
    return eligible[top]


@POLICIES.register("shift_gsampling")
class ShiftGSampling(Policy):
    """Config: ``drop_top`` (share of the highest scores removed, default 0.1), ``mu`` (centre percentile, 0.5),
    ``sigma`` (band width in percentile units, 0.15). Works with any score table."""

    needs_score = True
    draws_random = True

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        drop, mu, sigma = (float(self.cfg.get(k, d)) for k, d in (("drop_top", 0.1), ("mu", 0.5), ("sigma", 0.15)))
        where = f"selection.policies.{self.cfg.get('name', 'shift_gsampling')}"
        # Re-sort defensively: percentiles are defined by the score order, whatever order the pool arrives in.
        ranked = pool.sort(["score", "example_id"], descending=[True, False], nulls_last=True)
        pos = shift_gsample(ranked.height, n_keep, drop, mu, sigma, seed, where)
        chosen = ranked.select("example_id")[pos.tolist()]
        log.info("shift-gsampling kept %d of %d (drop_top %.2f, mu %.2f, sigma %.2f)", n_keep, ranked.height,
                 drop, mu, sigma)
        return chosen.with_columns(pl.lit(1.0).alias("weight"))
