"""GRPO: group-relative advantages, a clipped importance ratio, and a KL penalty to a frozen reference policy.

For a group of G rollouts of one prompt with rewards r_i, A_i = (r_i − mean r) / (std r + ε) (or r_i − mean r with
``scale_rewards: false``, Dr. GRPO's choice). ``std: unbiased`` (the default, as verl's GRPO advantage, torch.std with
Bessel's correction) divides the squared deviations by G − 1, ``std: population`` by G; on the groups of 2 CurES
allows (min_group) the two differ by √2. Per completion token, with ratio = π_θ / π_old,

    ℓ = −min(ratio·A, clip(ratio, 1−ε_low, 1+ε_high)·A) + β·KL,   KL = exp(ref − logp) − (ref − logp) − 1

(the k3 estimator, non-negative and unbiased for KL(π_θ‖π_ref)). Tokens are averaged per sequence, then over
sequences (``seq_mean``, as in the GRPO paper) or over all tokens of the batch (``token_mean``). The log-probabilities
are the causal-LM task's (:meth:`Policy.token_logprobs`, :func:`datasel.tasks.causal_lm.token_logprobs`), the ones
the warm start's and the instruction fine-tune's per-example loss is built from.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datasel.rl.policy import Policy, Rollouts
from datasel.tasks.causal_lm import masked_mean

log = logging.getLogger(__name__)


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, scale: bool = True, eps: float = 1e-6,
                     std: str = "unbiased") -> torch.Tensor:
    """Rewards normalized within each group (same ``groups`` id); a group with one reward value (or one rollout)
    gets 0. ``std``: unbiased (verl) or population."""
    if std not in ("unbiased", "population"):
        from datasel.errors import ConfigError

        raise ConfigError(f"unknown group std '{std}'", field="cures.grpo.std",
                          fix="use unbiased (verl's GRPO) or population")
    uniq, inv = torch.unique(groups, return_inverse=True)
    k = len(uniq)
    cnt = torch.zeros(k).index_add_(0, inv, torch.ones_like(rewards))
    mean = torch.zeros(k).index_add_(0, inv, rewards) / cnt
    dev = rewards - mean[inv]
    if not scale:
        return dev
    # a singleton group has dev = 0, so its divisor only has to stay positive
    denom = (cnt - 1).clamp_min(1) if std == "unbiased" else cnt
    var = torch.zeros(k).index_add_(0, inv, dev**2) / denom
    return dev / (var[inv].sqrt() + eps)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, adv: torch.Tensor,
              mask: torch.Tensor, clip_low: float, clip_high: float, kl_coef: float,
              agg: str = "seq_mean") -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped-ratio objective with KL penalty over masked tokens; returns (loss, diagnostics)."""
    mask = mask.float()
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surr = torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a)
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1
    per_tok = -surr + kl_coef * kl
    if agg == "seq_mean":
        loss = masked_mean(per_tok, mask).mean()
    elif agg == "token_mean":
        loss = (per_tok * mask).sum() / mask.sum().clamp_min(1)
    else:
        raise ValueError(f"unknown loss aggregation {agg!r}")
    with torch.no_grad():
        n = mask.sum().clamp_min(1)
        stats = {
            "kl": float((kl * mask).sum() / n),
            "clip_frac": float((((ratio - 1).abs() > clip_low) * mask).sum() / n),
        }
    return loss, stats


@dataclass
class GRPOBatch:
    """Rollouts with their prompt index (the group key) and 0/1 rewards."""

    rollouts: Rollouts
    prompt_idx: torch.Tensor
    rewards: torch.Tensor


class GRPOTrainer:
    """Owns the optimizer and the frozen reference copy; ``step`` runs ``ppo_epochs`` passes over one batch."""

    def __init__(self, policy: Policy, cfg: dict[str, Any], seed: int) -> None:
        self.policy = policy
        self.cfg = cfg
        self.ref = copy.deepcopy(policy.module).eval()
        for p in self.ref.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(policy.module.parameters(), lr=float(cfg.get("lr", 1e-4)),
                                     weight_decay=float(cfg.get("weight_decay", 0.0)), betas=(0.9, 0.99))
        self.rng = np.random.default_rng(seed)
        self.steps = 0

    def _ref_logprobs(self, seqs: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        live = self.policy.module
        self.policy.module = self.ref  # forward_parts reads self.module; swap rather than duplicate the forward
        try:
            return self.policy.token_logprobs(seqs, attn)
        finally:
            self.policy.module = live

    def step(self, batch: GRPOBatch) -> dict[str, float]:
        """One policy update from a batch of groups; groups with no reward spread only feel the KL term."""
        cfg = self.cfg
        ro = batch.rollouts
        if ro.seqs.shape[0] == 0:
            return {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "rollouts": 0}
        adv = group_advantages(batch.rewards, batch.prompt_idx, bool(cfg.get("scale_rewards", True)),
                               std=cfg.get("std", "unbiased")).to(ro.seqs.device)
        mask = ro.comp[:, 1:]
        with torch.no_grad():
            self.policy.module.eval()
            old = self.policy.token_logprobs(ro.seqs, ro.attn)
            ref = self._ref_logprobs(ro.seqs, ro.attn) if float(cfg.get("kl_coef", 0.0)) > 0 else old
        self.policy.module.train()
        n = ro.seqs.shape[0]
        mb = int(cfg.get("minibatch_size", 256))
        clip_low = float(cfg.get("clip_eps", 0.2))
        clip_high = float(cfg.get("clip_eps_high", clip_low))
        stats: dict[str, float] = {}
        for _ in range(int(cfg.get("ppo_epochs", 1))):
            order = torch.from_numpy(self.rng.permutation(n))
            for s in range(0, n, mb):
                i = order[s:s + mb].to(ro.seqs.device)
                logp = self.policy.token_logprobs(ro.seqs[i], ro.attn[i])
                loss, stats = grpo_loss(logp, old[i], ref[i], adv[i], mask[i], clip_low, clip_high,
                                        float(cfg.get("kl_coef", 0.0)), cfg.get("loss_agg", "seq_mean"))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.module.parameters(), float(cfg.get("max_grad_norm", 1.0)))
                self.opt.step()
                self.steps += 1
                stats["loss"] = float(loss.detach())
        stats["rollouts"] = n
        return stats
