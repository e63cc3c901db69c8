"""Supervised warm start: teach the answer format on problems disjoint from the RL pool.

RL with 0/1 rewards learns nothing from a group whose rollouts all fail (or all succeed), so a policy from scratch
would see no signal. A short supervised pass on the ``warmstart`` split, stopped once greedy accuracy on a probe
slice reaches ``target_accuracy``, leaves it with partial accuracy: easy prompts mostly right, hard ones mostly wrong.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from datasel.rl.evaluate import accuracy
from datasel.rl.policy import Policy
from datasel.runtime import progress

log = logging.getLogger(__name__)


def warm_start(policy: Policy, questions: list[str], answers: list[str], cfg: dict[str, Any], seed: int) -> list[dict]:
    """Train ``policy`` in place on (question, answer) pairs; returns the (step, loss, probe accuracy) history."""
    rng = np.random.default_rng(seed)
    probe_n = min(int(cfg.get("probe_size", 200)), len(questions) // 4)
    probe_q, probe_a = questions[-probe_n:], answers[-probe_n:]
    train_q, train_a = questions[:-probe_n] if probe_n else questions, answers[:-probe_n] if probe_n else answers
    steps, bs = int(cfg.get("steps", 600)), int(cfg.get("batch_size", 64))
    target, every = cfg.get("target_accuracy", 0.5), int(cfg.get("eval_every", 25))
    opt = torch.optim.AdamW(policy.module.parameters(), lr=float(cfg.get("lr", 3e-3)),
                            weight_decay=float(cfg.get("weight_decay", 0.0)))
    history: list[dict] = []
    policy.module.train()
    for step in progress(range(1, steps + 1), desc="warm start", total=steps, unit="step"):
        idx = rng.choice(len(train_q), size=min(bs, len(train_q)), replace=False)
        batch = policy.teacher_batch([train_q[i] for i in idx], [train_a[i] for i in idx])
        loss = policy.completion_nll(batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.module.parameters(), 1.0)
        opt.step()
        if step % every == 0 or step == steps:
            acc = accuracy(policy, probe_q, probe_a) if probe_n else float("nan")
            history.append({"step": step, "loss": float(loss.detach()), "probe_accuracy": acc})
            log.info("warm start step %d loss %.3f probe accuracy %.3f", step, float(loss.detach()), acc)
            if target is not None and acc >= float(target):
                break
    return history
