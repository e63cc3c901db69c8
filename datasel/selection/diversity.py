"""Diversity selection in gradient space.

``kcenter``: greedy k-center (Gonzalez 1985; the core-set of Sener & Savarese 2018): start from the first pool row,
then repeatedly add the example farthest from everything chosen. It is a 2-approximation of the minimax cover radius.
``kmeans_coverage``: faiss k-means with ``n_keep`` centroids (farthest-first seeding), keeping the example nearest to each centroid (the
recipe GAPrune uses to pick diverse triplets); a centroid whose nearest examples are all taken gives its slot to the
next nearest free one.
Both work on unit features (cosine geometry) unless ``normalize: false``.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import polars as pl

from datasel.features.index import search, unit_rows
from datasel.features.store import features_for
from datasel.runtime import import_faiss, progress
from datasel.selection.base import POLICIES, Policy
from datasel.selection.dedup import feature_index_path

faiss = import_faiss()

log = logging.getLogger(__name__)


def kcenter_greedy(x: np.ndarray, k: int, first: int = 0) -> list[int]:
    """Greedy k-center under Euclidean distance; ties go to the lowest row number (deterministic)."""
    n = x.shape[0]
    k = min(k, n)
    sq = np.einsum("ij,ij->i", x, x)
    chosen = [first]
    mind = np.full(n, np.inf)
    for _ in progress(range(k - 1), desc="k-center", total=k - 1):
        c = chosen[-1]
        d = sq - 2.0 * (x @ x[c]) + sq[c]
        np.minimum(mind, np.maximum(d, 0.0), out=mind)
        mind[chosen[-1]] = -1.0
        nxt = int(np.argmax(mind))
        chosen.append(nxt)
    return chosen


def kmeans_coverage(x: np.ndarray, k: int, seed: int, niter: int = 20, probe: int = 16) -> list[int]:
    """Row nearest to each of ``k`` k-means centroids, distinct rows; filled in centroid order."""
    n, d = x.shape
    k = min(k, n)
    # Farthest-first (k-center) seeding from a seeded start, then Lloyd iterations in faiss: random seeding from data
    # points often puts two centroids in one cluster, which Lloyd cannot undo on well-separated data.
    xs = np.ascontiguousarray(x, dtype=np.float32)
    start = int(np.random.default_rng(seed).integers(n))
    init = xs[kcenter_greedy(xs.astype(np.float64), k, start)]
    km = faiss.Kmeans(d, k, niter=niter, seed=int(seed), spherical=False, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, n // max(k, 1) + 1))
    km.train(xs, init_centroids=init)
    # Exact L2 neighbours of the centroids (for unit rows the same order as cosine).
    l2 = faiss.IndexFlatL2(d)
    l2.add(np.ascontiguousarray(x, dtype=np.float32))
    _, nn_ids = search(l2, km.centroids, min(probe, n))
    taken = np.zeros(n, dtype=bool)
    out: list[int] = []
    short = 0
    for row in nn_ids:
        free = [int(i) for i in row if i >= 0 and not taken[i]]
        if free:
            taken[free[0]] = True
            out.append(free[0])
        else:
            short += 1
    if short:  # centroids whose neighbourhood was all taken: fill with the points farthest from the chosen set
        rest = kcenter_fill(x, out, short)
        out.extend(rest)
    return out


def kcenter_fill(x: np.ndarray, chosen: list[int], extra: int) -> list[int]:
    """``extra`` more rows by greedy k-center, continuing from ``chosen``."""
    sq = np.einsum("ij,ij->i", x, x)
    mind = np.full(x.shape[0], np.inf)
    for c in chosen:
        np.minimum(mind, np.maximum(sq - 2.0 * (x @ x[c]) + sq[c], 0.0), out=mind)
    mind[chosen] = -1.0
    out = []
    for _ in range(extra):
        nxt = int(np.argmax(mind))
        out.append(nxt)
        np.minimum(mind, np.maximum(sq - 2.0 * (x @ x[nxt]) + sq[nxt], 0.0), out=mind)
        mind[nxt] = -1.0
    return out


class _FeaturePolicy(Policy):
    needs_score: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def _features(self, pool: pl.DataFrame) -> tuple[list[str], np.ndarray]:
        ids = pool.get_column("example_id").to_list()
        x = features_for(feature_index_path(self.cfg, self.name), ids, f"{self.name}.features")
        return ids, (unit_rows(x) if self.cfg.get("normalize", True) else x.astype(np.float32))


@POLICIES.register("kcenter")
class KCenter(_FeaturePolicy):
    """cfg: ``features`` (index.json), ``normalize`` (default true), ``start`` (first | random)."""

    name = "kcenter"

    def stochastic(self) -> bool:
        return self.cfg.get("start") == "random"

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        ids, x = self._features(pool)
        first = int(np.random.default_rng(seed).integers(len(ids))) if self.cfg.get("start") == "random" else 0
        rows = kcenter_greedy(x.astype(np.float64), n_keep, first)
        # position = pick order: the first picks cover the space coarsely, later ones refine it.
        return pl.DataFrame({"example_id": [ids[i] for i in rows], "weight": np.ones(len(rows)),
                             "position": np.arange(len(rows), dtype=np.int64)})


@POLICIES.register("kmeans_coverage")
class KMeansCoverage(_FeaturePolicy):
    """cfg: ``features`` (index.json), ``normalize`` (default true), ``niter`` (k-means iterations)."""

    name = "kmeans_coverage"
    draws_random = True  # the seeded first centre of the k-means seeding

    def choose(self, pool: pl.DataFrame, n_keep: int, seed: int) -> pl.DataFrame:
        ids, x = self._features(pool)
        rows = kmeans_coverage(x, n_keep, seed, int(self.cfg.get("niter", 20)))
        return pl.DataFrame({"example_id": [ids[i] for i in rows], "weight": np.ones(len(rows))})
