"""CurES: sampling weights, σ, the budget allocation, the batched embedding-gradient norms against a vmap
reference, and every sampler's budget accounting on a fake environment with known pass rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datasel.errors import ConfigError
from datasel.features.grads import per_sample_grad_norms
from datasel.rl.cures import CurES, allocate, gradient_sigma, sampling_weights
from datasel.rl.grpo import GRPOBatch
from datasel.rl.policy import CharPolicy, Rollouts
from datasel.rl.sampling import SAMPLERS, BetaPosterior
from datasel.rl.tokenizer import CharTokenizer

torch.set_num_threads(1)


def test_sampling_weights_peak_at_half_and_tau() -> None:
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    w = sampling_weights(p, 0.1)
    assert w.sum() == pytest.approx(1) and w.argmax() == 2
    assert w[1] == pytest.approx(w[3]) and w[0] == pytest.approx(w[4])
    # ρ ∝ exp(√(p(1-p))/τ): ratio between p=0.5 and p=0 is exp(0.5/τ)
    assert w[2] / w[0] == pytest.approx(np.exp(0.5 / 0.1))
    near_uniform = sampling_weights(p, 1000.0)
    assert near_uniform.max() / near_uniform.min() < 1.001
    assert np.isfinite(sampling_weights(p, 1e-4)).all()
    with pytest.raises(ConfigError):
        sampling_weights(p, 0.0)


def test_sigma_known_values() -> None:
    # p = 0.5, G_c ≡ 2, G_w ≡ 4: σ² = .5·.25·4 + .25·.5·16 − .0625·4 = 0.5 + 2 − 0.25
    s = gradient_sigma(np.array([0.5]), np.array([2.0]), np.array([4.0]), np.array([4.0]), np.array([16.0]))
    assert s[0] == pytest.approx(np.sqrt(2.25))
    # no reward variance, no gradient variance
    z = gradient_sigma(np.array([0.0, 1.0]), np.ones(2), np.ones(2), np.ones(2), np.ones(2))
    assert np.allclose(z, 0)


def test_sigma_is_std_of_reward_weighted_gradient() -> None:
    """σ² is Var[(r − p)·G] for r ~ Bernoulli(p), G | r=1 ~ G_c, G | r=0 ~ G_w: check by simulation."""
    rng = np.random.default_rng(0)
    p, n = 0.3, 400_000
    r = rng.random(n) < p
    g = np.where(r, rng.gamma(4.0, 1.0, n), rng.gamma(2.0, 3.0, n))
    x = (r - p) * g
    gc, gw = g[r], g[~r]
    s = gradient_sigma(np.array([p]), np.array([gc.mean()]), np.array([(gc**2).mean()]),
                       np.array([gw.mean()]), np.array([(gw**2).mean()]))[0]
    assert s == pytest.approx(x.std(), rel=0.02)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=40), st.integers(0, 500), st.integers(1, 4))
def test_allocation_properties(sigma: list[float], budget: int, min_group: int) -> None:
    s = np.array(sigma)
    n = allocate(s, budget, min_group)
    assert n.dtype.kind == "i" and (n >= 0).all()
    assert ((n == 0) | (n >= min_group)).all()
    assert (n[s == 0] == 0).all()
    if n.sum():
        assert n.sum() == budget  # rollouts of dropped prompts go back to the rest
        kept = n > 0
        # each kept prompt is within one rollout of its proportional share among kept prompts
        share = budget * s[kept] / s[kept].sum()
        assert np.all(np.abs(n[kept] - share) < 1 + 1e-9)
    assert np.array_equal(n, allocate(s, budget, min_group))


def test_allocation_drops_low_sigma() -> None:
    n = allocate(np.array([1.0, 1.0, 0.02, 0.0]), 20, min_group=2)
    assert n.tolist() == [10, 10, 0, 0]
    assert allocate(np.array([3.0, 1.0]), 8).tolist() == [6, 2]


def _char_policy(seed: int = 0) -> CharPolicy:
    torch.manual_seed(seed)
    tok = CharTokenizer("0123456789+-=")
    return CharPolicy(tok, prompt_width=6, max_new_tokens=4, model_cfg={"d_model": 32, "n_layer": 2, "n_head": 4},
                      device=torch.device("cpu"))


def test_embedding_grad_norms_match_vmap_reference() -> None:
    pol = _char_policy()
    ro = pol.sample(["12+3=", "7-9=", "1+1=", "45-6="] * 3, temperature=1.0, generator=torch.Generator().manual_seed(1))
    fast = pol.embedding_grad_norms(ro.seqs, ro.attn, ro.comp, chunk_size=5)
    targets = ro.seqs[:, 1:].masked_fill(~ro.comp[:, 1:], -100)

    def nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # −log π(y|x): same norm as ∇ log π
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                 ignore_index=-100, reduction="sum")

    ref = per_sample_grad_norms(pol.module, ro.seqs, targets, nll, params=["tok_emb.weight"], chunk_size=12)
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-5)
    # and against a plain loop with .backward()
    for i in (0, 7):
        pol.module.zero_grad()
        nll(pol.module(ro.seqs[i:i + 1]), targets[i:i + 1]).backward()
        assert float(pol.module.tok_emb.weight.grad.norm()) == pytest.approx(float(fast[i]), rel=1e-4)


# ------------------------------------------------------------------ samplers on a fake environment
class FakePolicy:
    pad_id = 0

    def embedding_grad_norms(self, seqs, attn, comp, chunk_size=256):
        return torch.ones(seqs.shape[0]) + seqs[:, 0].float()  # correct rollouts carry norm 2, wrong ones 1


class FakeEnv:
    """Prompt i succeeds with probability p[i]; a rollout's first token records its reward."""

    def __init__(self, p: np.ndarray, seed: int = 0) -> None:
        self.p = p
        self.rng = np.random.default_rng(seed)
        self.policy = FakePolicy()
        self.consumed = 0

    def rollout(self, idx) -> GRPOBatch:
        idx = np.asarray(idx, dtype=np.int64)
        r = (self.rng.random(len(idx)) < self.p[idx]).astype(np.float32)
        seqs = torch.from_numpy(r.astype(np.int64))[:, None].repeat(1, 3)
        self.consumed += len(idx)
        return GRPOBatch(Rollouts(seqs, torch.ones_like(seqs), torch.ones_like(seqs, dtype=torch.bool), [""] * len(idx)),
                         torch.from_numpy(idx), torch.from_numpy(r))


P = np.concatenate([np.zeros(40), np.full(20, 0.5), np.ones(40)])


@pytest.mark.parametrize("name, cfg", [
    ("cures", {"tau": 0.05, "batch_prompts": 16, "estimate_rollouts": 4}),
    ("uniform", {"group_size": 8}),
    ("vade", {"group_size": 8, "decay": 0.9}),
    ("reinforce_ada", {"round_size": 4, "max_per_prompt": 12, "active_prompts": 16}),
])
def test_samplers_spend_the_budget_and_count_every_rollout(name: str, cfg: dict) -> None:
    env = FakeEnv(P)
    s = SAMPLERS.get(name)(cfg, len(P), np.random.default_rng(0))
    for it in range(1, 6):
        before = env.consumed
        res = s.step(env, 128, it)
        spent = env.consumed - before
        assert spent <= 128 and res.rollouts.sum() == spent
        assert res.rho.shape == (len(P),) and res.rho.sum() == pytest.approx(1)
    # the posterior has seen every rollout (VADE's decays; the others' counts add up exactly)
    if name != "vade":
        assert (s.post.alpha + s.post.beta - 2).sum() == pytest.approx(env.consumed)


def test_cures_focuses_on_uncertain_prompts() -> None:
    """With a small τ, after a few iterations most rollouts go to the p = 0.5 prompts (20% of the pool)."""
    env = FakeEnv(P)
    s = CurES({"tau": 0.05, "batch_prompts": 16, "estimate_rollouts": 4, "min_group": 2}, len(P), np.random.default_rng(1))
    share = []
    for it in range(1, 9):
        res = s.step(env, 128, it)
        share.append(res.rollouts[40:60].sum() / res.rollouts.sum())
        # among the batch, σ (so n_x) is larger where the estimation rollouts disagree: the posterior keeps
        # p̂ off 0 and 1, so settled prompts still get a few rollouts, but fewer than the uncertain ones
        n_x = np.bincount(res.batch.prompt_idx.numpy(), minlength=len(P))
        mid, ends = n_x[40:60], np.concatenate([n_x[:40], n_x[60:]])
        if (mid > 0).any() and (ends > 0).any():
            assert mid[mid > 0].mean() > ends[ends > 0].mean()
    assert np.mean(share[-4:]) > 0.4 and share[-1] > share[0]  # 20% of the pool, more than twice its share
    near_uniform = CurES({"tau": 100.0, "batch_prompts": 16, "estimate_rollouts": 4}, len(P), np.random.default_rng(1))
    counts = np.zeros(len(P))
    for it in range(1, 9):
        counts += near_uniform.step(FakeEnv(P, it), 128, it).rho
    assert counts.max() / counts.min() < 1.01


def _reference_sigma_empirical(g, idx, r, chosen):
    """σ per chosen prompt from its own estimation rollouts only: p = s/n, moments over its correct/wrong rollouts."""
    out = []
    for x in chosen:
        gc = [float(g[i]) for i in range(len(idx)) if idx[i] == x and r[i] > 0.5]
        gw = [float(g[i]) for i in range(len(idx)) if idx[i] == x and r[i] <= 0.5]
        p = len(gc) / (len(gc) + len(gw))
        q = 1 - p
        m = lambda v, k: sum(t**k for t in v) / len(v) if v else 0.0  # noqa: E731
        var = p * q * q * m(gc, 2) + p * p * q * m(gw, 2) - p * p * q * q * (m(gc, 1) - m(gw, 1)) ** 2
        out.append(max(var, 0.0) ** 0.5)
    return np.array(out)


def test_cures_empirical_sigma_matches_reference_and_skips_settled_prompts() -> None:
    """Official default: prompts whose estimation rollouts were all right or all wrong get σ = 0, no rollouts."""
    env = FakeEnv(P, seed=2)
    s = CurES({"tau": 0.05, "batch_prompts": 16, "estimate_rollouts": 4, "min_group": 2}, len(P),
              np.random.default_rng(3))
    old = CurES({"tau": 0.05, "batch_prompts": 16, "estimate_rollouts": 4, "min_group": 2, "sigma": "posterior"},
                len(P), np.random.default_rng(3))
    gen = np.random.default_rng(0)
    idx = np.repeat(np.arange(10), 4)
    r = (gen.random(40) < 0.5).astype(float)
    r[:4], r[4:8] = 1.0, 0.0  # prompt 0 all right, prompt 1 all wrong
    g = gen.random(40) + 1.0
    chosen = np.arange(10)
    got = s._sigma(g, idx, r > 0.5, chosen)
    np.testing.assert_allclose(got, _reference_sigma_empirical(g, idx, r, chosen), rtol=1e-10, atol=1e-12)
    assert got[0] == 0 and got[1] == 0
    assert (old._sigma(g, idx, r > 0.5, chosen)[:2] > 0).all()  # the posterior mode still funds them
    settled_share, settled_share_old = [], []
    for it in range(1, 6):
        for sampler, out in ((s, settled_share), (old, settled_share_old)):
            res = sampler.step(env, 128, it)
            n_x = np.bincount(res.batch.prompt_idx.numpy(), minlength=len(P))
            out.append(n_x[np.r_[0:40, 60:100]].sum() / max(n_x.sum(), 1))
    assert max(settled_share) == 0.0  # P is exactly 0 or 1 there: every estimation agrees, σ = 0
    assert max(settled_share_old) > 0.0
    with pytest.raises(ConfigError, match="sigma"):
        CurES({"sigma": "bayes"}, 4, np.random.default_rng(0))


def test_cures_per_prompt_temperature() -> None:
    """τ_x = 100·(c_x + 1) with c_x the correct rollouts seen for x; ρ ∝ exp(√(p̂q̂)/τ_x)."""
    s = CurES({"tau_mode": "per_prompt", "batch_prompts": 8, "estimate_rollouts": 4}, len(P), np.random.default_rng(0))
    env = FakeEnv(P)
    for it in (1, 2):
        s.step(env, 128, it)
    # every rollout updates the Beta counts (update_from both), so α − 1 is the correct count, read independently
    correct = s.post.alpha - 1.0
    assert correct.sum() > 0
    p_hat = s.post.p_hat.copy()
    z = np.sqrt(p_hat * (1 - p_hat)) / (100.0 * (correct + 1.0))
    ref = np.array([np.exp(v) for v in z])
    res = s.step(env, 128, 3)
    np.testing.assert_allclose(res.rho, ref / ref.sum(), rtol=1e-10)
    constant = sampling_weights(p_hat, 0.1)
    assert np.abs(constant - res.rho).max() > 1e-4  # the modes differ
    with pytest.raises(ConfigError, match="tau_mode"):
        CurES({"tau_mode": "annealed"}, 4, np.random.default_rng(0))


def test_cures_refuses_budget_eaten_by_estimation() -> None:
    s = CurES({"batch_prompts": 32, "estimate_rollouts": 4}, len(P), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="whole budget"):
        s.step(FakeEnv(P), 128, 1)


def test_reinforce_ada_trains_only_mixed_prompts() -> None:
    env = FakeEnv(P)
    s = SAMPLERS.get("reinforce_ada")({"round_size": 4, "max_per_prompt": 12, "active_prompts": 16}, len(P),
                                      np.random.default_rng(0))
    res = s.step(env, 256, 1)
    trained = np.unique(res.batch.prompt_idx.numpy())
    assert len(trained) and (P[trained] == 0.5).all()
    # a prompt that is always right or always wrong is sampled up to the cap and then given up
    assert res.rollouts[:40].max() <= 12


def test_vade_decay_shrinks_toward_prior() -> None:
    post = BetaPosterior(2)
    post.update(np.array([0, 0, 1]), np.array([1.0, 1.0, 0.0]))
    post.decay(0.5)
    assert post.alpha.tolist() == [2.0, 1.0] and post.beta.tolist() == [1.0, 1.5]
    assert post.p_hat[0] == pytest.approx(2 / 3)
