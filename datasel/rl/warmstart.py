"""Supervised warm start: teach the answer format on problems disjoint from the RL pool.

RL with 0/1 rewards learns nothing from a group whose rollouts all fail (or all succeed), so a policy from scratch
would see no signal. A short supervised pass on the ``warmstart`` split, stopped once greedy accuracy on a probe
slice reaches ``target_accuracy``, leaves it with partial accuracy: easy prompts mostly right, hard ones mostly wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from datasel.rl.evaluate import accuracy
from datasel.rl.policy import Policy, Rollouts
from datasel.training.loop import LoopSettings, LoopState, train_loop

log = logging.getLogger(__name__)


class _TargetReached(Exception):
    """Raised by the probe hook to end the loop early: the probe accuracy reached ``target_accuracy``."""


def warm_start(policy: Policy, questions: list[str], answers: list[str], cfg: dict[str, Any], seed: int) -> list[dict]:
    """Train ``policy`` in place on (question, answer) pairs with the one training loop and the causal-LM task's
    per-example completion loss; returns the (step, loss, probe accuracy) history."""
    probe_n = min(int(cfg.get("probe_size", 200)), len(questions) // 4)
    probe_q, probe_a = questions[-probe_n:], answers[-probe_n:]
    train_q, train_a = questions[:-probe_n] if probe_n else questions, answers[:-probe_n] if probe_n else answers
    steps, bs = int(cfg.get("steps", 600)), min(int(cfg.get("batch_size", 64)), len(train_q))
    target, every = cfg.get("target_accuracy", 0.5), int(cfg.get("eval_every", 25))
    settings = LoopSettings(steps=steps, optimizer="adamw", lr=float(cfg.get("lr", 3e-3)),
                            weight_decay=float(cfg.get("weight_decay", 0.0)), schedule="constant",
                            max_grad_norm=1.0, where="cures.warmstart")

    def batches(_epoch: int, gen: torch.Generator) -> Iterator[Rollouts]:
        while True:  # a fresh random batch per step (no epochs)
            idx = torch.randperm(len(train_q), generator=gen)[:bs].tolist()
            yield policy.teacher_batch([train_q[i] for i in idx], [train_a[i] for i in idx])

    history: list[dict] = []

    def probe(state: LoopState) -> None:
        if state.step % every and state.step != steps:
            return
        loss = float(state.losses[-1])
        acc = accuracy(policy, probe_q, probe_a) if probe_n else float("nan")
        history.append({"step": state.step, "loss": loss, "probe_accuracy": acc})
        log.info("warm start step %d loss %.3f probe accuracy %.3f", state.step, loss, acc)
        if target is not None and acc >= float(target):
            raise _TargetReached

    try:
        train_loop(policy.module, lambda batch: policy.completion_nll(batch).mean(), batches, settings, seed,
                   desc="warm start", after_step=probe)
    except _TargetReached:
        policy.module.eval()
    return history
