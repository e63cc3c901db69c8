"""Embeddings, k-means domains and nearest-neighbour domain histograms (faiss).

Used when the pool has no domain labels (k-means over embeddings or gradient features, k up to hundreds or more) and
by the importance-sampling baseline (the domain histogram of the specific set's nearest pool neighbours).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from datasel.errors import ConfigError, DataError
from datasel.runtime import import_faiss

faiss = import_faiss()

log = logging.getLogger(__name__)


def text_embeddings(texts: list[str], dim: int = 1024) -> np.ndarray:
    """Hashed character 1-3-gram counts, L2-normalized: cheap, deterministic and separates prose from code."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(analyzer="char", ngram_range=(1, 3), n_features=dim, alternate_sign=False, norm="l2",
                            lowercase=False)
    return vec.transform(texts).toarray().astype(np.float32)


def row_embeddings(df: pl.DataFrame, meta: dict[str, Any], cfg: dict[str, Any] | None = None,
                   rows: Callable[[pl.DataFrame], tuple[torch.Tensor, torch.Tensor]] | None = None) -> np.ndarray:
    """Embeddings of examples rows: the input vector for vector data (as ``rows`` encodes it: standardized like
    the model's inputs; the raw column without it), hashed n-grams for text."""
    cfg = cfg or {}
    if meta.get("kind") == "text":
        return text_embeddings(df.get_column("text").to_list(), int(cfg.get("hash_dim", 1024)))
    if rows is not None:
        return rows(df)[0].numpy().astype(np.float32, copy=False)
    return np.asarray(df.get_column("x").to_list(), dtype=np.float32).reshape(df.height, -1)


def grad_embeddings(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: str | list[str] = "last_layer",
                    chunk_size: int = 64) -> np.ndarray:
    """Per-example gradient features (the model's chosen parameters), for clustering by training signal."""
    from datasel.features.grads import per_sample_grads
    from datasel.mixing.task import token_ce

    g = per_sample_grads(model, x, y, token_ce, params=params, chunk_size=chunk_size)
    return g.detach().cpu().numpy().astype(np.float32)


def kmeans_labels(emb: np.ndarray, k: int, seed: int = 0, niter: int = 25) -> np.ndarray:
    """faiss k-means; returns a cluster id per row. Refuses k larger than the number of rows."""
    n = emb.shape[0]
    if k < 1 or k > n:
        raise ConfigError(f"k-means with k={k} on {n} rows", field="dga.domains.k", fix=f"use 1 <= k <= {n}")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    # faiss warns (and degrades) below 39 points per centroid; that is acceptable for small demo pools.
    km = faiss.Kmeans(emb.shape[1], k, niter=niter, seed=int(seed) + 1, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=100000)
    km.train(emb)
    _, labels = km.index.search(emb, 1)
    return labels[:, 0].astype(np.int64)


def cluster_names(labels: np.ndarray, k: int) -> np.ndarray:
    width = len(str(max(k - 1, 0)))
    return np.array([f"c{int(c):0{width}d}" for c in labels])


def nn_domain_histogram(pool_emb: list[np.ndarray], query: np.ndarray, k_nn: int = 1,
                        smoothing: float = 0.0) -> np.ndarray:
    """Share of the specific set's nearest pool neighbours that fall in each domain (importance sampling).

    ``pool_emb[i]`` holds domain i's embeddings. Each query votes for the domains of its ``k_nn`` nearest pool rows
    (exact L2 search); ``smoothing`` adds a pseudo-count to every domain so no domain gets exactly zero.
    """
    if query.shape[0] == 0:
        raise DataError("the specific set is empty", field="dga.task.specific", fix="give it some train rows")
    owner = np.concatenate([np.full(len(e), i) for i, e in enumerate(pool_emb)])
    pool = np.ascontiguousarray(np.concatenate(pool_emb), dtype=np.float32)
    index = faiss.IndexFlatL2(pool.shape[1])
    index.add(pool)
    _, nn_idx = index.search(np.ascontiguousarray(query, dtype=np.float32), min(k_nn, pool.shape[0]))
    counts = np.bincount(owner[nn_idx.reshape(-1)], minlength=len(pool_emb)).astype(np.float64) + smoothing
    return counts / counts.sum()
