"""faiss indexes over gradient features: exact inner product, IVF for large N, a GPU copy when a GPU is present.

Cosine similarity is inner product on unit rows, so callers normalize first (:func:`unit_rows`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from datasel.errors import ConfigError
from datasel.runtime import import_faiss

faiss = import_faiss()

log = logging.getLogger(__name__)

INDEX_DEFAULTS: dict[str, Any] = {"kind": "auto", "ivf_min_rows": 100_000, "nlist": 0, "nprobe": 16, "device": "auto",
                                  "batch": 65536}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32 and C-contiguous as faiss wants."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(n, 1e-12), dtype=np.float32)


def _gpus() -> int:
    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # faiss-cpu builds may lack the symbol or the driver
        return 0


# the largest k a faiss GPU index searches (GPU_MAX_SELECTION_K); a larger k is searched on a CPU copy
GPU_MAX_K = 2048


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A copy of ``index`` on device 0 of this process (the GPU job's claimed device, see datasel.devices).

    The flat GPU index computes inner products with a float32 GEMM: similarities equal the CPU index's to ~1e-5 for
    unit rows, so neighbour ids agree except between rows whose similarities tie that closely.
    """
    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, index)
    gpu.referenced_objects = [res]  # the index must not outlive its GPU resources object
    return gpu


def on_gpu(index: faiss.Index) -> bool:
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def build_index(x: np.ndarray, cfg: dict[str, Any] | None = None, seed: int = 0) -> faiss.Index:
    """An inner-product index over ``x`` (rows as given; normalize first for cosine).

    ``kind``: ``flat`` (exact), ``ivf`` (inverted lists, ``nlist`` cells, ``nprobe`` searched), or ``auto``
    (flat below ``ivf_min_rows`` rows, IVF above, where exact search stops being cheap). ``device``: ``auto`` moves
    the index to the GPU when faiss sees one, ``cpu`` never does.
    """
    cfg = {**INDEX_DEFAULTS, **(cfg or {})}
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    kind = cfg["kind"]
    if kind not in ("auto", "flat", "ivf"):
        raise ConfigError(f"unknown index kind {kind!r}", field="index.kind", fix="use auto, flat or ivf")
    if kind == "auto":
        kind = "ivf" if n >= int(cfg["ivf_min_rows"]) else "flat"
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
    else:
        nlist = int(cfg["nlist"]) or max(1, int(4 * math.sqrt(n)))
        nlist = min(nlist, max(1, n // 39))  # faiss wants >= 39 training points per cell
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(x)
        index.nprobe = min(int(cfg["nprobe"]), nlist)
    if cfg["device"] != "cpu" and _gpus() > 0:
        log.info("faiss index on GPU")
        index = to_gpu(index)
    elif cfg["device"] == "cuda":
        log.warning("faiss: device 'cuda' asked for but no GPU is visible to faiss; using the CPU index")
    index.add(x)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products and row ids for every query, searched in batches to bound memory."""
    if k > GPU_MAX_K and on_gpu(index):
        index = faiss.index_gpu_to_cpu(index)
    sims, ids = [], []
    for s in range(0, queries.shape[0], batch):
        d, i = index.search(np.ascontiguousarray(queries[s : s + batch], dtype=np.float32), k)
        sims.append(d)
        ids.append(i)
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(sims), np.concatenate(ids)


def range_neighbors(index: faiss.Index, queries: np.ndarray, radius: float,
                    batch: int = 16384) -> Iterator[tuple[int, np.ndarray]]:
    """For each query row ``q`` yield ``(q, ids with inner product > radius)``, batch by batch."""
    if on_gpu(index):  # faiss has no range search on GPU indexes
        index = faiss.index_gpu_to_cpu(index)
    for s in range(0, queries.shape[0], batch):
        lims, _, ids = index.range_search(np.ascontiguousarray(queries[s : s + batch], dtype=np.float32),
                                          float(radius))
        for j in range(len(lims) - 1):
            yield s + j, ids[lims[j] : lims[j + 1]]
