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
import torch.nn.functional as F
from torch import nn

from datasel.features.layer_grads import mark_per_example_mean
from datasel.instruct.data import IGNORE, Encoded
from datasel.rl.policy import Policy
from datasel.runtime import progress

log = logging.getLogger(__name__)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L-1) negative log-likelihood of each next token and the mask of completion tokens."""
    tgt = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                          ignore_index=IGNORE, reduction="none").view(tgt.shape)
    return nll, tgt != IGNORE


@mark_per_example_mean
def completion_loss(out: Any, labels: torch.Tensor) -> torch.Tensor:
    """Mean over examples of each example's mean completion-token NLL.

    A per-example mean (not a mean over all tokens of the batch) so that each example's gradient is the gradient of
    its own loss, whatever batch it sits in — what per-example gradient features need; declared as such so the
    feature store may take the batched layer path.
    """
    logits = out.logits if hasattr(out, "logits") else out
    nll, mask = token_nll(logits, labels)
    return ((nll * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()


def _batch(enc: Encoded, idx: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    # right padding: columns after the longest row of this batch are padding only and can be dropped exactly
    width = int(enc.attention_mask[idx].sum(1).max())
    inputs = {"input_ids": enc.input_ids[idx, :width].to(device), "attention_mask": enc.attention_mask[idx, :width].to(device)}
    return inputs, enc.labels[idx, :width].to(device)


def lr_at(step: int, total: int, base: float, warmup_ratio: float) -> float:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to zero (transformers' linear schedule)."""
    warm = max(1, math.ceil(total * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warm:
        return base * (step + 1) / warm
    return base * max(0.0, (total - step) / max(1, total - warm))


def train_lora(model: nn.Module, enc: Encoded, cfg: dict[str, Any], seed: int,
               on_epoch: Callable[[int, float, torch.optim.Optimizer], None] | None = None,
               desc: str = "lora") -> list[dict[str, float]]:
    """Train the trainable (LoRA) parameters of ``model`` on ``enc``; ``on_epoch(epoch, mean_lr, optimizer)`` runs
    after each epoch. Returns per-epoch mean loss and learning rate."""
    device = next(p for p in model.parameters() if p.requires_grad).device
    # the trainable parameters in model order: the feature store maps optimizer moments back in this order
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0)))
    n, bs = enc.input_ids.shape[0], int(cfg["batch_size"])
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
            inputs, labels = _batch(enc, order[s:s + bs], device)
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
def evaluate(policy: Policy, enc: Encoded, prompts: list[str], completions: list[str], cfg: dict[str, Any]
             ) -> dict[str, Any]:
    """Loss per completion token (summed NLL / tokens) and exact match of greedy completions (whitespace-stripped)."""
    model = policy.module
    model.eval()
    device = policy.device
    bs = int(cfg.get("batch_size", 32))
    total, tokens = 0.0, 0
    for s in range(0, enc.input_ids.shape[0], bs):
        inputs, labels = _batch(enc, torch.arange(s, min(s + bs, enc.input_ids.shape[0])), device)
        nll, mask = token_nll(model(**inputs).logits, labels)
        total += float((nll * mask).sum())
        tokens += int(mask.sum())
    hits, outputs = 0, []
    for s in range(0, len(prompts), bs):
        got = policy.sample(prompts[s:s + bs], greedy=True).texts
        outputs.extend(got)
        hits += sum(g.strip() == c.strip() for g, c in zip(got, completions[s:s + bs]))
    return {"loss_per_token": total / max(1, tokens), "tokens": tokens, "exact_match": hits / max(1, len(prompts)),
            "examples": len(prompts), "outputs": outputs}
