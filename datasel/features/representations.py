"""Representation features (``features.sets.<set>.kind: representation``): a model's hidden state per example
instead of its gradient.

On causal-LM data this is the representation baseline LESS compares against (RDS): the final layer's hidden state
at each example's last real token (prompt and reply), taken from the warm-up checkpoint; ``target_alignment`` then
ranks the pool by the cosine of those states to the target rows', exactly as it does for gradients. The states are
stored unprojected in the feature store's shards (float16, resumable by chunk), so every scorer and check that
reads gradient features reads them too; a set of one kind is never compared with a set of the other (their
``projection`` differs).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasel.features.grads import Inputs, slice_inputs
from datasel.features.store import ShardWriter
from datasel.runtime import progress

# names the space of these features: what is taken (the final layer's last real token), not a projection's seed
SPACE = "representation:last_hidden:last_token"
Embed = Callable[[nn.Module, Inputs], torch.Tensor]


def represent(model: nn.Module, inputs: Inputs, rows: int, out_dir: str | os.PathLike, cfg: dict[str, Any],
              embed: Embed, *, ids: Sequence[str] | None = None, identity: dict[str, Any] | None = None,
              ) -> dict[str, Any]:
    """Write (or resume) one shard of ``embed(model, chunk)`` over ``rows`` rows of ``inputs``, in chunks of
    ``cfg['chunk_size']``; returns the shard's final metadata."""
    model.eval()
    size = int(cfg["chunk_size"])
    if rows:
        with torch.inference_mode():
            dim = int(embed(model, slice_inputs(inputs, 0, 1)).shape[1])
    else:  # a shard left empty (more shards than rows) still records the space its set lives in
        dim = int(model.config.hidden_size)
    meta = {
        "model": "", "checkpoint": "", "checkpoint_sha": "", "split": "", **(identity or {}),
        "loss": "none", "params": "representation", "dim_in": dim, "dim": dim, "projector": "none",
        "projection": "representation", "projection_sha": hashlib.sha256(SPACE.encode()).hexdigest()[:16],
        "seed": int(cfg["seed"]), "block_rows": int(cfg["block_rows"]), "unit_norm": bool(cfg["unit_norm"]),
        "precondition": "none", "chunk_size": size,
    }
    writer = ShardWriter(out_dir, meta, ids, rows)
    for s, e in progress(writer.pending(size), desc=f"representations {Path(out_dir).name}", unit="chunk"):
        with torch.inference_mode():
            f = embed(model, slice_inputs(inputs, s, e)).float()
        if cfg["unit_norm"]:
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        writer.write(s, f.cpu().numpy())
    return writer.finalize()
