"""Baseline curricula on the same rollout budget: uniform GRPO, a VADE-like Thompson sampler, a Reinforce-Ada-like
adaptive sampler."""

from __future__ import annotations

import numpy as np
import torch

from datasel.rl.grpo import GRPOBatch
from datasel.rl.policy import Rollouts
from datasel.rl.sampling import SAMPLERS, RolloutEnv, Sampler, StepResult, cat_batches


@SAMPLERS.register("uniform")
class Uniform(Sampler):
    """Plain GRPO: ``budget // group_size`` prompts uniformly without replacement, ``group_size`` rollouts each."""

    def step(self, env: RolloutEnv, budget: int, iteration: int) -> StepResult:
        g = int(self.cfg.get("group_size", 8))
        chosen = self.rng.choice(self.n, size=min(self.n, max(1, budget // g)), replace=False)
        batch = env.rollout(np.repeat(chosen, g))
        self._observe(batch)
        return StepResult(batch, np.full(self.n, 1.0 / self.n), np.full(self.n, np.nan), self._spent(batch))


@SAMPLERS.register("vade")
class VADE(Sampler):
    """VADE-like: Thompson-sample p̃ ~ Beta(α, β) per prompt, take the prompts whose p̃ is closest to ``target``
    (0.5: the most reward variance), with the counts decayed toward the prior by ``decay`` each iteration."""

    def step(self, env: RolloutEnv, budget: int, iteration: int) -> StepResult:
        g = int(self.cfg.get("group_size", 8))
        self.post.decay(float(self.cfg.get("decay", 0.9)))
        draw = self.rng.beta(self.post.alpha, self.post.beta)
        score = -np.abs(draw - float(self.cfg.get("target", 0.5)))
        k = min(self.n, max(1, budget // g))
        chosen = np.lexsort((np.arange(self.n), -score))[:k]
        batch = env.rollout(np.repeat(chosen, g))
        self._observe(batch)
        rho = np.zeros(self.n)
        rho[chosen] = 1.0 / k
        return StepResult(batch, rho, np.full(self.n, np.nan), self._spent(batch))


@SAMPLERS.register("reinforce_ada")
class ReinforceAda(Sampler):
    """Reinforce-Ada-like: keep sampling a prompt in rounds of ``round_size`` until it has both a correct and a wrong
    answer (or ``max_per_prompt`` rollouts); ``active_prompts`` are in flight at once, refilled from a uniform
    stream until the budget is spent. Only prompts that reached mixed outcomes are trained on: the rest carry no
    group-relative signal."""

    def step(self, env: RolloutEnv, budget: int, iteration: int) -> StepResult:
        r = int(self.cfg.get("round_size", 4))
        cap = int(self.cfg.get("max_per_prompt", 16))
        width = int(self.cfg.get("active_prompts", 32))
        stream = list(self.rng.permutation(self.n))
        active: list[int] = []
        got_c = np.zeros(self.n, dtype=bool)
        got_w = np.zeros(self.n, dtype=bool)
        count = np.zeros(self.n, dtype=np.int64)
        parts = []
        left = budget
        while left >= r:
            while len(active) < width and stream:
                active.append(int(stream.pop()))
            if not active:
                break
            active = active[: left // r]
            b = env.rollout(np.repeat(np.array(active), r))
            parts.append(b)
            left -= len(active) * r
            idx, rew = b.prompt_idx.numpy(), b.rewards.numpy()
            got_c[idx[rew > 0.5]] = True
            got_w[idx[rew <= 0.5]] = True
            np.add.at(count, idx, 1)
            active = [i for i in active if not (got_c[i] and got_w[i]) and count[i] < cap]
        everything = cat_batches(parts, env.policy.pad_id)
        self._observe(everything)
        mixed = got_c & got_w
        keep = mixed[everything.prompt_idx.numpy()]
        k = torch.from_numpy(keep)
        ro = everything.rollouts
        train = GRPOBatch(Rollouts(ro.seqs[k], ro.attn[k], ro.comp[k], [t for t, m in zip(ro.texts, keep) if m]),
                          everything.prompt_idx[k], everything.rewards[k])
        rho = np.full(self.n, 1.0 / self.n)
        return StepResult(train, rho, np.full(self.n, np.nan), count, {"mixed_prompts": float(mixed.sum())})
