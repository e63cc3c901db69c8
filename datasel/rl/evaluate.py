"""Held-out accuracy: greedy decoding, judged by the answer checker."""

from __future__ import annotations

import torch

from datasel.rl.answers import reward
from datasel.rl.policy import Policy


def rewards_for(texts: list[str], answers: list[str]) -> torch.Tensor:
    return torch.tensor([reward(t, a) for t, a in zip(texts, answers)], dtype=torch.float32)


def accuracy(policy: Policy, questions: list[str], answers: list[str], batch_size: int = 512) -> float:
    """Share of ``questions`` whose greedy completion states the reference number."""
    hits = 0.0
    for s in range(0, len(questions), batch_size):
        ro = policy.sample(questions[s:s + batch_size], greedy=True)
        hits += float(rewards_for(ro.texts, answers[s:s + batch_size]).sum())
    return hits / max(1, len(questions))
