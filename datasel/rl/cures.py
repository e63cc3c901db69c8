"""CurES (Zeng et al., 2025): sample prompts near p = 0.5 and give each the rollouts its gradient variance deserves.

Per iteration: draw a batch of prompts with ρ(x) ∝ exp(√(p̂(1−p̂))/τ) from their Beta posteriors, spend
``estimate_rollouts`` on each to refresh p̂ and measure the gradient norms of log π over the token-embedding matrix,
allocate the rest of the budget n_x = N·σ_x/Σσ with

    σ² = p̂q²·E[G_c²] + p̂²q·E[G_w²] − p̂²q²·(E[G_c] − E[G_w])²,   q = 1 − p̂,

drop prompts whose share rounds below ``min_group`` (n_x = 0), and run GRPO on the allocated groups.

``sigma: empirical`` (the default, as the official code) takes p̂ = s/n and the gradient moments from the prompt's own
estimation rollouts, so a prompt whose rollouts were all right or all wrong has σ = 0 and gets no training rollouts;
``sigma: posterior`` takes p̂ from the Beta posterior and lets a prompt that saw one outcome borrow the batch's
moments for the other (this project's earlier choice: such prompts still get rollouts). ``tau_mode: per_prompt``
uses the official code's per-prompt temperature τ_x = 100·(c_x + 1), c_x = correct rollouts seen for x so far,
instead of the constant ``tau``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from datasel.errors import ConfigError
from datasel.rl.sampling import SAMPLERS, RolloutEnv, Sampler, StepResult, cat_batches

log = logging.getLogger(__name__)


def sampling_weights(p_hat: np.ndarray, tau: float | np.ndarray) -> np.ndarray:
    """ρ ∝ exp(√(p̂(1−p̂))/τ), normalized; computed with the max subtracted so a tiny τ cannot overflow.

    ``tau`` is a constant or one temperature per prompt."""
    if np.any(np.asarray(tau) <= 0):
        raise ConfigError("tau must be positive", field="cures.runs.<run>.tau", fix="use e.g. 0.1 (peaked) or 10 (near uniform)")
    z = np.sqrt(np.clip(p_hat * (1 - p_hat), 0, None)) / tau
    w = np.exp(z - z.max())
    return w / w.sum()


def gradient_sigma(p_hat: np.ndarray, ec: np.ndarray, ec2: np.ndarray, ew: np.ndarray, ew2: np.ndarray) -> np.ndarray:
    """σ from the posterior pass rate and first/second moments of the correct (c) and wrong (w) gradient norms."""
    q = 1 - p_hat
    var = p_hat * q**2 * ec2 + p_hat**2 * q * ew2 - p_hat**2 * q**2 * (ec - ew) ** 2
    return np.sqrt(np.clip(var, 0, None))


def allocate(sigma: np.ndarray, budget: int, min_group: int = 1) -> np.ndarray:
    """Integer n_x ≈ budget·σ_x/Σσ summing to ``budget`` (largest remainder); shares below ``min_group`` go to 0.

    Prompts pushed to 0 give their rollouts back to the rest, repeated until every kept prompt has ≥ min_group.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    n = np.zeros(len(sigma), dtype=np.int64)
    active = sigma > 0
    while active.any() and budget > 0:
        s = np.where(active, sigma, 0.0)
        raw = budget * s / s.sum()
        n = np.floor(raw).astype(np.int64)
        left = budget - int(n.sum())
        if left:
            frac = np.where(active, raw - n, -1.0)
            # ties broken by index so the allocation is deterministic
            n[np.lexsort((np.arange(len(frac)), -frac))[:left]] += 1
        small = active & (n < min_group)
        if not small.any():
            return n
        active &= ~small
        n[:] = 0
    return np.zeros(len(sigma), dtype=np.int64)


def _moments(g: np.ndarray, idx: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cnt = np.bincount(idx[mask], minlength=n).astype(np.float64)
    s1 = np.bincount(idx[mask], weights=g[mask], minlength=n)
    s2 = np.bincount(idx[mask], weights=g[mask] ** 2, minlength=n)
    return cnt, s1, s2


@SAMPLERS.register("cures")
class CurES(Sampler):
    """Config: tau, tau_mode (constant/per_prompt), sigma (empirical/posterior), batch_prompts, estimate_rollouts,
    min_group, update_from (estimation/training), train_on_estimation, grad_chunk_size."""

    def __init__(self, cfg: dict[str, Any], n_prompts: int, rng: np.random.Generator) -> None:
        super().__init__(cfg, n_prompts, rng)
        self.tau = float(cfg.get("tau", 0.1))
        self.batch = int(cfg.get("batch_prompts", 32))
        self.k = int(cfg.get("estimate_rollouts", 4))
        self.min_group = int(cfg.get("min_group", 2))
        self.update_from = set(cfg.get("update_from", ["estimation", "training"]))
        self.train_on_estimation = bool(cfg.get("train_on_estimation", False))
        self.sigma_mode = cfg.get("sigma", "empirical")
        self.tau_mode = cfg.get("tau_mode", "constant")
        if self.sigma_mode not in ("empirical", "posterior"):
            raise ConfigError(f"unknown sigma '{self.sigma_mode}'", field="cures.runs.<run>.sigma",
                              fix="use empirical (the official code) or posterior")
        if self.tau_mode not in ("constant", "per_prompt"):
            raise ConfigError(f"unknown tau_mode '{self.tau_mode}'", field="cures.runs.<run>.tau_mode",
                              fix="use constant (tau) or per_prompt (100·(correct + 1), the official code)")
        self.correct = np.zeros(n_prompts)  # correct rollouts seen per prompt: the per-prompt temperature's count

    def temperature(self) -> float | np.ndarray:
        return 100.0 * (self.correct + 1.0) if self.tau_mode == "per_prompt" else self.tau

    def _count(self, batch: Any) -> None:
        np.add.at(self.correct, batch.prompt_idx.numpy(), batch.rewards.numpy() > 0.5)

    def step(self, env: RolloutEnv, budget: int, iteration: int) -> StepResult:
        if self.batch * self.k >= budget:
            raise ConfigError(f"estimation ({self.batch}×{self.k} rollouts) uses the whole budget of {budget}",
                              field="cures.runs.<run>.estimate_rollouts",
                              fix="lower batch_prompts or estimate_rollouts, or raise budget.rollouts_per_iteration")
        rho = sampling_weights(self.post.p_hat, self.temperature())
        chosen = self.rng.choice(self.n, size=min(self.batch, self.n), replace=False, p=rho)
        est = env.rollout(np.repeat(chosen, self.k))
        self._count(est)
        if "estimation" in self.update_from:
            self._observe(est)
        # gradient norms of log π over the embedding matrix, one batched pass over all estimation rollouts
        g = env.policy.embedding_grad_norms(est.rollouts.seqs, est.rollouts.attn, est.rollouts.comp,
                                            int(self.cfg.get("grad_chunk_size", 256))).numpy().astype(np.float64)
        idx = est.prompt_idx.numpy()
        correct = est.rewards.numpy() > 0.5
        sig = self._sigma(g, idx, correct, chosen)
        n_alloc = allocate(sig, budget - len(idx), self.min_group)
        keep = n_alloc > 0
        train = env.rollout(np.repeat(chosen[keep], n_alloc[keep]))
        self._count(train)
        if "training" in self.update_from:
            self._observe(train)
        sigma = np.full(self.n, np.nan)
        sigma[chosen] = sig
        batch = cat_batches([est, train] if self.train_on_estimation else [train], env.policy.pad_id)
        info = {"kept_prompts": float(keep.sum()), "estimation_rollouts": float(len(idx))}
        return StepResult(batch, rho, sigma, self._spent(est, train), info)

    def _sigma(self, g: np.ndarray, idx: np.ndarray, correct: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """σ_x for the chosen prompts.

        empirical: p̂ = correct/estimation rollouts of this iteration and the prompt's own moments (an unobserved
        outcome's moments are multiplied by p̂ = 0 or q = 0, so σ = 0 there). posterior: p̂ from the Beta posterior;
        a prompt with no correct (or no wrong) rollout borrows the batch's moments for that outcome — with 4
        rollouts many prompts see only one outcome, and the batch-wide average is the least-biased stand-in.
        """
        if self.sigma_mode == "empirical":
            (cnt_c, s1c, s2c), (cnt_w, s1w, s2w) = (_moments(g, idx, m, self.n) for m in (correct, ~correct))
            c, w = cnt_c[chosen], cnt_w[chosen]
            p = c / np.maximum(c + w, 1)

            def mean(s: np.ndarray, k: np.ndarray) -> np.ndarray:
                return np.where(k > 0, s[chosen] / np.maximum(k, 1), 0.0)

            return gradient_sigma(p, mean(s1c, c), mean(s2c, c), mean(s1w, w), mean(s2w, w))
        out = []
        for mask in (correct, ~correct):
            cnt, s1, s2 = _moments(g, idx, mask, self.n)
            pool = g[mask] if mask.any() else g
            m1, m2 = float(pool.mean()), float((pool**2).mean())
            c = cnt[chosen]
            out.append((np.where(c > 0, s1[chosen] / np.maximum(c, 1), m1), np.where(c > 0, s2[chosen] / np.maximum(c, 1), m2)))
        (ec, ec2), (ew, ew2) = out
        return gradient_sigma(self.post.p_hat[chosen], ec, ec2, ew, ew2)
