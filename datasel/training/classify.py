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
from datasel.runtime import autocast
from datasel.tasks.base import Inputs, batch_len, chunks, forward, per_example_cross_entropy, take, to_device
from datasel.training.loop import LoopSettings, LoopState, model_device, train_loop, weighted_mean

log = logging.getLogger(__name__)

BatchSampler = Callable[[int, torch.Generator], Iterator[torch.Tensor]]
PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shuffled_batches(n: int, batch_size: int) -> BatchSampler:
    """Epoch-wise random permutations, split into batches (the last short batch kept)."""

    def sample(epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(n, generator=gen)
        yield from perm.split(batch_size)

    return sample


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def total_steps(n: int, cfg: dict[str, Any]) -> int:
    """Optimizer steps for ``n`` examples: ``budget.unit`` epochs scales with n (at least ``budget.min_steps``);
    steps is fixed (equal compute)."""
    budget = cfg.get("budget", {"unit": "epochs", "value": 10})
    if budget["unit"] == "epochs":
        steps = int(budget["value"]) * steps_per_epoch(n, int(cfg.get("batch_size", 128)))
        return max(steps, int(budget.get("min_steps") or 0))
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
    settings = LoopSettings.from_cfg({"optimizer": "adam", "schedule": "cosine", **cfg}, total_steps(n, cfg))

    def loss(batch: tuple[int, torch.Tensor]) -> torch.Tensor:
        epoch, idx = batch
        xb, yb = to_device(take(x, idx), device), y[idx].to(device)
        logits = forward(model, xb).float()  # the loss (and the on_batch hook) in fp32 whatever the forward ran in
        per_example = loss_fn(logits, yb)
        if on_batch is not None:
            on_batch(epoch, idx, logits.detach(), yb)
        return weighted_mean(per_example, None if weights is None else weights[idx].to(device))

    def checkpoint(state: LoopState) -> None:
        if on_checkpoint and state.epoch in checkpoint_epochs:
            on_checkpoint(state.epoch, model, state.optimizer)

    order = sampler or shuffled_batches(n, int(cfg.get("batch_size", 128)))
    step_hook = None if on_step is None else (lambda state: on_step(state.step, settings.steps, model))
    train_loop(model, loss, lambda epoch, gen: ((epoch, idx) for idx in order(epoch, gen)), settings, seed,
               desc=desc, on_epoch=checkpoint, after_step=step_hook)
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
