"""Train and evaluate a classifier on a task's inputs, under an epoch or step budget, deterministically from a seed.

The same function trains the proxy models (with checkpoints) and the target models on each selection, so a
selection is compared with its baselines under exactly the same optimizer, schedule and budget. Inputs are a tensor
or a mapping of tensors (token ids and masks), as a :class:`datasel.tasks.Task` loads them; batches are moved to
the model's device, and the forward pass runs under :func:`datasel.runtime.autocast` (``compute.precision``; auto:
bfloat16 on a GPU that has it, float32 on the CPU so CPU results are bit-for-bit reproducible).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.runtime import autocast, progress, resolve_precision
from datasel.tasks.base import Inputs, batch_len, chunks, forward, per_example_cross_entropy, take, to_device

log = logging.getLogger(__name__)

BatchSampler = Callable[[int, torch.Generator], Iterator[torch.Tensor]]
PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


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
    # trainable parameters only (LoRA freezes the backbone); the feature store maps moments back in this order
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(cfg.get("momentum", 0.9)))
    raise ConfigError(f"unknown optimizer '{name}'", field="optimizer", fix="use adam, adamw or sgd")


def total_steps(n: int, cfg: dict[str, Any]) -> int:
    """Optimizer steps for ``n`` examples: ``budget.unit`` epochs scales with n; steps is fixed (equal compute)."""
    budget = cfg.get("budget", {"unit": "epochs", "value": 10})
    if budget["unit"] == "epochs":
        return int(budget["value"]) * steps_per_epoch(n, int(cfg.get("batch_size", 128)))
    return int(budget["value"])


def train_classifier(
    model: nn.Module,
    x: Inputs,
    y: torch.Tensor,
    cfg: dict[str, Any],
    seed: int,
    weights: torch.Tensor | None = None,
    sampler: BatchSampler | None = None,
    checkpoint_epochs: tuple[int, ...] = (),
    on_checkpoint: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    desc: str = "train",
    loss_fn: PerExampleLoss = per_example_cross_entropy,
    on_batch: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    on_step: Callable[[int, int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place (on the device it is on) and return it.

    ``weights`` scales each example's loss (selection weights); ``sampler`` overrides the batch order (curricula);
    ``on_checkpoint(epoch, model, optimizer)`` fires at epoch 0 (initialization) and after each epoch in
    ``checkpoint_epochs``; ``loss_fn(logits, y)`` is the task's per-example loss. ``on_batch(epoch, idx, logits,
    y)`` sees each batch's training-time logits (detached) before the update: the presentation that forgetting
    events and AUM are defined on (:mod:`datasel.training.dynamics`). ``on_step(step, total, model)`` fires after
    every optimizer step (1-based): a training curve evaluates there (:mod:`datasel.training.curves`) and must leave
    the model in training mode and the global RNG untouched.
    """
    n = batch_len(x)
    device = model_device(model)
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
    # fp16 (asked for) underflows small gradients without loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(device.type) if resolve_precision(device) == "fp16" else None
    model.train()
    step, epoch = 0, 0
    bar = progress(range(steps), desc=desc, unit="step")
    while step < steps:
        for idx in sampler(epoch, gen):
            xb, yb = to_device(take(x, idx), device), y[idx].to(device)
            with autocast(device, purpose="training"):
                logits = forward(model, xb)
            logits = logits.float()  # the loss (and the on_batch hook) in fp32 whatever the forward ran in
            loss = loss_fn(logits, yb)
            if on_batch is not None:
                on_batch(epoch, idx, logits.detach(), yb)
            if weights is not None:
                wb = weights[idx].to(device)
                loss = (loss * wb).sum() / wb.sum()
            else:
                loss = loss.mean()
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            if sched:
                sched.step()
            step += 1
            next(bar, None)
            if on_step is not None:
                on_step(step, steps, model)
            if step >= steps:
                break
        epoch += 1
        if on_checkpoint and epoch in checkpoint_epochs:
            on_checkpoint(epoch, model, opt)
    model.eval()
    return model


@torch.no_grad()
def logits_of(model: nn.Module, x: Inputs, batch_size: int = 1024, exact: bool = True) -> torch.Tensor:
    """Float32 logits of every example, computed in eval mode batch by batch on the model's device (CPU result).

    ``exact`` (scores: EL2N, loss, cleanlab's probabilities): fp32 under compute.precision auto, since bf16 logits
    (3 significant digits) would reorder close scores; the accuracy and loss of a trained model take the training
    precision.
    """
    model.eval()
    device = model_device(model)
    outs = []
    for xb in chunks(x, batch_size):
        with autocast(device, exact=exact, purpose="scores" if exact else "evaluation"):
            outs.append(forward(model, to_device(xb, device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, 0)


@torch.no_grad()
def evaluate(model: nn.Module, x: Inputs, y: torch.Tensor, batch_size: int = 1024,
             loss_fn: PerExampleLoss = per_example_cross_entropy) -> dict[str, float]:
    """Accuracy, mean loss (cross-entropy by default), and how many classes the model predicts (1: it learned only
    the majority; the report warns, see datasel.report.summary.run_warnings)."""
    n = batch_len(x)
    if n == 0:
        return {"accuracy": 0.0, "loss": 0.0, "predicted_classes": 0.0}
    out = logits_of(model, x, batch_size, exact=False)
    pred = out.argmax(1)
    return {"accuracy": (pred == y).sum().item() / n, "loss": loss_fn(out, y).sum().item() / n,
            "predicted_classes": float(pred.unique().numel())}


@torch.no_grad()
def predict_proba(model: nn.Module, x: Inputs, batch_size: int = 1024) -> torch.Tensor:
    return torch.softmax(logits_of(model, x, batch_size), dim=1)
