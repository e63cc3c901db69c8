"""Near-duplicate removal in gradient space: drop an example whose gradient features have cosine similarity above
``threshold`` with an example already kept.

Examples are visited in pool order (best rank first when a score is given, else by ``example_id``), so of a group of
near-duplicates the best-ranked one survives. Neighbours come from a faiss range search over unit features, then a
greedy scan keeps an example iff none of its neighbours has been kept: the result is a maximal set in which no two
kept examples are closer than the threshold, in rank order.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import polars as pl

from datasel.errors import ConfigError
from datasel.features.index import build_index, range_neighbors, unit_rows
from datasel.features.store import FeatureSet, features_for
from datasel.selection.base import POLICIES, Policy

log = logging.getLogger(__name__)


def feature_index_path(cfg: dict[str, Any], where: str) -> str:
    path = cfg.get("features")
    if not path:
        raise ConfigError("this policy reads gradient features but no feature index is set", field=f"{where}.features",
                          fix="set it to a gathered index, e.g. results/features/seed0-epoch5-train/index.json")
    return str(path)


def dedup_order(x: np.ndarray, threshold: float, index_cfg: dict[str, Any] | None = None,
                limit: int | None = None) -> list[int]:
    """Row numbers kept by the greedy scan over ``x`` in row order (at most ``limit``)."""
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"cosine threshold {threshold} is outside [-1, 1]", field="dedup.threshold",
                          fix="use e.g. 0.95")
    u = unit_rows(x)
    # range_search is CPU-only in faiss for most index types, so this index stays on the CPU.
    index = build_index(u, {**(index_cfg or {}), "device": "cpu"})
    neighbours = dict(range_neighbors(index, u, threshold))
    kept_mask = np.zeros(len(u), dtype=bool)
    kept: list[int] = []
    for i in range(len(u)):
        if kept_mask[neighbours[i]].any():
            continue
        kept_mask[i] = True
        kept.append(i)
        if limit is not None and len(kept) >= limit:
            break
    return kept


@POLICIES.register("dedup")
class Dedup(Policy):
    """cfg: ``features`` (index.json), ``threshold`` (cosine, default 0.95), ``index`` (faiss settings)."""

    needs_score: ClassVar[bool] = False

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        ids = pool.get_column("example_id").to_list()
        path = feature_index_path(self.cfg, "dedup")
        if FeatureSet.open(path).meta.get("projector") == "pca":
            # measured (README, projection): cosines of a fitted basis are those of the captured part, so unrelated
            # rows aligned in the leading directions cross a threshold the exact gradients do not
            log.warning("dedup: %s uses factor_basis pca, whose cosines overstate some pairs; a threshold set for "
                        "exact or random-projected gradients removes more rows here (use factor_basis: random)", path)
        x = features_for(path, ids, "dedup.features")
        kept = dedup_order(x, float(self.cfg.get("threshold", 0.95)), self.cfg.get("index"), limit=n_keep)
        if len(kept) < n_keep:
            log.warning("dedup: only %d of %d wanted examples are not near-duplicates (threshold %.3f)", len(kept),
                        n_keep, float(self.cfg.get("threshold", 0.95)))
        return pl.DataFrame({"example_id": [ids[i] for i in kept], "weight": np.ones(len(kept))})
