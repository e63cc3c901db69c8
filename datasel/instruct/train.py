"""LoRA training and evaluation of a causal LM on instruction data (loss on completion tokens only).

One loop serves the warm-up (LESS: a few epochs on a random 5% of the pool, a checkpoint with the optimizer state
after each epoch) and the fine-tuning runs on a selection. AdamW with a linear schedule after a short linear
warm-up, as LESS trains; the mean learning rate of each epoch is kept in its checkpoint (LESS's checkpoint weight).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from datasel.rl.policy import Policy
from datasel.runtime import progress
from datasel.tasks.base import Split
from datasel.tasks.causal_lm import completion_loss, lm_batch, token_logprobs

log = logging.getLogger(__name__)


def lr_at(step: int, total: int, base: float, warmup_ratio: float) -> float:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to zero (transformers' linear schedule)."""
    warm = max(1, math.ceil(total * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warm:
        return base * (step + 1) / warm
    return base * max(0.0, (total - step) / max(1, total - warm))


def train_lora(model: nn.Module, data: Split, cfg: dict[str, Any], seed: int,
               on_epoch: Callable[[int, float, torch.optim.Optimizer], None] | None = None,
               desc: str = "lora") -> list[dict[str, float]]:
    """Train the trainable (LoRA) parameters of ``model`` on a causal-LM split (:class:`CausalLMTask`); ``on_epoch(epoch, mean_lr, optimizer)`` runs
    after each epoch. Returns per-epoch mean loss and learning rate."""
    device = next(p for p in model.parameters() if p.requires_grad).device
    # the trainable parameters in model order: the feature store maps optimizer moments back in this order
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0)))
    n, bs = len(data), int(cfg["batch_size"])
    per_epoch = max(1, math.ceil(n / bs))
    epochs = int(cfg["epochs"])
    min_steps = int(cfg.get("min_steps", 0))
    if per_epoch * epochs < min_steps:  # tiny selections: repeat epochs until the step budget is met
        epochs = math.ceil(min_steps / per_epoch)
    total = per_epoch * epochs
    gen = torch.Generator().manual_seed(int(seed))
    history, step = [], 0
    model.train()
    for epoch in progress(range(1, epochs + 1), desc=desc, total=epochs, unit="epoch"):
        order = torch.randperm(n, generator=gen)
        losses, lrs = [], []
        for s in range(0, n, bs):
            lr = lr_at(step, total, float(cfg["lr"]), float(cfg.get("warmup_ratio", 0.0)))
            for g in opt.param_groups:
                g["lr"] = lr
            inputs, labels = lm_batch(data.inputs, data.labels, order[s:s + bs], device)
            loss = completion_loss(model(**inputs), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            lrs.append(lr)
            step += 1
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "lr": float(np.mean(lrs))})
        log.info("%s epoch %d: loss %.4f, mean lr %.3g", desc, epoch, history[-1]["loss"], history[-1]["lr"])
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch, float(np.mean(lrs)), opt)
            model.train()
    model.eval()
    return history


@torch.no_grad()
def evaluate(policy: Policy, data: Split, prompts: list[str], completions: list[str], cfg: dict[str, Any]
             ) -> dict[str, Any]:
    """Loss per completion token (summed NLL / tokens) and exact match of greedy completions (whitespace-stripped)."""
    model = policy.module
    model.eval()
    device = policy.device
    bs = int(cfg.get("batch_size", 32))
    total, tokens = 0.0, 0
    for s in range(0, len(data), bs):
        inputs, labels = lm_batch(data.inputs, data.labels, torch.arange(s, min(s + bs, len(data))), device)
        logp, mask = token_logprobs(model(**inputs).logits, labels)
        total -= float((logp * mask).sum())
        tokens += int(mask.sum())
    hits, outputs = 0, []
    for s in range(0, len(prompts), bs):
        got = policy.sample(prompts[s:s + bs], greedy=True).texts
        outputs.extend(got)
        hits += sum(g.strip() == c.strip() for g, c in zip(got, completions[s:s + bs]))
    return {"loss_per_token": total / max(1, tokens), "tokens": tokens, "exact_match": hits / max(1, len(prompts)),
            "examples": len(prompts), "outputs": outputs}
