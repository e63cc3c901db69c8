"""CCS: Coverage-centric Coreset Selection (Zheng, Liu, Li, Prakash, ICLR 2023).

Score-ranked pruning keeps one band of the difficulty distribution and loses coverage at high pruning rates. CCS
first removes the hardest ``beta`` share of the pool (with a difficulty score, the likeliest mislabeled examples),
then splits the remaining scores into ``bins`` equal-width strata and spends the kept budget evenly across them:
strata are visited from the smallest up, each takes ``min(its size, remaining budget // strata left)``, so a stratum
smaller than its even share passes what it cannot use to the larger ones (the official ``bin_allocate``). Inside a
stratum the kept examples are a uniform random draw.

Difficulty is datasel's score convention: a higher score is harder (EL2N, GraNd, loss, forgetting, −AUM), so
"the hardest β" are the first rows of the best-rank-first pool. Differences from the official code, on purpose:
the top edge of the last stratum is the maximum score itself (the official ``max * 1.0001`` misplaces the maximum
when it is negative or zero), and ``beta`` is clamped so that the kept count is always reachable.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import polars as pl

from datasel.errors import ConfigError
from datasel.runtime import rng_for
from datasel.selection.base import POLICIES, Policy

log = logging.getLogger(__name__)


def strata_of(scores: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width stratum (0..bins-1) of each score over [min, max]; all in stratum 0 when the scores are equal."""
    lo, hi = float(scores.min()), float(scores.max())
    if hi <= lo:
        return np.zeros(len(scores), dtype=np.int64)
    return np.minimum(((scores - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)


def even_budgets(counts: np.ndarray, budget: int) -> np.ndarray:
    """Per-stratum budgets summing to ``min(budget, counts.sum())``: smallest strata first, each the even share of
    what is left (integer division), capped at its size."""
    order = np.argsort(counts, kind="stable")
    out = np.zeros(len(counts), dtype=np.int64)
    rest = int(budget)
    for i, b in enumerate(order):
        take = min(int(counts[b]), rest // (len(counts) - i))
        out[b] = take
        rest -= take
    return out


def ccs_select(hardness: np.ndarray, n_keep: int, beta: float, bins: int, seed: int,
               where: str = "selection.policies.ccs") -> np.ndarray:
    """Row numbers (into ``hardness``) of the ``n_keep`` rows CCS keeps, sorted."""
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"beta {beta} is outside [0, 1)", field=f"{where}.beta",
                          fix="use the share of hardest examples to prune first, e.g. 0.1")
    if bins < 1:
        raise ConfigError(f"bins {bins} must be at least 1", field=f"{where}.bins", fix="use e.g. 50 (the paper's)")
    n = len(hardness)
    n_prune = min(int(beta * n), n - n_keep)  # never prune so many that the budget cannot be met
    if n_prune < int(beta * n):
        log.info("ccs: pruning %d hardest rows instead of %d (beta %.2f) so that %d can be kept", n_prune,
                 int(beta * n), beta, n_keep)
    # hardest first, ties by row number (the pool order): the same rows a top-k by score would take
    order = np.lexsort((np.arange(n), -hardness))
    rest = np.sort(order[n_prune:])
    strata = strata_of(hardness[rest], bins)
    budgets = even_budgets(np.bincount(strata, minlength=bins), n_keep)
    rng = rng_for(seed, "policy:ccs")
    kept = [rng.permutation(rest[strata == k])[: budgets[k]] for k in range(bins)]
    return np.sort(np.concatenate(kept))


@POLICIES.register("ccs")
class CCS(Policy):
    """cfg: ``score`` (a difficulty score, high = hard), ``beta`` (share of hardest pruned first, default 0.1),
    ``bins`` (equal-width score strata, default 50 as in the official code)."""

    needs_score: ClassVar[bool] = True
    draws_random: ClassVar[bool] = True  # a uniform draw inside each stratum

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        where = f"selection.policies.{self.cfg.get('name', 'ccs')}"
        rows = ccs_select(pool.get_column("score").to_numpy().astype(np.float64), n_keep,
                          float(self.cfg.get("beta", 0.1)), int(self.cfg.get("bins", 50)), seed, where)
        return pool.select("example_id")[rows.tolist()].with_columns(pl.lit(1.0).alias("weight"))
