"""Candidate tensors, pruning masks from per-weight scores, and sparsity bookkeeping.

A mask is a bool tensor per candidate parameter, True = kept. The lowest-scoring weights are pruned: globally
across every candidate tensor (GAPrune's default), per layer (each transformer block loses the same share), or per
tensor (every matrix loses the same share).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.training.embedding import apply_masks

__all__ = ["CANDIDATE_PRESETS", "apply_masks", "candidate_params", "layer_of", "masks_from_scores", "sparsity_of"]

# Regexes over parameter names. BERT-style (MiniLM, BGE, E5), Llama/Qwen-style and GPT-2-style names are covered.
CANDIDATE_PRESETS: dict[str, list[str]] = {
    "mlp": [r"\.intermediate\.dense\.weight$", r"(?<!attention)\.output\.dense\.weight$",
            r"\.mlp\.(gate|up|down)_proj\.weight$", r"\.mlp\.c_(fc|proj)\.weight$", r"\.mlp\.fc\d\.weight$"],
    "attention": [r"\.attention\.self\.(query|key|value)\.weight$", r"\.attention\.output\.dense\.weight$",
                  r"\.self_attn\.[qkvo]_proj\.weight$", r"\.attn\.c_(attn|proj)\.weight$"],
}
CANDIDATE_PRESETS["linear"] = CANDIDATE_PRESETS["mlp"] + CANDIDATE_PRESETS["attention"]

_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)\.")


def candidate_params(model: nn.Module, spec: str | Sequence[str] = "mlp") -> dict[str, nn.Parameter]:
    """The parameters that may be pruned: a preset ('mlp', 'attention', 'linear') or a list of regexes."""
    patterns = CANDIDATE_PRESETS.get(spec) if isinstance(spec, str) else list(spec)
    if patterns is None:
        patterns = [spec]  # a single regex given as a string
    compiled = [re.compile(p) for p in patterns]
    chosen = {n: p for n, p in model.named_parameters() if p.dim() >= 2 and any(c.search(n) for c in compiled)}
    if not chosen:
        names = [n for n, p in model.named_parameters() if p.dim() >= 2][:6]
        raise ConfigError(f"candidate tensors {spec!r} match no 2-D parameter of the model",
                          field="gaprune.prune.candidates",
                          fix=f"use 'mlp', 'attention', 'linear' or regexes over names such as {names}")
    return chosen


def layer_of(name: str) -> str:
    m = _LAYER.search(name)
    return f"layer{m.group(1)}" if m else name


def _prune_lowest(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Masks that drop exactly the k lowest scores; ties are broken by position (stable sort)."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        # NaN would sort arbitrarily: rank it lowest so a broken score prunes rather than protects
        order = torch.argsort(torch.nan_to_num(flat, nan=-float("inf")), stable=True)
        keep[order[:k]] = False
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float, budget: str = "global",
                      rho_min: float = 0.05, rho_max: float = 0.95) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the lowest scores to ``sparsity`` under a 'global', 'per_layer' or 'per_tensor' budget.

    Each group prunes round(sparsity × its size) weights; under the per-layer and per-tensor budgets that count is
    clamped to [⌊ρ_min·n⌋, ⌊ρ_max·n⌋] of the group's n weights (GAPrune's code: 0.05 and 0.95), so no layer is
    left dense or emptied. The global budget has no clamp, as in the official code.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity {sparsity} is outside [0, 1)", field="gaprune.sparsities",
                          fix="give fractions such as 0.3, 0.5, 0.7")
    if not 0.0 <= rho_min <= rho_max <= 1.0:
        raise ConfigError(f"per-layer clamps rho_min {rho_min}, rho_max {rho_max} are not 0 <= rho_min <= rho_max <= 1",
                          field="gaprune.prune.rho_min", fix="use e.g. rho_min: 0.05, rho_max: 0.95")
    names = sorted(scores)
    if budget == "global":
        groups = {"all": names}
    elif budget == "per_layer":
        groups = {}
        for n in names:
            groups.setdefault(layer_of(n), []).append(n)
    elif budget == "per_tensor":
        groups = {n: [n] for n in names}
    else:
        raise ConfigError(f"unknown budget '{budget}'", field="gaprune.prune.budget",
                          fix="use global, per_layer or per_tensor")
    masks: dict[str, torch.Tensor] = {}
    for members in groups.values():
        size = sum(scores[n].numel() for n in members)
        k = int(round(sparsity * size))
        if budget != "global":
            k = min(max(k, math.floor(rho_min * size)), math.floor(rho_max * size))
        for n, m in zip(members, _prune_lowest([scores[n].cpu() for n in members], k)):
            masks[n] = m
    return masks


def sparsity_of(model: nn.Module, names: Sequence[str]) -> dict[str, float]:
    """Share of exactly-zero weights per named tensor (what was really pruned, read back from the model)."""
    params = dict(model.named_parameters())
    return {n: float((params[n] == 0).float().mean()) for n in names}
