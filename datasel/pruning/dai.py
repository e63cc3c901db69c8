"""GAPrune's Domain Alignment Importance (Tang & Yang 2025), per weight j of the candidate tensors:

    a_j   = (û^G ⊙ û^D)_j,  û = mean batch gradient / its tensor's L2 norm; 2-D tensors smoothed by a 3×3 mean filter
    raw_j = [(F^D_j − β F^G_j) |θ_j|] · clip(1 + 0.2 a_j, 0.8, 1.2) + c √(|θ_j| + 1e-8)
    DAI_j = sigmoid(zscore_tensor(softplus(raw_j)))

Defaults β = 1, c = 0.5 (the official code's defaults). The lowest DAI is pruned. Options beyond the paper, off by
default: ``fisher_norm: mean`` rescales both Fisher diagonals by the mean of F^D over the candidate tensors, so the
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


@PRUNERS.register("dai")
def dai_scores(params: dict[str, torch.nn.Parameter], stats: GradStats | None, cfg: dict[str, Any],
               seed: int = 0) -> dict[str, torch.Tensor]:
    """DAI for every candidate weight. cfg: beta (1.0), c (0.5), smooth (true), fisher_norm (none|mean),
    postproc (zscore_sigmoid|none), temperature (1.0)."""
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
    out = {}
    for n, p in params.items():
        a = alignment(stats.grad_general[n], stats.grad_domain[n], bool(cfg.get("smooth", True)))
        imp = dai_importance(stats.fisher_domain[n] / scale, stats.fisher_general[n] / scale, a,
                             p.detach().cpu(), beta, c)
        out[n] = zscore_sigmoid(imp, float(cfg.get("temperature", 1.0))) if post == "zscore_sigmoid" else imp
    return out


@PRUNERS.register("dai_norm")
def dai_norm_scores(params: dict[str, torch.nn.Parameter], stats: GradStats | None, cfg: dict[str, Any],
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Ours, not the paper's: DAI with both Fisher diagonals divided by the mean F^D over the candidate tensors.

    With raw Fisher values (~1e-6 for MiniLM under InfoNCE) the c√|θ| term dominates and DAI orders weights almost as
    magnitude does; rescaling lets the domain/general Fisher difference and the alignment factor decide.
    """
    return dai_scores(params, stats, {**cfg, "fisher_norm": "mean"}, seed)
