"""Static per-example alignment with the specific set: ⟨g_x, ∇ℓ_spe⟩ and its cosine, a by-product of DGA that the
selection policies can rank on (a score table, method ``dga_alignment``; higher = more aligned with the target).

``loss_fn`` is the loss the mixture trained with (:func:`datasel.mixing.task.training_loss`): token cross-entropy,
or the causal-LM task's per-example loss for a pretrained LM, so ℓ_spe is the mean of the specific examples' losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
import torch
from torch import nn

from datasel.features.grads import iter_per_sample_grads, select_params
from datasel.mixing.task import MixingTask, token_ce
from datasel.runtime import progress

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def specific_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: str | list[str] = "all",
                      batch: int = 256, loss_fn: LossFn = token_ce) -> dict[str, torch.Tensor]:
    """∇ℓ_spe: the gradient of the mean loss over the whole specific set, per parameter name."""
    chosen = select_params(model, params)
    total = {n: torch.zeros_like(p) for n, p in chosen.items()}
    for s in range(0, len(y), batch):
        loss = loss_fn(model(x[s : s + batch]), y[s : s + batch]) * len(y[s : s + batch]) / len(y)
        for (n, _), g in zip(chosen.items(), torch.autograd.grad(loss, list(chosen.values()))):
            total[n] += g
    return total


def example_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g_spe: dict[str, torch.Tensor],
                      params: str | list[str] = "all", chunk_size: int = 64, loss_fn: LossFn = token_ce
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dot, cosine) of every example's gradient with ``g_spe``, chunked so the (N, D) matrix never exists."""
    spe_norm = torch.sqrt(sum(g.pow(2).sum() for g in g_spe.values()))
    dots, coss = [], []
    for chunk in iter_per_sample_grads(model, x, y, loss_fn, params=params, chunk_size=chunk_size):
        dot = sum((chunk[n].reshape(chunk[n].shape[0], -1) @ g_spe[n].reshape(-1)) for n in g_spe)
        sq = sum(chunk[n].reshape(chunk[n].shape[0], -1).pow(2).sum(1) for n in g_spe)
        dots.append(dot)
        coss.append(dot / (sq.sqrt() * spe_norm).clamp_min(1e-12))
    return torch.cat(dots).detach(), torch.cat(coss).detach()


def alignment_table(model: nn.Module, task: MixingTask, cfg: dict[str, Any], loss_fn: LossFn = token_ce
                    ) -> pl.DataFrame:
    """A score frame over the generic pool: ``example_id, score`` (cosine by default), ``alignment_dot``,
    ``alignment_cos``, ``domain``. cfg (``dga.alignment``): ``params`` (parameter set), ``score`` (cosine|dot),
    ``chunk_size``."""
    params = cfg.get("params", "all")
    model.eval()
    g_spe = specific_gradient(model, task.spe_x, task.spe_y, params, loss_fn=loss_fn)
    frames = []
    for name, x, y, ids in progress(list(zip(task.domains, task.xs, task.ys, task.ids)), desc="alignment"):
        dot, cos = example_alignment(model, x, y, g_spe, params, int(cfg.get("chunk_size", 64)), loss_fn)
        frames.append(pl.DataFrame({"example_id": ids, "alignment_dot": dot.cpu().double().numpy(),
                                    "alignment_cos": cos.cpu().double().numpy(), "domain": name}))
    df = pl.concat(frames)
    key = "alignment_cos" if cfg.get("score", "cosine") == "cosine" else "alignment_dot"
    return df.with_columns(pl.col(key).alias("score"))
