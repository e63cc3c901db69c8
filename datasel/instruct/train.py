"""LoRA training and evaluation of a causal LM on instruction data (loss on completion tokens only).

The warm-up (LESS: a few epochs on a random 5% of the pool, a checkpoint with the optimizer state after each epoch)
and the fine-tuning runs on a selection go through the one training loop (:mod:`datasel.training.loop`) with the
causal-LM task's batches and loss: AdamW with a linear schedule after a short linear warm-up, as LESS trains; the
mean learning rate of each epoch is kept in its checkpoint (LESS's checkpoint weight).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from datasel.rl.policy import Policy
from datasel.tasks.base import Split
from datasel.tasks.causal_lm import completion_loss, lm_batch, token_logprobs
from datasel.training.loop import LoopSettings, LoopState, lr_factor, model_device, train_loop

log = logging.getLogger(__name__)


def train_lora(model: nn.Module, data: Split, cfg: dict[str, Any], seed: int,
               on_epoch: Callable[[int, float, torch.optim.Optimizer], None] | None = None,
               desc: str = "lora", where: str = "instruct.finetune") -> list[dict[str, float]]:
    """Train the trainable (LoRA) parameters of ``model`` on a causal-LM split (:class:`~datasel.tasks.causal_lm.
    CausalLMTask`) with the one training loop; ``on_epoch(epoch, mean_lr, optimizer)`` runs after each epoch.
    Returns per-epoch mean loss and learning rate.

    ``cfg``: ``lr``, ``weight_decay``, ``batch_size``, ``epochs``, ``min_steps`` (tiny selections repeat epochs
    until the step budget is met), ``warmup_ratio`` (linear warm-up over that share of the steps, at least one).
    """
    device = model_device(model)
    n, bs = len(data), int(cfg["batch_size"])
    per_epoch = max(1, math.ceil(n / bs))
    epochs = max(int(cfg["epochs"]), math.ceil(int(cfg.get("min_steps", 0)) / per_epoch))
    total = per_epoch * epochs
    ratio = float(cfg.get("warmup_ratio", 0.0))
    settings = LoopSettings(steps=total, optimizer="adamw", lr=float(cfg["lr"]),
                            weight_decay=float(cfg.get("weight_decay", 0.0)), schedule="linear",
                            warmup_steps=max(1, math.ceil(total * ratio)) if ratio > 0 else 0, max_grad_norm=1.0,
                            where=where)

    def batches(_epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=gen)
        return iter([order[s:s + bs] for s in range(0, n, bs)])

    def loss(idx: torch.Tensor) -> torch.Tensor:
        inputs, labels = lm_batch(data.inputs, data.labels, idx, device)
        return completion_loss(model(**inputs), labels)

    history: list[dict[str, float]] = []

    def epoch_done(state: LoopState) -> None:
        if state.epoch == 0:
            return
        steps = range(state.step - per_epoch, state.step)
        mean_lr = float(np.mean([settings.lr * lr_factor(s, settings) for s in steps]))
        losses = [float(v) for v in state.losses[-per_epoch:]]
        history.append({"epoch": state.epoch, "loss": float(np.mean(losses)), "lr": mean_lr})
        log.info("%s epoch %d: loss %.4f, mean lr %.3g", desc, state.epoch, history[-1]["loss"], mean_lr)
        if on_epoch is not None:
            model.eval()
            on_epoch(state.epoch, mean_lr, state.optimizer)
            model.train()

    train_loop(model, loss, batches, settings, seed, desc=desc, on_epoch=epoch_done)
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
