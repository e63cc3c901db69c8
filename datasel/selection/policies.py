"""Score-rank policies (Paul et al. 2021; Fayyaz et al. 2022) and the random/full baselines.

``top`` keeps the highest scores ("hardest"), ``easy`` the lowest, ``offset`` drops the ``offset`` highest and
keeps the next M: under label noise the very highest EL2N/GraNd scores are mostly mislabeled examples.

``easy`` is Sorscher et al.'s (2022) rule for scarce data: with few examples, keep the easiest ones. ``bottom`` is
the same policy under its older name (one class, two registered names). Like every score-ranked policy both keep
each class's share of the pool (``stratify: false`` turns that off).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from datasel.errors import ConfigError
from datasel.runtime import rng_for
from datasel.selection.base import POLICIES, Policy


def _keep(pool: pl.DataFrame, start: int, n_keep: int) -> pl.DataFrame:
    return pool.slice(start, n_keep).select("example_id").with_columns(pl.lit(1.0).alias("weight"))


@POLICIES.register("top")
class Top(Policy):
    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        return _keep(pool, 0, n_keep)


@POLICIES.register("easy")
@POLICIES.register("bottom")
class Easy(Policy):
    """The ``n_keep`` lowest scores (the easiest rows for a difficulty score such as EL2N, GraNd or loss)."""

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        return _keep(pool, pool.height - n_keep, n_keep)


@POLICIES.register("offset")
class Offset(Policy):
    """``sorted[off:off+M]``; ``offset`` < 1 is a fraction of the pool, ≥ 1 a count. The window is clamped so
    that M examples are always kept."""

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        off = self.cfg.get("offset")
        if off is None or off < 0:
            raise ConfigError("policy 'offset' needs offset >= 0", field="offset", fix="set offset: 0.1 (fraction) or 50 (count)")
        start = int(round(off * pool.height)) if off < 1 else int(off)
        return _keep(pool, min(start, pool.height - n_keep), n_keep)


@POLICIES.register("random")
class Random(Policy):
    needs_score = False
    draws_random = True

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        idx = np.sort(rng_for(seed, "policy:random").choice(pool.height, size=n_keep, replace=False))
        return _keep(pool[idx], 0, n_keep)


@POLICIES.register("full")
class Full(Policy):
    needs_score = False
    stratifiable = False

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        return _keep(pool, 0, pool.height)
