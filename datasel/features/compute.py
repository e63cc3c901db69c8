"""Featurize: per-sample gradients → (optional Adam preconditioning) → projection → (optional unit norm) → shard.

This module only orchestrates; each stage is swappable (``grads.PerSampleGrads``, ``projectors.Projector``,
``store.ShardWriter``), as in TRAK's computer / projector / saver split.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datasel.features.grads import Inputs, LossFn, PerSampleGrads, batch_len, slice_inputs
from datasel.features.layer_grads import mark_per_example_mean
from datasel.features.projectors import AdamPreconditioner, make_projector
from datasel.features.store import ShardWriter
from datasel.runtime import autocast, progress

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "kind": "gradient",
    "params": "all",
    "mode": "auto",
    "projection": "factored",
    "projector": "rademacher",
    "sparse_nnz": 1,
    "factor_dim": "auto",
    "factor_out_share": 0.5,
    "factor_rest": "sparse",
    "factor_stage2": "sparse",
    "factor_basis": "random",
    "factor_fit_rows": 2048,
    "factor_rank": 16,
    "dim": 512,
    "seed": 0,
    "block_rows": 4096,
    "cache_mb": 256,
    "unit_norm": False,
    "precondition": "none",
    "chunk_size": 256,
}


@mark_per_example_mean
def cross_entropy(out: Any, y: torch.Tensor) -> torch.Tensor:
    """Classification loss; accepts raw logits or a Hugging Face output with ``.logits``."""
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits, y)


def fit_rows(n: int, k: int) -> torch.Tensor:
    """``k`` rows spread evenly over ``n`` (all of them when ``k >= n``): the rows a fitted basis learns from.

    Spread, not the first ``k``: a user's ids may follow the file's order, and a file sorted by class would otherwise
    fit the basis to one class."""
    return torch.arange(n) if k >= n else torch.arange(k) * n // k


def shard_bounds(rows: int, shards: int, index: int) -> tuple[int, int]:
    """Contiguous, balanced row range of shard ``index`` of ``shards`` (the same on every machine)."""
    return rows * index // shards, rows * (index + 1) // shards


def featurize(
    model: nn.Module,
    inputs: Inputs,
    targets: torch.Tensor,
    out_dir: str | os.PathLike,
    cfg: dict[str, Any],
    *,
    ids: Sequence[str] | None = None,
    loss_fn: LossFn = cross_entropy,
    identity: dict[str, Any] | None = None,
    preconditioner: AdamPreconditioner | None = None,
    device: str | torch.device | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    fit: tuple[Inputs, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Write (or resume) one feature shard for ``inputs`` and return its final metadata.

    ``inputs``/``targets`` only need slicing (``x[s:e]``), so a lazy source keeps memory independent of N.
    ``identity`` adds fields that name where the features come from (model, checkpoint, split) to the metadata;
    its ``checkpoint_sha`` (the digest of the weights) makes a resume against other weights start the shard over.
    ``fit`` gives the rows a fitted projection (``factor_basis: pca``) learns its basis from, in chunks of
    ``chunk_size`` (the float sums, so the basis bits, follow the chunking; callers pick them with :func:`fit_rows`);
    every shard and split of one feature space must pass the same rows. Without it the first ``factor_fit_rows`` of
    the shard's own rows are used.
    """
    cfg = {**DEFAULTS, **cfg}
    model.eval()  # dropout/batch-norm in train mode would make features depend on the chunk
    device = torch.device(device) if device is not None else next(model.parameters()).device
    # reuse: each chunk's gradients are projected before the next chunk is computed
    comp = PerSampleGrads(model, loss_fn, cfg["params"], cfg["mode"], reuse=True)
    projector = make_projector(cfg, comp.dim, device, grads=comp)
    if getattr(projector, "needs_fit", False):
        fx, fy = fit if fit is not None else (inputs, targets)
        n_fit = _rows(fx) if fit is not None else min(int(cfg["factor_fit_rows"]), _rows(fx))
        size = int(cfg["chunk_size"])
        projector.fit(comp, [(slice_inputs(fx, s, min(s + size, n_fit)), fy[s : min(s + size, n_fit)])
                             for s in range(0, n_fit, size)])
    if cfg["precondition"] == "adam" and preconditioner is None:
        log.warning("precondition 'adam' asked for but no optimizer moments exist; using plain gradients")
    meta = {
        "model": "", "checkpoint": "", "checkpoint_sha": "", "split": "",
        "loss": getattr(loss_fn, "__name__", "custom"),
        **(identity or {}),
        "params": cfg["params"],
        "dim_in": comp.dim,
        "dim": projector.dim_out,
        "projector": projector.fingerprint()["kind"],
        # features of different projections (or settings of one) live in different spaces: never mixed or compared
        "projection": projector.fingerprint()["projection"],
        "projection_sha": projector.fingerprint_sha(),
        "seed": int(cfg["seed"]),
        "block_rows": int(cfg["block_rows"]),
        "unit_norm": bool(cfg["unit_norm"]),
        "precondition": "adam" if preconditioner is not None else "none",
        "chunk_size": int(cfg["chunk_size"]),
    }
    rows = _rows(inputs)
    writer = ShardWriter(out_dir, meta, ids, rows)
    chunks = writer.pending(int(cfg["chunk_size"]))
    for s, e in progress(chunks, desc=f"features {Path(out_dir).name}", unit="chunk"):
        # exact work: fp32 unless compute.precision names bf16/fp16 (the factored path never calls comp itself)
        with autocast(device, exact=True, purpose="gradient features"):
            if preconditioner is not None:  # elementwise on the gradient, so projected from it
                f = projector.preconditioned(comp, slice_inputs(inputs, s, e), targets[s:e], preconditioner)
            else:
                f = projector.features(comp, slice_inputs(inputs, s, e), targets[s:e])
        if cfg["unit_norm"]:
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        writer.write(s, f.float().cpu().numpy())
        if on_chunk is not None:
            on_chunk(s, e)
    if comp.mode == "loop" and cfg["mode"] == "auto":
        log.info("shard %s used the per-example loop (see the warning above for why)", out_dir)
    return writer.finalize()


def _rows(inputs: Inputs) -> int:
    return batch_len(inputs) if isinstance(inputs, Mapping) else len(inputs)
