"""GAPrune's Domain Alignment Importance (Tang & Yang 2025), per weight j of the candidate tensors:

    a_j   = (û^G ⊙ û^D)_j,  û = mean batch gradient / its tensor's L2 norm; 2-D tensors smoothed by a 3×3 mean filter
    raw_j = [(F^D_j − β F^G_j) |θ_j|] · clip(1 + 0.2 a_j, 0.8, 1.2) + c √(|θ_j| + 1e-8)
    DAI_j = sigmoid(zscore_tensor(softplus(raw_j)))

Defaults β = 1, c = 0.5 (the official code's defaults). The lowest DAI is pruned. The official code's
post-processing is reproduced, each step an option with its default:
  - rescue (true): a tensor whose importances are near-constant (std < 1e-6) is multiplied by 0.5 + 0.5 |θ|/mean|θ|
    before post-processing, so its weights still get an order;
  - postproc: zscore_sigmoid (default, with ``temperature``), minmax ((x − min)/(max − min + 1e-8)), rank (rank/n,
    1 = lowest) or none, per tensor;
  - fusion_alpha (0), fusion_beta (1): when either differs from its default the score is α F^D|θ| + β·post-processed;
  - the per-layer budget clamps ρ_min/ρ_max live in datasel.pruning.masks (``prune.rho_min``/``rho_max``).
Options beyond the paper, off by default: ``fisher_norm: mean`` rescales both Fisher diagonals by the mean of F^D over the candidate tensors, so the
Fisher term is O(1) next to the c√|θ| term whatever the loss scale.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from datasel.errors import ConfigError
from datasel.pruning.methods import PRUNERS
from datasel.pruning.stats import GradStats

EPS = 1e-8


def smooth3x3(t: torch.Tensor) -> torch.Tensor:
    """3×3 mean filter with zero padding (the official code's conv2d), for 2-D tensors; others unchanged."""
    if t.dim() != 2 or min(t.shape) < 3:
        return t
    kernel = torch.full((1, 1, 3, 3), 1.0 / 9.0, dtype=t.dtype)
    return F.conv2d(t[None, None], kernel, padding=1)[0, 0]


def unit(t: torch.Tensor) -> torch.Tensor:
    n = t.norm()
    return t / (n + EPS) if n > EPS else torch.zeros_like(t)


def alignment(grad_general: torch.Tensor, grad_domain: torch.Tensor, smooth: bool = True) -> torch.Tensor:
    """Element-wise alignment a = û^G ⊙ û^D (its sum over the tensor is the tensor's gradient cosine)."""
    a = unit(grad_general.float()) * unit(grad_domain.float())
    return smooth3x3(a) if smooth else a


def tensor_cosine(grad_general: torch.Tensor, grad_domain: torch.Tensor) -> float:
    """Cosine between the mean general and mean domain gradients of one tensor."""
    return float((unit(grad_general.float()) * unit(grad_domain.float())).sum())


def dai_importance(fisher_domain: torch.Tensor, fisher_general: torch.Tensor, align: torch.Tensor,
                   weight: torch.Tensor, beta: float = 1.0, c: float = 0.5) -> torch.Tensor:
    """softplus([(F^D − βF^G)|θ|]·clip(1 + 0.2a, 0.8, 1.2) + c√(|θ| + 1e-8)), before per-tensor normalization."""
    mag = weight.abs().float()
    factor = torch.clamp(1.0 + 0.2 * align, 0.8, 1.2)
    raw = (fisher_domain - beta * fisher_general) * mag * factor + c * torch.sqrt(mag + EPS)
    return F.softplus(raw)


def zscore_sigmoid(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.sigmoid((x - x.mean()) / (x.std() + EPS) / max(temperature, 1e-6))


def minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + EPS)


def rank01(x: torch.Tensor) -> torch.Tensor:
    """Rank / n over the flattened tensor (1/n = lowest); ties broken by position, as a stable argsort does."""
    flat = x.reshape(-1)
    ranks = torch.empty(flat.numel(), dtype=torch.float32)
    ranks[torch.argsort(flat, stable=True)] = torch.arange(1, flat.numel() + 1, dtype=torch.float32)
    return (ranks / flat.numel()).reshape(x.shape)


RESCUE_STD = 1e-6  # the official code's threshold for "near-constant importances"


def rescue_flat(imp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Importances whose spread is below RESCUE_STD would tie; the official code orders them by relative magnitude."""
    if imp.numel() < 2 or float(imp.std()) >= RESCUE_STD:
        return imp
    mag = weight.abs().float()
    return imp * (0.5 + 0.5 * mag / (mag.mean() + EPS))


def postprocess(imp: torch.Tensor, how: str, temperature: float = 1.0) -> torch.Tensor:
    if how == "zscore_sigmoid":
        return zscore_sigmoid(imp, temperature)
    if how == "minmax":
        return minmax(imp)
    if how == "rank":
        return rank01(imp)
    if how == "none":
        return imp
    raise ConfigError(f"unknown postproc '{how}'", field="gaprune.dai.postproc",
                      fix="use zscore_sigmoid, minmax, rank or none")


@PRUNERS.register("dai")
def dai_scores(params: dict[str, torch.nn.Parameter], stats: GradStats | None, cfg: dict[str, Any],
               seed: int = 0) -> dict[str, torch.Tensor]:
    """DAI for every candidate weight. cfg: beta (1.0), c (0.5), smooth (true), fisher_norm (none|mean),
    rescue (true), postproc (zscore_sigmoid|minmax|rank|none), temperature (1.0), fusion_alpha (0.0),
    fusion_beta (1.0)."""
    assert stats is not None
    beta, c = float(cfg.get("beta", 1.0)), float(cfg.get("c", 0.5))
    norm = cfg.get("fisher_norm", "none")
    if norm == "mean":
        scale = torch.cat([stats.fisher_domain[n].flatten() for n in params]).mean().item() + 1e-30
    elif norm == "none":
        scale = 1.0
    else:
        raise ConfigError(f"unknown fisher_norm '{norm}'", field="gaprune.dai.fisher_norm", fix="use none or mean")
    post = cfg.get("postproc", "zscore_sigmoid")
    temperature = float(cfg.get("temperature", 1.0))
    alpha, fbeta = float(cfg.get("fusion_alpha", 0.0)), float(cfg.get("fusion_beta", 1.0))
    out = {}
    for n, p in params.items():
        w = p.detach().cpu()
        fd = stats.fisher_domain[n] / scale
        a = alignment(stats.grad_general[n], stats.grad_domain[n], bool(cfg.get("smooth", True)))
        imp = dai_importance(fd, stats.fisher_general[n] / scale, a, w, beta, c)
        if cfg.get("rescue", True):
            imp = rescue_flat(imp, w)
        imp = postprocess(imp, post, temperature)
        # the official code fuses only when asked (α ≠ 0 or β ≠ 1); otherwise the post-processed score stands as is
        out[n] = alpha * fd * w.abs().float() + fbeta * imp if (alpha != 0.0 or fbeta != 1.0) else imp
    return out


@PRUNERS.register("dai_norm")
def dai_norm_scores(params: dict[str, torch.nn.Parameter], stats: GradStats | None, cfg: dict[str, Any],
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Ours, not the paper's: DAI with both Fisher diagonals divided by the mean F^D over the candidate tensors.

    With raw Fisher values (~1e-6 for MiniLM under InfoNCE) the c√|θ| term dominates and DAI orders weights almost as
    magnitude does; rescaling lets the domain/general Fisher difference and the alignment factor decide.
    """
    return dai_scores(params, stats, {**cfg, "fisher_norm": "mean"}, seed)
