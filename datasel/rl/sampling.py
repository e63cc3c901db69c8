"""What every prompt curriculum shares: the rollout environment, Beta posteriors over pass rates, a registry.

A sampler's ``step`` spends at most ``budget`` rollouts through ``RolloutEnv.rollout`` (which counts them, so
estimation rollouts are paid for like training ones) and returns the GRPO batch plus per-prompt statistics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from datasel.registry import Registry
from datasel.rl.evaluate import rewards_for
from datasel.rl.grpo import GRPOBatch
from datasel.rl.policy import Policy, Rollouts


class BetaPosterior:
    """Beta(α, β) per prompt over its pass rate p; a 0/1 reward adds to α (correct) or β (wrong)."""

    def __init__(self, n: int, prior_alpha: float = 1.0, prior_beta: float = 1.0) -> None:
        self.prior = (float(prior_alpha), float(prior_beta))
        self.alpha = np.full(n, self.prior[0])
        self.beta = np.full(n, self.prior[1])

    def update(self, idx: np.ndarray, rewards: np.ndarray) -> None:
        np.add.at(self.alpha, idx, rewards)
        np.add.at(self.beta, idx, 1.0 - rewards)

    def decay(self, factor: float) -> None:
        """Shrink the evidence toward the prior (VADE): the policy moves, so old counts go stale."""
        self.alpha = self.prior[0] + factor * (self.alpha - self.prior[0])
        self.beta = self.prior[1] + factor * (self.beta - self.prior[1])

    @property
    def p_hat(self) -> np.ndarray:
        return self.alpha / (self.alpha + self.beta)


def cat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Stack rollout rectangles whose completions stopped at different lengths (right-pad the shorter)."""
    parts = [p for p in parts if p.seqs.shape[0]]
    if not parts:
        z = torch.zeros((0, 1), dtype=torch.long)
        return Rollouts(z, z.clone(), z.bool(), [])
    width = max(p.seqs.shape[1] for p in parts)

    def pad(t: torch.Tensor, value: int | bool) -> torch.Tensor:
        extra = width - t.shape[1]
        return t if extra == 0 else torch.cat([t, torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)], 1)

    return Rollouts(
        torch.cat([pad(p.seqs, pad_id) for p in parts]),
        torch.cat([pad(p.attn, 0) for p in parts]),
        torch.cat([pad(p.comp, False) for p in parts]),
        [t for p in parts for t in p.texts],
    )


def cat_batches(parts: list[GRPOBatch], pad_id: int) -> GRPOBatch:
    parts = [p for p in parts if p.rewards.numel()]
    return GRPOBatch(
        cat_rollouts([p.rollouts for p in parts], pad_id),
        torch.cat([p.prompt_idx for p in parts]) if parts else torch.zeros(0, dtype=torch.long),
        torch.cat([p.rewards for p in parts]) if parts else torch.zeros(0),
    )


class RolloutEnv:
    """Samples completions for pool prompts, scores them, and counts every rollout consumed."""

    def __init__(self, policy: Policy, questions: list[str], answers: list[str], temperature: float,
                 generator: torch.Generator, chunk_size: int = 512) -> None:
        self.policy = policy
        self.questions = questions
        self.answers = answers
        self.temperature = float(temperature)
        self.generator = generator
        self.chunk_size = int(chunk_size)
        self.consumed = 0
        self._outcomes: list[tuple[np.ndarray, np.ndarray]] = []

    def rollout(self, idx: np.ndarray) -> GRPOBatch:
        """One rollout per entry of ``idx`` (repeat an index for a group)."""
        idx = np.asarray(idx, dtype=np.int64)
        parts = []
        for s in range(0, len(idx), self.chunk_size):
            chunk = idx[s:s + self.chunk_size]
            ro = self.policy.sample([self.questions[i] for i in chunk], self.temperature, generator=self.generator)
            parts.append(GRPOBatch(ro, torch.from_numpy(chunk), rewards_for(ro.texts, [self.answers[i] for i in chunk])))
        self.consumed += len(idx)
        out = cat_batches(parts, self.policy.pad_id)
        self._outcomes.append((out.prompt_idx.numpy().copy(), out.rewards.numpy().copy()))
        return out

    def take_outcomes(self) -> tuple[np.ndarray, np.ndarray]:
        """(prompt index, reward) of every rollout since the last call (an iteration's), estimation ones included."""
        parts, self._outcomes = self._outcomes, []
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def saturated_share(idx: np.ndarray, rewards: np.ndarray) -> float:
    """Share of rollouts spent on prompts whose rollouts (in this set) were all right or all wrong (p̂ = 0 or 1 on
    the iteration's own evidence): rollouts that give GRPO no group-relative signal. NaN when there are none."""
    if len(idx) == 0:
        return float("nan")
    _, inv, counts = np.unique(idx, return_inverse=True, return_counts=True)
    hits = np.bincount(inv, weights=(np.asarray(rewards) > 0.5).astype(np.float64))
    saturated = (hits == 0) | (hits == counts)
    return float(counts[saturated].sum() / counts.sum())


@dataclass
class StepResult:
    """The GRPO batch and, per pool prompt, the sampling weight, σ (NaN where not computed) and rollouts spent."""

    batch: GRPOBatch
    rho: np.ndarray
    sigma: np.ndarray
    rollouts: np.ndarray
    info: dict[str, float] = field(default_factory=dict)


class Sampler(ABC):
    """A prompt curriculum. Subclasses keep a :class:`BetaPosterior` (their state, or for reporting)."""

    def __init__(self, cfg: dict[str, Any], n_prompts: int, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.n = n_prompts
        self.rng = rng
        self.post = BetaPosterior(n_prompts, cfg.get("prior_alpha", 1.0), cfg.get("prior_beta", 1.0))

    @abstractmethod
    def step(self, env: RolloutEnv, budget: int, iteration: int) -> StepResult:
        """Spend at most ``budget`` rollouts and return what GRPO trains on this iteration."""

    def _spent(self, *batches: GRPOBatch) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.int64)
        for b in batches:
            np.add.at(out, b.prompt_idx.numpy(), 1)
        return out

    def _observe(self, batch: GRPOBatch) -> None:
        self.post.update(batch.prompt_idx.numpy(), batch.rewards.numpy().astype(np.float64))


SAMPLERS: Registry[type[Sampler]] = Registry("prompt sampler", "datasel.rl")
