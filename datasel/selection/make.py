"""Turn a policy config, a kept fraction and (optionally) a score table into a selection table.

Class stratification and curriculum ordering wrap any policy, so each policy only decides *which* rows to keep.
Score-ranked policies are stratified by the observed label unless their entry says ``stratify: false``
(:func:`datasel.selection.base.stratify_default`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import ConfigError, DataError
from datasel.selection.base import POLICIES, kept_count, stratify_default
from datasel.selection.curriculum import order_positions
from datasel.selection.draws import DRAW, draw_seed

CARRIED_SCORE_COLUMNS = ("label_issue",)


def selection_name(policy: str, fraction: float) -> str:
    return f"{policy}_keep{round(fraction * 100)}"


def build_pool(examples: pl.DataFrame, scores: pl.DataFrame | None, source: str = "scores") -> pl.DataFrame:
    """Training rows joined with their score, best rank first; refuses scores that do not cover the pool."""
    train = examples.filter(pl.col("split") == "train").select("example_id", "label")
    if scores is None:
        return train.sort("example_id")
    # a detector's own flag (cleanlab's label_issue) travels with the score for the filter policy
    carried = [c for c in CARRIED_SCORE_COLUMNS if c in scores.columns]
    pool = train.join(scores.select("example_id", "score", "rank", *carried), on="example_id", how="left")
    missing = pool.filter(pl.col("score").is_null())
    if missing.height:
        raise DataError(
            f"{missing.height} training examples have no score (e.g. {missing.get_column('example_id').head(2).to_list()})",
            file=source, field="example_id", fix="rerun the scoring step on the current examples table",
        )
    if not np.isfinite(pool.get_column("score").to_numpy()).all():
        raise DataError("scores contain NaN or inf", file=source, field="score", fix="check the scoring method's inputs")
    return pool.sort("rank")


def _stratified(policy: Any, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
    """Per-class quotas proportional to class size (largest remainder), the policy applied inside each class."""
    counts = pool.group_by("label").len().sort("label")
    share = counts.get_column("len").to_numpy() * n_keep / pool.height
    quota = np.floor(share).astype(int)
    for i in np.argsort(-(share - quota), kind="stable")[: n_keep - quota.sum()]:
        quota[i] += 1
    parts = [
        policy.choose(pool.filter(pl.col("label") == lab), int(q), seed + int(lab))
        for lab, q in zip(counts.get_column("label").to_list(), quota)
        if q > 0
    ]
    return pl.concat(parts)


def make_selection(
    examples: pl.DataFrame,
    scores: pl.DataFrame | None,
    name: str,
    cfg: dict[str, Any],
    fraction: float,
    seed: int,
    order_scores: pl.DataFrame | None = None,
    score_source: str = "scores",
    draws: Sequence[int] | None = None,
) -> pl.DataFrame:
    """The selection table for one policy entry at one kept fraction (rows for every training example).

    ``draws``: training seeds; a policy that draws random numbers then makes one subset per training seed (seeded
    by :func:`datasel.selection.draws.draw_seed`), stacked with a ``draw`` column naming the seed. A deterministic
    policy, or no ``draws``, gives one subset made with ``seed`` and no ``draw`` column.
    """
    policy = POLICIES.get(cfg["policy"], where=f"selection.policies.{name}.policy")({"name": name, **cfg})
    if policy.needs_score and scores is None:
        raise ConfigError(f"policy '{cfg['policy']}' needs a score table", field=f"selection.policies.{name}.score",
                          fix="name a scoring entry in 'score'")
    pool = build_pool(examples, scores if policy.needs_score else None, score_source)
    n_keep = kept_count(pool.height, fraction)
    stratify = bool(cfg.get("stratify", stratify_default(policy))) and policy.stratifiable
    args = (policy, pool, n_keep, stratify, cfg.get("curriculum"), order_scores, selection_name(name, fraction))
    if not draws or not policy.stochastic():
        return _one_subset(*args, seed)
    return pl.concat([_one_subset(*args, draw_seed(seed, d)).with_columns(pl.lit(d, dtype=pl.Int64).alias(DRAW))
                      for d in sorted({int(d) for d in draws})])


def _one_subset(policy: Any, pool: pl.DataFrame, n_keep: int, stratify: bool, curriculum: dict[str, Any] | None,
                order_scores: pl.DataFrame | None, selection: str, seed: int) -> pl.DataFrame:
    chosen = _stratified(policy, pool, n_keep, seed) if stratify else policy.choose(pool, n_keep, seed)
    chosen = chosen.select("example_id", "weight")
    if curriculum:
        chosen = chosen.join(order_positions(chosen, order_scores, curriculum, seed), on="example_id", how="left")
    else:
        chosen = chosen.with_columns(pl.lit(None, dtype=pl.Int64).alias("position"))
    table = (
        pool.select("example_id")
        .join(chosen, on="example_id", how="left")
        .with_columns(
            pl.lit(selection).alias("selection"),
            pl.col("weight").is_not_null().alias("selected"),
            pl.col("weight").fill_null(0.0).cast(pl.Float64),
            pl.col("position").cast(pl.Int64),
        )
        .sort("example_id")
    )
    return table.select("selection", "example_id", "selected", "weight", "position")
