"""Dynamic Gradient Alignment (Fan, Grangier, Ablin 2024) and the static mixing baselines, in one training loop.

Every ``update_every`` (T_r) steps DGA draws one mini-batch per arm (a domain, or a basis distribution P_j over the
domains) and one from the specific set, and scores each arm by the alignment of its gradient with the specific
gradient, a_j = ⟨∇ℓ_j(θ), ∇ℓ_spe(θ)⟩. The arm weights take an exponentiated-gradient step, ŵ ∝ w·exp(η·a), then an
EMA, w ← β·ŵ + (1−β)·w, and training continues on batches drawn from the mixture α = wᵀP. One run, no retraining.

No official code exists (METHODS.md §2); the choices below are ours and are all config knobs:

* ``normalize: cosine`` (default) divides a_j by ‖∇ℓ_j‖·‖∇ℓ_spe‖. Raw dot products shrink by orders of magnitude as
  the loss falls and differ across models, so a fixed η would do nothing late in training or explode early; the
  cosine keeps a_j in [-1, 1] and makes η a unit-free "log-odds per update". ``mean_norm`` divides by the mean arm
  norm instead (keeps relative magnitudes), ``none`` uses the raw dot product (the DoGE-style update, η ~ lr).
* ``eta: 1.0``, ``beta: 0.5``, ``update_every: 10``: with cosines of typically ±0.1–0.5, η = 1 moves a weight by at
  most a factor e per update, so 10–30 updates re-rank the domains within the first tenth of a short run, while the
  EMA (β = 0.5) halves the noise of one-batch estimates. ``benchmarks/dga.py`` sweeps η and β.
* ``clip`` (off by default) bounds |a_j| before the step; ``smoothing`` mixes the sampled α with uniform so no
  domain is starved completely (its gradient is still measured every update either way).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.mixing.task import IGNORE_INDEX, MixingTask, check_domains, token_ce, training_loss
from datasel.runtime import pick_device, seed_everything
from datasel.training.loop import LoopSettings, train_loop

log = logging.getLogger(__name__)

STRATEGIES = ("dga", "uniform", "natural", "specific_only", "importance")

DGA_DEFAULTS: dict[str, Any] = {
    "eta": 1.0,
    "beta": 0.5,
    "update_every": 10,
    "align_batch": 64,
    "normalize": "cosine",
    "clip": None,
    "smoothing": 0.0,
    "init": "uniform",
}
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 600,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "schedule": "constant",
    "eval_every": 50,
    "eval_batch": 512,
}


@dataclass
class MixtureResult:
    """What one run leaves: the model, the α trajectory over domains, the arm weights, and the specific-set curve."""

    strategy: str
    model: nn.Module
    domains: list[str]
    weights: list[tuple[int, np.ndarray]] = field(default_factory=list)
    arm_weights: list[tuple[int, np.ndarray]] = field(default_factory=list)
    alignments: list[tuple[int, np.ndarray]] = field(default_factory=list)
    curve: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        step, loss, acc = self.curve[-1]
        return {"step": step, "loss": loss, "accuracy": acc}


def eg_update(w: np.ndarray, a: np.ndarray, eta: float, beta: float, clip: float | None = None) -> np.ndarray:
    """One exponentiated-gradient step on the simplex followed by an EMA: β·softmax(log w + η·a) + (1−β)·w."""
    if eta <= 0:
        raise ConfigError(f"eta = {eta}: the step size must be > 0", field="dga.dga.eta", fix="use e.g. 1.0")
    if not 0 < beta <= 1:
        raise ConfigError(f"beta = {beta} is outside (0, 1]", field="dga.dga.beta", fix="use e.g. 0.5")
    a = np.asarray(a, dtype=np.float64)
    if clip is not None:
        a = np.clip(a, -clip, clip)
    logits = np.log(np.maximum(w, 1e-300)) + eta * a
    w_hat = np.exp(logits - logits.max())
    w_hat /= w_hat.sum()
    out = beta * w_hat + (1 - beta) * w
    return out / out.sum()


def check_dga_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = {**DGA_DEFAULTS, **(cfg or {})}
    eg_update(np.ones(1), np.zeros(1), float(cfg["eta"]), float(cfg["beta"]))  # validates eta / beta
    if int(cfg["update_every"]) < 1:
        raise ConfigError("update_every (T_r) must be >= 1", field="dga.dga.update_every", fix="use e.g. 10")
    if cfg["normalize"] not in ("cosine", "mean_norm", "none"):
        raise ConfigError(f"unknown normalize '{cfg['normalize']}'", field="dga.dga.normalize",
                          fix="use cosine, mean_norm or none")
    if cfg["clip"] is not None and float(cfg["clip"]) <= 0:
        raise ConfigError("clip must be > 0 or null", field="dga.dga.clip", fix="use null to disable clipping")
    if not 0 <= float(cfg["smoothing"]) < 1:
        raise ConfigError("smoothing must be in [0, 1)", field="dga.dga.smoothing", fix="use 0.0 .. 0.1")
    return cfg


def _flat_grad(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = token_ce) -> torch.Tensor:
    loss = loss_fn(model(x), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def alignment_scores(g_arms: list[torch.Tensor], g_spe: torch.Tensor, normalize: str) -> np.ndarray:
    """a_j = ⟨g_j, g_spe⟩, optionally divided by ‖g_j‖‖g_spe‖ (cosine) or by mean_j‖g_j‖·‖g_spe‖ (mean_norm)."""
    G = torch.stack(g_arms)
    dots = G @ g_spe
    if normalize == "cosine":
        dots = dots / (G.norm(dim=1) * g_spe.norm()).clamp_min(1e-12)
    elif normalize == "mean_norm":
        dots = dots / (G.norm(dim=1).mean() * g_spe.norm()).clamp_min(1e-12)
    return dots.detach().cpu().double().numpy()


class MixtureSampler:
    """Draws batches from sources (domain tensors) under a mixture: multinomial counts, then uniform rows."""

    def __init__(self, xs: list[torch.Tensor], ys: list[torch.Tensor], gen: torch.Generator) -> None:
        self.xs, self.ys, self.gen = xs, ys, gen

    def batch(self, probs: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.as_tensor(probs, dtype=torch.float64)
        src = torch.multinomial(p, size, replacement=True, generator=self.gen)
        counts = torch.bincount(src, minlength=len(self.xs)).tolist()
        bx, by = [], []
        for i, c in enumerate(counts):
            if c:
                idx = torch.randint(len(self.ys[i]), (c,), generator=self.gen).to(self.ys[i].device)
                bx.append(self.xs[i][idx])
                by.append(self.ys[i][idx])
        return torch.cat(bx), torch.cat(by)


@torch.no_grad()
def evaluate_specific(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> tuple[float, float]:
    """Mean token cross-entropy and accuracy on the specific evaluation split."""
    model.eval()
    tot_loss, tot_acc, n = 0.0, 0.0, 0
    for s in range(0, len(y), batch):
        out = model(x[s : s + batch])
        yy = y[s : s + batch]
        k = int((yy != IGNORE_INDEX).sum())  # padding targets of tokenized text count nowhere
        if not k:
            continue
        tot_loss += float(token_ce(out, yy)) * k
        tot_acc += float(((out.argmax(-1) == yy) & (yy != IGNORE_INDEX)).float().sum())
        n += k
    model.train()
    return tot_loss / max(n, 1), tot_acc / max(n, 1)


def static_weights(task: MixingTask, strategy: str, cfg: dict[str, Any]) -> np.ndarray:
    """Fixed domain weights of a baseline: uniform, natural (pool proportions) or importance sampling."""
    k = len(task.domains)
    if strategy == "uniform":
        return np.full(k, 1.0 / k)
    if strategy == "natural":
        return task.sizes / task.sizes.sum()
    if strategy == "importance":
        from datasel.mixing.clusters import nn_domain_histogram

        if task.embeddings is None or task.spe_embeddings is None:
            raise ConfigError("importance sampling needs embeddings of the pool", field="dga.strategies")
        imp = {"k_nn": 1, "smoothing": 0.0, **(cfg.get("importance") or {})}
        return nn_domain_histogram(task.embeddings, task.spe_embeddings, int(imp["k_nn"]), float(imp["smoothing"]))
    raise ConfigError(f"unknown mixing strategy '{strategy}'", field="dga.strategies", fix=f"use {STRATEGIES}")


def train_mixture(task: MixingTask, cfg: dict[str, Any], strategy: str = "dga", seed: int = 0,
                  basis: np.ndarray | None = None) -> MixtureResult:
    """Train one model on batches from the strategy's mixture and record α and the specific-set loss.

    cfg is the ``dga`` config section: ``model`` (datasel.models config), ``train`` (steps, batch_size, lr,
    weight_decay, schedule, eval_every, eval_batch), ``dga`` (eta, beta, update_every, align_batch, normalize, clip,
    smoothing, init), ``importance`` (k_nn, smoothing), ``device``. ``basis`` (N × k) turns DGA into basis reweighting.
    """
    from datasel.models import build_model

    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown mixing strategy '{strategy}'", field="dga.strategies", fix=f"use {STRATEGIES}")
    check_domains(task)
    tcfg = {**TRAIN_DEFAULTS, **(cfg.get("train") or {})}
    dcfg = check_dga_cfg(cfg.get("dga") or {})
    device = pick_device(str(cfg.get("device", "auto")))
    task.to(device)
    k = len(task.domains)
    gen = seed_everything(seed)
    model = build_model(dict(cfg.get("model") or {"name": "mlp"}), task.meta).to(device)
    loss_fn = training_loss(cfg.get("model"))
    params = [p for p in model.parameters() if p.requires_grad]
    steps = int(tcfg["steps"])
    settings = LoopSettings.from_cfg({k: tcfg[k] for k in ("lr", "weight_decay", "schedule")}, steps,
                                     where="dga.train", optimizer="adamw")

    if strategy == "specific_only":
        sampler = MixtureSampler([task.spe_x], [task.spe_y], gen)
        names = [task.specific]
        alpha = np.ones(1)
    else:
        sampler = MixtureSampler(task.xs, task.ys, gen)
        names = list(task.domains)
        alpha = static_weights(task, "uniform" if strategy == "dga" else strategy, cfg)
    res = MixtureResult(strategy, model, names)

    P = None
    w = None
    if strategy == "dga":
        P = np.eye(k) if basis is None else np.asarray(basis, dtype=np.float64)
        if P.shape[1] != k or np.any(P < 0) or not np.allclose(P.sum(1), 1):
            raise ConfigError(f"basis must be an N x {k} row-stochastic matrix, got {P.shape}", field="dga.basis")
        n_arms = P.shape[0]
        init = dcfg["init"]
        if init == "natural" and basis is None:
            w = task.sizes / task.sizes.sum()
        else:
            w = np.full(n_arms, 1.0 / n_arms)
        alpha = w @ P
        arm_sampler = MixtureSampler(task.xs, task.ys, gen)
        res.arm_weights.append((0, w.copy()))
    res.weights.append((0, alpha.copy()))
    eval_every = max(1, int(tcfg["eval_every"]))
    smooth = float(dcfg["smoothing"])
    B = int(tcfg["batch_size"])

    def mixture_batches(_epoch: int, _gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless: before drawing step s's batch, measure the specific loss and (DGA) update the mixture, so
        both see the model as step s - 1 left it."""
        nonlocal w, alpha
        for step in itertools.count():
            if step % eval_every == 0:
                res.curve.append((step, *evaluate_specific(model, task.eval_x, task.eval_y, int(tcfg["eval_batch"]))))
            if strategy == "dga" and step % int(dcfg["update_every"]) == 0:
                ab = int(dcfg["align_batch"])
                g_spe = _flat_grad(model, params, *_subsample(task.spe_x, task.spe_y, ab, gen), loss_fn=loss_fn)
                g_arms = [_flat_grad(model, params, *arm_sampler.batch(P[j], ab), loss_fn=loss_fn)
                          for j in range(P.shape[0])]
                a = alignment_scores(g_arms, g_spe, dcfg["normalize"])
                w = eg_update(w, a, float(dcfg["eta"]), float(dcfg["beta"]),
                              None if dcfg["clip"] is None else float(dcfg["clip"]))
                alpha = w @ P
                if res.weights[-1][0] == step:  # the update at step 0 replaces the initial mixture in the log
                    res.weights.pop()
                    res.arm_weights.pop()
                res.arm_weights.append((step, w.copy()))
                res.weights.append((step, alpha.copy()))
                res.alignments.append((step, a))
            yield sampler.batch((1 - smooth) * alpha + smooth / len(alpha) if smooth else alpha, B)

    train_loop(model, lambda batch: loss_fn(model(batch[0]), batch[1]), mixture_batches, settings, gen,
               params=params, desc=f"mix[{strategy}]")
    res.curve.append((steps, *evaluate_specific(model, task.eval_x, task.eval_y, int(tcfg["eval_batch"]))))
    if res.weights[-1][0] != steps:
        res.weights.append((steps, alpha.copy()))
    log.info("%s seed %d: specific loss %.4f acc %.3f", strategy, seed, res.final["loss"], res.final["accuracy"])
    return res


def _subsample(x: torch.Tensor, y: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A mini-batch of the specific set (all of it when it is smaller than ``n``)."""
    if len(y) <= n:
        return x, y
    idx = torch.randperm(len(y), generator=gen)[:n].to(y.device)
    return x[idx], y[idx]
