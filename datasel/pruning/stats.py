"""Gradient statistics of InfoNCE over the candidate tensors: Fisher diagonals, mean gradients, per-batch agreement.

One pass over paired (domain, general) mini-batches computes, per candidate weight j:
- F^D_j, F^G_j = Σ over batches of (∂L/∂θ_j)², divided by the number of triplets (``normalize: samples``, GAPrune's
  code, which sums squared micro-batch gradients over micro-batches of 8 and divides by the sample count) or by the
  number of batches (``normalize: batches``, the mean squared batch gradient);
- ḡ^D_j, ḡ^G_j = the mean batch gradient (for the alignment term);
- per tensor: the mean over paired batches of cos(g^G, g^D) and the conflict rate (share of batches with cos < 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datasel.data.triplets import Triplets
from datasel.models.embedding import EmbeddingModel
from datasel.runtime import progress, seed_everything
from datasel.training.embedding import batches, triplet_loss

log = logging.getLogger(__name__)


@dataclass
class GradStats:
    """Per-weight statistics (CPU float32, keyed by parameter name) and per-tensor batch agreement."""

    fisher_domain: dict[str, torch.Tensor]
    fisher_general: dict[str, torch.Tensor]
    grad_domain: dict[str, torch.Tensor]
    grad_general: dict[str, torch.Tensor]
    batch_cos_mean: dict[str, float] = field(default_factory=dict)
    conflict_rate: dict[str, float] = field(default_factory=dict)
    n_batches: dict[str, int] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        from datasel.store import save_checkpoint_file

        save_checkpoint_file(self.__dict__, path)

    @staticmethod
    def load(path: str | Path) -> GradStats:
        return GradStats(**torch.load(path, map_location="cpu", weights_only=True))


def _batch_grads(model: EmbeddingModel, batch: Triplets, params: dict[str, torch.nn.Parameter],
                 cfg: dict[str, Any]) -> tuple[dict[str, torch.Tensor], float]:
    model.zero_grad(set_to_none=True)
    loss = triplet_loss(model, batch, float(cfg.get("scale", 20.0)), cfg.get("max_seq_len"))
    loss.backward()
    grads = {n: (p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32))
             for n, p in params.items()}
    return grads, float(loss.detach())


def gradient_statistics(model: EmbeddingModel, domain: Triplets, general: Triplets,
                        params: dict[str, torch.nn.Parameter], cfg: dict[str, Any], seed: int = 0) -> GradStats:
    """Fisher diagonals, mean gradients and per-tensor agreement over ``cfg['batch_size']`` (8) triplet batches.

    ``cfg``: batch_size, max_batches (cap per set; null = all), scale (20), max_seq_len, normalize (samples |
    batches: what the summed squared gradients are divided by), mode (train | eval). GAPrune's code gathers the
    statistics in train mode (dropout on, seeded here so the pass is reproducible); ``eval`` describes the
    deterministic model that gets pruned instead.
    """
    normalize = cfg.get("normalize", "samples")
    mode = cfg.get("mode", "train")
    from datasel.errors import ConfigError, DataError

    if normalize not in ("samples", "batches"):
        raise ConfigError(f"unknown Fisher normalization '{normalize}'", field="gaprune.fisher.normalize",
                          fix="use samples (GAPrune's code) or batches")
    if mode not in ("train", "eval"):
        raise ConfigError(f"unknown statistics mode '{mode}'", field="gaprune.fisher.mode",
                          fix="use train (GAPrune's code: dropout on) or eval")
    seed_everything(seed)
    bs = int(cfg.get("batch_size", 8))
    cap = cfg.get("max_batches")
    dom = [b for b in batches(domain, bs, seed) if len(b) > 1]
    gen = [b for b in batches(general, bs, seed + 1) if len(b) > 1]
    if cap is not None:
        dom, gen = dom[: int(cap)], gen[: int(cap)]
    if not dom or not gen:
        raise DataError(f"gradient statistics need ≥ 2 triplets per set (domain {len(domain)}, general "
                        f"{len(general)})", field="gaprune.data.n_train", fix="raise gaprune.data.n_train")
    dev = model.device
    zeros = {n: torch.zeros_like(p, dtype=torch.float32, device=dev) for n, p in params.items()}
    acc = {k: {n: z.clone() for n, z in zeros.items()} for k in ("fd", "fg", "gd", "gg")}
    cos_sum = dict.fromkeys(params, 0.0)
    conflicts = dict.fromkeys(params, 0)
    losses = {"domain": 0.0, "general": 0.0}
    was_training = model.training
    model.train(mode == "train")
    was_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)  # gradients only where they are used: less memory and time
    try:
        steps = max(len(dom), len(gen))
        for i in progress(range(steps), desc="fisher+alignment", total=steps, unit="batch"):
            g_d = g_g = None
            if i < len(dom):
                g_d, loss = _batch_grads(model, dom[i], params, cfg)
                losses["domain"] += loss
                for n, g in g_d.items():
                    acc["fd"][n].add_(g * g)
                    acc["gd"][n].add_(g)
            if i < len(gen):
                g_g, loss = _batch_grads(model, gen[i], params, cfg)
                losses["general"] += loss
                for n, g in g_g.items():
                    acc["fg"][n].add_(g * g)
                    acc["gg"][n].add_(g)
            if g_d is not None and g_g is not None:
                for n in params:
                    c = float(torch.nn.functional.cosine_similarity(g_d[n].flatten(), g_g[n].flatten(), dim=0,
                                                                    eps=1e-20))
                    cos_sum[n] += c
                    conflicts[n] += int(c < 0)
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(was_grad[n])
        model.train(was_training)
    nd, ng, paired = len(dom), len(gen), min(len(dom), len(gen))
    # the Fisher divisor: triplets seen (the official estimator) or batches; the mean gradients stay per batch (only
    # their direction enters the alignment term)
    fd_div = sum(len(b) for b in dom) if normalize == "samples" else nd
    fg_div = sum(len(b) for b in gen) if normalize == "samples" else ng
    cpu = {k: {n: t.cpu() for n, t in v.items()} for k, v in acc.items()}
    stats = GradStats(
        fisher_domain={n: t / fd_div for n, t in cpu["fd"].items()},
        fisher_general={n: t / fg_div for n, t in cpu["fg"].items()},
        grad_domain={n: t / nd for n, t in cpu["gd"].items()},
        grad_general={n: t / ng for n, t in cpu["gg"].items()},
        batch_cos_mean={n: v / paired for n, v in cos_sum.items()},
        conflict_rate={n: v / paired for n, v in conflicts.items()},
        n_batches={"domain": nd, "general": ng},
        loss={"domain": losses["domain"] / nd, "general": losses["general"] / ng},
    )
    log.info("gradient statistics over %d domain / %d general batches; mean loss %.4f / %.4f", nd, ng,
             stats.loss["domain"], stats.loss["general"])
    return stats
