"""Basis distributions for many-domain reweighting (METHODS.md §2, "distribution reweighting").

With k fine domains (hundreds of k-means clusters) DGA would need k gradient evaluations per update. Instead choose
N basis distributions P_j over the domains (rows of an N × k row-stochastic matrix), keep weights w over the bases,
and mix α = wᵀP; the update needs N + 1 gradients, whatever k is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datasel.errors import ConfigError


def make_basis(k: int, cfg: dict[str, Any], sizes: np.ndarray, centroids: np.ndarray | None = None,
               seed: int = 0) -> np.ndarray:
    """An (N, k) row-stochastic basis.

    ``kind``: ``identity`` (N = k, plain per-domain DGA); ``groups`` (k-means of the domain centroids into N groups,
    P_j proportional to the domains' sizes inside group j — similar domains move together); ``dirichlet`` (N random
    rows from Dirichlet(``concentration``), blended with a uniform row so every domain stays reachable).
    """
    kind = cfg.get("kind", "identity")
    n = int(cfg.get("n_basis", k))
    if kind == "identity" or n >= k:
        return np.eye(k)
    if n < 1:
        raise ConfigError(f"n_basis = {n}", field="dga.basis.n_basis", fix="use n_basis >= 1")
    if kind == "groups":
        if centroids is None:
            raise ConfigError("basis kind 'groups' needs domain centroids", field="dga.basis.kind",
                              fix="use 'dirichlet' or give embeddings")
        from datasel.mixing.clusters import kmeans_labels

        group = kmeans_labels(centroids, n, seed=seed)
        basis = np.zeros((n, k))
        basis[group, np.arange(k)] = sizes
        empty = basis.sum(1) == 0  # k-means may leave a group empty: give it the natural mixture instead
        basis[empty] = sizes
        return basis / basis.sum(1, keepdims=True)
    if kind == "dirichlet":
        rng = np.random.default_rng(seed)
        conc = float(cfg.get("concentration", 0.1))
        if conc <= 0:
            raise ConfigError("Dirichlet concentration must be > 0", field="dga.basis.concentration", fix="use 0.1")
        rows = rng.dirichlet(np.full(k, conc), size=n)
        return 0.9 * rows + 0.1 / k
    raise ConfigError(f"unknown basis kind '{kind}'", field="dga.basis.kind", fix="use identity, groups or dirichlet")
