"""Train and evaluate a classifier on tensors, under an epoch or step budget, deterministically from a seed.

The same function trains the proxy models (with checkpoints) and the target models on each selection, so a
selection is compared with its baselines under exactly the same optimizer, schedule and budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datasel.errors import ConfigError
from datasel.runtime import progress

log = logging.getLogger(__name__)

BatchSampler = Callable[[int, torch.Generator], Iterator[torch.Tensor]]


def shuffled_batches(n: int, batch_size: int) -> BatchSampler:
    """Epoch-wise random permutations, split into batches (the last short batch kept)."""

    def sample(epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(n, generator=gen)
        yield from perm.split(batch_size)

    return sample


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def _optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr, wd = cfg.get("optimizer", "adam"), float(cfg.get("lr", 1e-3)), float(cfg.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd, momentum=float(cfg.get("momentum", 0.9)))
    raise ConfigError(f"unknown optimizer '{name}'", field="optimizer", fix="use adam, adamw or sgd")


def total_steps(n: int, cfg: dict[str, Any]) -> int:
    """Optimizer steps for ``n`` examples: ``budget.unit`` epochs scales with n; steps is fixed (equal compute)."""
    budget = cfg.get("budget", {"unit": "epochs", "value": 10})
    if budget["unit"] == "epochs":
        return int(budget["value"]) * steps_per_epoch(n, int(cfg.get("batch_size", 128)))
    return int(budget["value"])


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: dict[str, Any],
    seed: int,
    weights: torch.Tensor | None = None,
    sampler: BatchSampler | None = None,
    checkpoint_epochs: tuple[int, ...] = (),
    on_checkpoint: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    desc: str = "train",
) -> nn.Module:
    """Train ``model`` in place and return it.

    ``weights`` scales each example's loss (selection weights); ``sampler`` overrides the batch order (curricula);
    ``on_checkpoint(epoch, model, optimizer)`` fires at epoch 0 (initialization) and after each epoch in
    ``checkpoint_epochs``.
    """
    n = x.shape[0]
    if n == 0:
        raise ConfigError("cannot train on zero examples", field="selection", fix="keep a larger fraction")
    bs = int(cfg.get("batch_size", 128))
    steps = total_steps(n, cfg)
    sampler = sampler or shuffled_batches(n, bs)
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, cfg)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        if cfg.get("schedule", "cosine") == "cosine"
        else None
    )
    if on_checkpoint and 0 in checkpoint_epochs:
        on_checkpoint(0, model, opt)
    model.train()
    step, epoch = 0, 0
    bar = progress(range(steps), desc=desc, unit="step")
    while step < steps:
        for idx in sampler(epoch, gen):
            xb, yb = x[idx], y[idx]
            loss = F.cross_entropy(model(xb), yb, reduction="none")
            loss = (loss * weights[idx]).sum() / weights[idx].sum() if weights is not None else loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            step += 1
            next(bar, None)
            if step >= steps:
                break
        epoch += 1
        if on_checkpoint and epoch in checkpoint_epochs:
            on_checkpoint(epoch, model, opt)
    model.eval()
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Accuracy, mean cross-entropy, and how many classes the model predicts (1: it learned only the majority)."""
    model.eval()
    correct, loss, predicted = 0, 0.0, set()
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        out = model(xb)
        loss += F.cross_entropy(out, yb, reduction="sum").item()
        pred = out.argmax(1)
        correct += (pred == yb).sum().item()
        predicted.update(pred.unique().tolist())
    n = max(1, x.shape[0])
    # the report warns when a target model predicts a single class (see datasel.report.summary.run_warnings)
    return {"accuracy": correct / n, "loss": loss / n, "predicted_classes": float(len(predicted))}


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    model.eval()
    return torch.cat([F.softmax(model(xb), dim=1) for xb in x.split(batch_size)])
