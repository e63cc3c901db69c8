"""Contrastive training of embedding models: InfoNCE over (query, positive, hard negative) triplets.

The loss GAPrune scores weights with and retrains with: cosine similarity × ``scale`` (20), each query against every
positive and every hard negative of the batch (in-batch negatives), cross-entropy on the query's own positive.
Retraining can hold a pruning mask fixed: masked weights get zero gradient and are re-zeroed after every step, so
the sparsity pattern survives AdamW's weight decay and momentum.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from datasel.data.triplets import Triplets
from datasel.models.embedding import EmbeddingModel
from datasel.runtime import seed_everything
from datasel.tasks.triplets import TripletTask
from datasel.training.loop import LoopSettings, LoopState, train_loop

log = logging.getLogger(__name__)


def info_nce_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor | None = None, scale: float = 20.0,
                  reduction: str = "mean") -> torch.Tensor:
    """InfoNCE with in-batch and hard negatives; ``q``, ``p``, ``n`` are (B, d) embeddings.

    Row i scores query i against [p_1..p_B, n_1..n_B] by cosine × scale; its target is column i.
    """
    return F.cross_entropy(similarity_logits(q, p, n, scale), torch.arange(q.shape[0], device=q.device),
                           reduction=reduction)


def similarity_logits(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor | None = None,
                      scale: float = 20.0) -> torch.Tensor:
    """(B, B or 2B) logits of InfoNCE: cosine × ``scale`` of query i against every positive and hard negative."""
    docs = p if n is None or n.shape[0] == 0 else torch.cat([p, n], dim=0)
    return F.normalize(q, dim=-1) @ F.normalize(docs, dim=-1).T * scale


def triplet_loss(model: EmbeddingModel, batch: Triplets, scale: float = 20.0, max_len: int | None = None,
                 query_max_len: int | None = None) -> torch.Tensor:
    """The InfoNCE loss of one batch of triplets under ``model`` (graph kept for backward)."""
    q = model.embed(batch.query, query_max_len or max_len)
    p = model.embed(batch.positive, max_len)
    n = model.embed(batch.negative, max_len)
    return info_nce_loss(q, p, n, scale)


def batches(triplets: Triplets, batch_size: int, seed: int, shuffle: bool = True,
            drop_last: bool = False) -> Iterator[Triplets]:
    """One epoch of batches in a seeded order."""
    order = list(range(len(triplets)))
    if shuffle:
        order = torch.randperm(len(triplets), generator=torch.Generator().manual_seed(seed)).tolist()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        yield triplets.subset(idx)


def epoch_batches(triplets: Triplets, batch_size: int, seed: int) -> Callable[[int, torch.Generator], Iterator[Triplets]]:
    """The training batch source: epoch e reshuffled with seed + e; batches of one (no in-batch negative) skipped."""

    def sample(epoch: int, _gen: torch.Generator) -> Iterator[Triplets]:
        for b in batches(triplets, batch_size, seed + epoch, drop_last=len(triplets) >= batch_size):
            if len(b) > 1:
                yield b

    return sample


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place (``masks``: parameter name → bool tensor, True = kept)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


def train_embedding(model: EmbeddingModel, triplets: Triplets, cfg: dict[str, Any], seed: int = 0,
                    masks: dict[str, torch.Tensor] | None = None) -> list[float]:
    """Fine-tune ``model`` for ``cfg['steps']`` AdamW steps of InfoNCE; returns the loss of every step.

    cfg: steps (100), batch_size (16), lr (2e-5), weight_decay (0.01), warmup_ratio (0.1), max_grad_norm (1.0),
    scale (20), max_seq_len (model's). With ``masks`` the pruning pattern is held fixed throughout.
    """
    steps = int(cfg.get("steps", 100))
    if steps <= 0 or len(triplets) < 2:
        return []
    seed_everything(seed)
    # linear warm-up then linear decay, as sentence-transformers' default schedule
    settings = LoopSettings.from_cfg(
        {"lr": cfg.get("lr", 2e-5), "weight_decay": cfg.get("weight_decay", 0.01),
         "max_grad_norm": cfg.get("max_grad_norm", 1.0)},
        steps, where="gaprune.retrain", optimizer="adamw", schedule="linear",
        warmup_steps=max(1, int(float(cfg.get("warmup_ratio", 0.1)) * steps)))
    named = dict(model.named_parameters())
    masks = {k: v.to(named[k].device) for k, v in (masks or {}).items()}
    if masks:
        apply_masks(model, masks)

    def mask_gradients(_state: LoopState) -> None:
        for name, mask in masks.items():
            if named[name].grad is not None:
                named[name].grad.mul_(mask)  # a pruned weight gets no update, not even from AdamW's moments

    def after_step(state: LoopState) -> None:
        if masks:
            apply_masks(model, masks)  # decoupled weight decay and epsilon terms must not revive a pruned weight
        value = float(state.losses[-1])
        if not math.isfinite(value):
            raise FloatingPointError(f"retraining loss became {value}; lower gaprune.retrain.lr")

    task = TripletTask(triplets, {"scale": float(cfg.get("scale", 20.0))}, {"max_seq_len": cfg.get("max_seq_len")})
    # no autocast: the encoder trains in the float32 load_embedding_model gives it, the precision its gradient
    # statistics (and so its mask) were computed in
    losses = train_loop(model, lambda batch: task.batch_loss(model, batch),
                        task.training_batches(triplets, int(cfg.get("batch_size", 16)), seed), settings, seed,
                        desc="retrain", precision=None, on_gradients=mask_gradients, after_step=after_step).losses
    log.info("retrained %d steps: loss %.4f → %.4f", steps, losses[0], losses[-1])
    return losses


def mean_loss(model: EmbeddingModel, triplets: Triplets, batch_size: int = 16, scale: float = 20.0,
              max_len: int | None = None) -> float:
    """Average InfoNCE over the batches of ``triplets`` without gradients (a cheap sanity figure)."""
    vals: Sequence[float] = []
    with torch.no_grad():
        vals = [float(triplet_loss(model, b, scale, max_len)) for b in batches(triplets, batch_size, 0, False)
                if len(b) > 1]
    return float(sum(vals) / max(1, len(vals)))
