"""The one supervised training loop: optimizer, LR schedule, seeded batches, step budget, hooks, mixed precision.

Every trainer that minimizes a loss over batches runs through :func:`train_loop` — the classifiers and proxies
(:mod:`datasel.training.classify`), the embedding retraining (:mod:`datasel.training.embedding`), the mixing runs
(:mod:`datasel.mixing.dga`) and the LM fine-tuning — so the optimizer, the schedule, the seeding and the precision
are one implementation. A trainer supplies three things:

- ``loss(batch) -> scalar``: the batch's training loss (with the graph); for per-example losses and selection
  weights, :func:`weighted_mean`;
- ``batches(epoch, generator) -> iterable``: the batches of one epoch, drawn with the loop's seeded generator (an
  endless iterable for step-based samplers: a domain mixture that adapts its weights draws each batch lazily, when
  the loop asks for it, so the update it makes first sees the model as the previous step left it);
- :class:`LoopSettings`: step budget, optimizer, schedule, warm-up, gradient clipping.

Hooks see a :class:`LoopState`: ``on_gradients`` (after backward,
before clipping: masking a pruned weight's gradient), ``after_step`` (after the update: re-applying a mask) and
``on_epoch`` (at epoch 0, before any step, and after every epoch: checkpoints).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.runtime import autocast, progress, resolve_precision

B = TypeVar("B")

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class LoopSettings:
    """How to optimize: ``steps`` optimizer steps of ``optimizer`` at ``lr`` under ``schedule``.

    ``schedule``: constant, cosine (to zero at ``steps``) or linear (to zero at ``steps``), each after
    ``warmup_steps`` of linear warm-up (step s < warm-up runs at lr·(s+1)/warm-up). ``max_grad_norm`` clips the
    global gradient norm (None: no clipping). ``where`` names the config section in error messages.
    """

    steps: int
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    where: str = "train"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer '{self.optimizer}'", field=f"{self.where}.optimizer",
                              fix="use adam, adamw or sgd")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule '{self.schedule}'", field=f"{self.where}.schedule",
                              fix="use " + ", ".join(SCHEDULES))
        if self.steps < 0 or self.warmup_steps < 0:
            raise ConfigError(f"steps {self.steps} / warm-up {self.warmup_steps} must be >= 0",
                              field=f"{self.where}.steps", fix="use a non-negative step budget")

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any], steps: int, where: str = "train", **defaults: Any) -> LoopSettings:
        """Settings from a config section (keys optimizer, lr, weight_decay, momentum, schedule, warmup_ratio or
        warmup_steps, max_grad_norm); ``defaults`` fill the keys the section leaves out."""
        merged = {**defaults, **{k: v for k, v in cfg.items() if v is not None}}
        if "warmup_steps" in merged:
            warmup = int(merged["warmup_steps"])
        else:
            warmup = int(float(merged.get("warmup_ratio", 0.0)) * steps)
        clip = merged.get("max_grad_norm")
        return cls(steps=int(steps), optimizer=str(merged.get("optimizer", "adam")), lr=float(merged.get("lr", 1e-3)),
                   weight_decay=float(merged.get("weight_decay", 0.0)), momentum=float(merged.get("momentum", 0.9)),
                   schedule=str(merged.get("schedule", "cosine")), warmup_steps=warmup,
                   max_grad_norm=None if clip is None else float(clip), where=where)


def make_optimizer(params: list[nn.Parameter], settings: LoopSettings) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` (the trainable ones, in model order: the feature store maps
    optimizer moments back in this order)."""
    lr, wd = settings.lr, settings.weight_decay
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=settings.momentum)


def lr_factor(step: int, settings: LoopSettings) -> float:
    """The multiplier of the base LR at optimizer step ``step`` (0-based), the formula of :func:`make_scheduler`."""
    total, warm = settings.steps, settings.warmup_steps
    if step < warm:
        return (step + 1) / warm
    if settings.schedule == "constant":
        return 1.0
    if settings.schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warm))
    return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(1, total - warm)))


def make_scheduler(opt: torch.optim.Optimizer, settings: LoopSettings) -> torch.optim.lr_scheduler.LRScheduler | None:
    """None for a constant LR; cosine without warm-up is torch's ``CosineAnnealingLR`` (its recurrence, so results
    of earlier releases stay bit-for-bit); everything else a ``LambdaLR`` of :func:`lr_factor`."""
    if settings.schedule == "constant" and settings.warmup_steps == 0:
        return None
    if settings.schedule == "cosine" and settings.warmup_steps == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings))


def weighted_mean(per_example: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The batch loss of per-example losses: their mean, or their ``weights``-weighted mean (selection weights)."""
    if weights is None:
        return per_example.mean()
    return (per_example * weights).sum() / weights.sum()


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class LoopState:
    """What a hook sees: the model, its optimizer and scheduler, steps taken, epochs completed and the losses."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    step: int = 0
    epoch: int = 0
    losses: list[torch.Tensor] = field(default_factory=list)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


@dataclass
class LoopResult:
    """Steps taken, epochs completed (the last one may be partial), each step's loss, the optimizer."""

    steps: int
    epochs: int
    losses: list[float]
    optimizer: torch.optim.Optimizer


Hook = Callable[[LoopState], None]


def train_loop(
    model: nn.Module,
    loss: Callable[[B], torch.Tensor],
    batches: Callable[[int, torch.Generator], Iterable[B]],
    settings: LoopSettings,
    seed: int | torch.Generator,
    *,
    params: list[nn.Parameter] | None = None,
    desc: str = "train",
    precision: str | None = "training",
    on_gradients: Hook | None = None,
    after_step: Hook | None = None,
    on_epoch: Hook | None = None,
) -> LoopResult:
    """Take ``settings.steps`` optimizer steps on ``loss`` over ``batches`` and leave ``model`` in eval mode.

    ``seed`` seeds the generator handed to ``batches`` (or is that generator, when a trainer draws from it
    too). ``params`` defaults to the trainable parameters. ``precision`` is the purpose the loss runs under
    :func:`datasel.runtime.autocast` for (``compute.precision``; fp16 adds loss scaling), None for no autocast (a
    model that casts itself). Returns the per-step losses and the optimizer (its state for checkpoints).
    """
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    opt = make_optimizer(params, settings)
    state = LoopState(model, opt, make_scheduler(opt, settings), gen)
    if on_epoch is not None:
        on_epoch(state)
    # fp16 (asked for) underflows small gradients without loss scaling; bf16 has fp32's range and needs none
    fp16 = precision is not None and resolve_precision(device) == "fp16"
    scaler = torch.amp.GradScaler(device.type) if fp16 else None
    model.train()
    bar = progress(range(settings.steps), desc=desc, unit="step")
    while state.step < settings.steps:
        drawn = False
        for batch in batches(state.epoch, gen):
            drawn = True
            with autocast(device, purpose=precision) if precision is not None else contextlib.nullcontext():
                value = loss(batch)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                value.backward()
            else:
                scaler.scale(value).backward()
                scaler.unscale_(opt)  # hooks and clipping see true gradients
            if on_gradients is not None:
                on_gradients(state)
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
            if state.scheduler is not None:
                state.scheduler.step()
            state.losses.append(value.detach())
            state.step += 1
            if after_step is not None:
                after_step(state)
            next(bar, None)
            if state.step >= settings.steps:
                break
        if not drawn:
            raise ConfigError(f"an epoch of {desc} yielded no batch", field=f"{settings.where}.batch_size",
                              fix="give the trainer at least one batch of examples")
        state.epoch += 1
        if on_epoch is not None:
            on_epoch(state)
    model.eval()
    losses = torch.stack(state.losses).float().tolist() if state.losses else []
    return LoopResult(state.step, state.epoch, losses, opt)
