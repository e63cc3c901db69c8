"""Penalty-based bilevel training of the Alchemist rater (METHODS.md §3), with meta-gradients from ``torch.func``.

Two copies of a proxy model train beside the rater μ:

* θ̂ ("lower level") trains on the reweighted training loss only:   θ̂ ← θ̂ − β·Σ_i W_i(μ)·∇ℓ(θ̂; x_i)
* θ  ("penalized")  trains on validation + reweighted training:      θ ← θ − β·(λ·g_val(θ) + Σ_i W_i(μ)·∇ℓ(θ; x_i))
* warm-up (``warmup: paper``, the default, as the paper): for ``warmup_steps`` only θ̂ trains, the rater frozen at its
  initial (uniform) weights, then θ := θ̂ and all three move together; ``warmup: joint`` (this project's earlier
  behaviour) steps θ with the validation gradient from the first step and never copies θ̂;
* the rater follows the penalty form of the bilevel problem
      μ ← μ − α·Σ_i [ℓ(θ; x_i) − ℓ(θ̂; x_i)]·∇_μ W_i(μ)
  or, when the proxy is over-parameterized (θ̂ fits everything, ℓ(θ̂) ≈ 0), the simplified form
      μ ← μ − α·Σ_i ℓ(θ; x_i)·∇_μ W_i(μ).

Why it selects: this is the gradient of the penalty reformulation  min f_val(θ) + [g(θ, μ) − min_θ' g(θ', μ)]  with
g(θ, μ) = Σ W_i(μ) ℓ(θ; x_i), θ̂ standing in for the inner argmin. A sample whose loss is high under θ (which also
follows the validation set) but low under θ̂ (which follows only the weighted training set) is one the training set
wants and the validation set does not; its weight goes down. Because W is a batch softmax, the update is centered:
only samples above the batch's weighted-average penalty lose weight.

All three gradients are taken with ``torch.func.grad`` over ``functional_call`` — none is derived by hand. The proxies
are plain parameter dicts updated by SGD, so the loop is deterministic given the seed. θ and θ̂ are the model's
*trainable* parameters (a LoRA proxy: its adapters and head); frozen weights are held fixed like buffers. Inputs are
a task's (a tensor, or a mapping such as token ids and masks, passed as keyword arguments).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from datasel.errors import ConfigError
from datasel.meta.rater import Rater, weights_fn
from datasel.runtime import pick_device, progress
from datasel.tasks.base import Inputs, batch_len, take, to_device

log = logging.getLogger("datasel.meta")

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_per_sample(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


@dataclass
class BilevelConfig:
    """The knobs of the meta-training loop; every one is a key of the scorer's config section."""

    steps: int = 300  # rater updates after the warm-up
    warmup_steps: int = 50  # steps with the rater frozen at its initial weights before it moves
    warmup: str = "paper"  # paper (only θ̂ trains, then θ := θ̂) | joint (θ and θ̂ both train from step 0)
    batch_size: int = 128  # training batch: the set the softmax normalizes over
    val_batch_size: int = 128
    proxy_lr: float = 0.05  # β
    rater_lr: float = 1e-3  # α
    rater_optimizer: str = "adam"  # adam | sgd (the paper's update is plain SGD: μ ← μ − α·∇)
    update: str = "penalty"  # penalty | simplified
    val_weight: float = 1.0  # λ, the weight of the validation gradient in θ's step
    proxy_weight_decay: float = 0.0
    proxy_init: str = "checkpoint"  # checkpoint (start both proxies from the given model) | scratch (re-initialize)
    log_every: int = 50
    _where: str = field(default="scoring.alchemist", repr=False)

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any], where: str = "scoring.alchemist") -> BilevelConfig:
        """Read the known keys of ``cfg`` (others are ignored: they belong to the scorer) and check their values."""
        known = {f.name for f in fields(cls) if not f.name.startswith("_")}
        out = cls(**{k: cfg[k] for k in known if k in cfg}, _where=where)
        out.check()
        return out

    def check(self) -> None:
        def bad(name: str, fix: str) -> ConfigError:
            return ConfigError(f"invalid value {getattr(self, name)!r}", field=f"{self._where}.{name}", fix=fix)

        for name in ("steps", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise bad(name, "use a non-negative integer")
        for name in ("batch_size", "val_batch_size", "log_every"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "use a positive integer")
        if self.batch_size < 2:
            raise bad("batch_size", "use at least 2: the weights are a softmax over the batch")
        for name in ("proxy_lr", "rater_lr"):
            v = float(getattr(self, name))
            if not (v > 0 and math.isfinite(v)):
                raise bad(name, "use a positive finite learning rate")
        if float(self.val_weight) < 0 or float(self.proxy_weight_decay) < 0:
            raise bad("val_weight" if float(self.val_weight) < 0 else "proxy_weight_decay", "use a value >= 0")
        if self.update not in ("penalty", "simplified"):
            raise bad("update", "use 'penalty' or 'simplified'")
        if self.rater_optimizer not in ("adam", "sgd"):
            raise bad("rater_optimizer", "use 'adam' or 'sgd'")
        if self.warmup not in ("paper", "joint"):
            raise bad("warmup", "use 'paper' (train only θ̂, then θ := θ̂) or 'joint'")
        if self.proxy_init not in ("checkpoint", "scratch"):
            raise bad("proxy_init", "use 'checkpoint' or 'scratch'")


@dataclass
class MetaHistory:
    """What the loop logged, one entry per ``log_every`` steps (and the last step)."""

    rows: list[dict[str, float]] = field(default_factory=list)


def _reinit(model: nn.Module, seed: int) -> nn.Module:
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters") and m is not fresh:
                m.reset_parameters()
    return fresh


def _batches(n: int, size: int, gen: torch.Generator) -> Any:
    """Endless shuffled mini-batches (epoch by epoch), drawn from a seeded generator; the last partial batch of an
    epoch is dropped so every softmax runs over the same number of samples."""
    size = min(size, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - size + 1, size):
            yield perm[start : start + size]


def train_rater(
    model: nn.Module,
    feats: torch.Tensor,
    x: Inputs,
    y: torch.Tensor,
    x_val: Inputs,
    y_val: torch.Tensor,
    cfg: BilevelConfig,
    rater: Rater,
    seed: int = 0,
    loss_fn: PerSampleLoss = cross_entropy_per_sample,
    device: str = "auto",
) -> tuple[Rater, MetaHistory]:
    """Meta-train ``rater`` (in place) over the training set (feats, x, y) against the validation set.

    ``model`` is the proxy template: its parameters seed θ and θ̂ (``proxy_init: checkpoint``) or are re-drawn
    (``scratch``). ``feats[i]`` is the rater's input for sample ``(x[i], y[i])``.
    """
    dev = pick_device(device)
    gen = torch.Generator().manual_seed(seed)
    if cfg.proxy_init == "scratch":
        model = _reinit(model, seed)
    model = copy.deepcopy(model).to(dev).eval()  # eval: the proxies have no dropout/batch-norm randomness
    # frozen parameters (a LoRA backbone) are constants of the proxies' objectives, like buffers: differentiating
    # through millions of fixed weights would only cost time
    fixed = {n: b.to(dev) for n, b in model.named_buffers()}
    fixed.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
    theta = {n: p.detach().clone().to(dev) for n, p in model.named_parameters() if p.requires_grad}
    theta_hat = {n: t.clone() for n, t in theta.items()}
    rater = rater.to(dev).train()
    opt_cls = torch.optim.Adam if cfg.rater_optimizer == "adam" else torch.optim.SGD
    opt = opt_cls(rater.parameters(), lr=cfg.rater_lr)
    feats, y, y_val = (t.to(dev) for t in (feats, y, y_val))
    x, x_val = to_device(x, dev), to_device(x_val, dev)
    lam, wd, beta = float(cfg.val_weight), float(cfg.proxy_weight_decay), float(cfg.proxy_lr)

    def losses(params: dict[str, torch.Tensor], xb: Inputs, yb: torch.Tensor) -> torch.Tensor:
        if isinstance(xb, Mapping):
            out = functional_call(model, (params, fixed), (), dict(xb))
        else:
            out = functional_call(model, (params, fixed), (xb,))
        logits = out.logits if hasattr(out, "logits") else out
        # at least float32 (half-precision logits lose the loss), never less than the model's own precision: a float64
        # run keeps float64 losses, so its meta-gradient is exact to rounding
        return loss_fn(logits.to(torch.promote_types(logits.dtype, torch.float32)), yb)

    def decay(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * wd * sum(p.pow(2).sum() for p in params.values()) if wd else torch.zeros((), device=dev)

    def lower_obj(params, xb, yb, w):  # g(θ̂, μ) with W fixed: θ̂'s objective
        per = losses(params, xb, yb)
        return (w * per).sum() + decay(params), per

    def upper_obj(params, xb, yb, w, xv, yv):  # λ·f_val(θ) + g(θ, μ): θ's objective
        per = losses(params, xb, yb)
        val = losses(params, xv, yv).mean()
        return lam * val + (w * per).sum() + decay(params), (per, val)

    def rater_obj(mu, fb, pen):  # Σ_i pen_i · W_i(μ), pen held constant: its μ-gradient is the update above
        return (weights_fn(rater, mu, fb) * pen).sum()

    g_lower, g_upper, g_rater = grad(lower_obj, has_aux=True), grad(upper_obj, has_aux=True), grad(rater_obj)

    history = MetaHistory()
    train_iter = _batches(batch_len(x), cfg.batch_size, gen)
    val_iter = _batches(batch_len(x_val), cfg.val_batch_size, gen)
    total = cfg.warmup_steps + cfg.steps
    for step in progress(range(total), desc="alchemist meta-train", total=total, unit="step"):
        idx, vidx = next(train_iter), next(val_iter)
        fb, xb, yb = feats[idx], take(x, idx), y[idx]
        mu = {n: p.detach() for n, p in rater.named_parameters()}
        with torch.no_grad():
            w = weights_fn(rater, mu, fb)
        warming = step < cfg.warmup_steps
        if warming and cfg.warmup == "paper":
            gt = None  # θ waits: it becomes θ̂ when the warm-up ends
        else:
            if step == cfg.warmup_steps and cfg.warmup == "paper" and step > 0:
                theta = {n: t.clone() for n, t in theta_hat.items()}  # the paper's θ := θ̂ after the warm-up
            gt, (per_t, val_t) = g_upper(theta, xb, yb, w, take(x_val, vidx), y_val[vidx])
        gh, per_h = g_lower(theta_hat, xb, yb, w)
        if not warming:
            # The penalty is read at the same iterate as the proxies' gradients; all three move together.
            pen = (per_t - per_h) if cfg.update == "penalty" else per_t
            gmu = g_rater(mu, fb, pen.detach())
            opt.zero_grad(set_to_none=True)
            for n, p in rater.named_parameters():
                p.grad = gmu[n]
            opt.step()
        if gt is not None:
            theta = {n: theta[n] - beta * gt[n] for n in theta}
        theta_hat = {n: theta_hat[n] - beta * gh[n] for n in theta_hat}
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            if gt is None:  # θ did not move in this warm-up step: its losses are read, not stepped
                with torch.no_grad():
                    per_t, val_t = losses(theta, xb, yb), losses(theta, take(x_val, vidx), y_val[vidx]).mean()
            row = {
                "step": float(step + 1),
                "val_loss_theta": float(val_t),
                "train_loss_theta": float(per_t.mean()),
                "train_loss_theta_hat": float(per_h.mean()),
                "batch_weight": float(w.sum()),
            }
            history.rows.append(row)
            log.info("meta step %d: %s", step + 1, {k: round(v, 4) for k, v in row.items() if k != "step"})
    rater.eval()
    return rater, history
