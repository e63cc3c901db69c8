"""GRPO: advantages, the clipped objective's gradient, the KL term, a trainer that learns from rewards, the warm
start, checkpoints, and a short end-to-end loop for every sampler."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from datasel.rl.grpo import GRPOBatch, GRPOTrainer, group_advantages, grpo_loss
from datasel.rl.loop import new_policy, run_rl, split_lists
from datasel.rl.policy import CharPolicy, load_policy
from datasel.rl.prompts import build_prompt_sets
from datasel.rl.tokenizer import CharTokenizer
from datasel.rl.warmstart import warm_start
from datasel.store import SCHEMAS

torch.set_num_threads(1)


def test_group_advantages_known_values() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.5])
    g = torch.tensor([7, 7, 7, 7, 3, 3, 9, 9])
    a = group_advantages(r, g, eps=0.0 + 1e-12, std="population")
    std = np.sqrt(0.1875)  # population std of (1, 0, 0, 0)
    assert torch.allclose(a[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / std, atol=1e-5)
    default = group_advantages(r, g, eps=1e-12)  # verl: unbiased std, sqrt(0.75 / 3)
    assert torch.allclose(default[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / np.sqrt(0.25), atol=1e-5)
    assert torch.all(a[4:] == 0)  # groups without spread carry no signal
    assert torch.allclose(group_advantages(r, g, scale=False)[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("std", ["unbiased", "population"])
def test_group_advantages_match_explicit_loop(std: str) -> None:
    """Random groups (sizes 1-5) against a per-group loop with hand-written mean and std."""
    gen = np.random.default_rng(3)
    groups = np.repeat(np.arange(12), gen.integers(1, 6, 12))
    rewards = gen.integers(0, 2, len(groups)).astype(np.float32)
    got = group_advantages(torch.from_numpy(rewards), torch.from_numpy(groups), std=std).numpy()
    for k in np.unique(groups):
        members = [i for i in range(len(groups)) if groups[i] == k]
        vals = [float(rewards[i]) for i in members]
        mean = sum(vals) / len(vals)
        div = (len(vals) - 1 if std == "unbiased" else len(vals)) or 1
        sd = (sum((v - mean) ** 2 for v in vals) / div) ** 0.5
        for i, v in zip(members, vals):
            assert got[i] == pytest.approx((v - mean) / (sd + 1e-6), abs=1e-5)
    pair = group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), std=std)
    assert float(pair[0]) == pytest.approx(1 / np.sqrt(2) if std == "unbiased" else 1.0, rel=1e-4)
    from datasel.errors import ConfigError

    with pytest.raises(ConfigError, match="std"):
        group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), std="sample")


def test_loss_is_policy_gradient_at_ratio_one_and_clips() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([2.0, -1.0])
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, 0.2, 0.2, kl_coef=0.0)
    loss.backward()
    # seq_mean: d loss / d logp_t = −A / (#tokens of the sequence) / (#sequences)
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.5, 0.0]]))
    # a ratio above 1 + ε with A > 0 is clipped: no gradient
    lp = torch.tensor([[0.0]], requires_grad=True)
    loss, st = grpo_loss(lp, torch.tensor([[-0.5]]), lp.detach(), torch.tensor([1.0]), torch.ones(1, 1, dtype=torch.bool),
                         0.2, 0.2, 0.0)
    loss.backward()
    assert lp.grad.abs().item() == 0 and st["clip_frac"] == 1.0


def test_kl_term_is_k3_and_nonnegative() -> None:
    logp = torch.log(torch.tensor([[0.2, 0.5]]))
    ref = torch.log(torch.tensor([[0.4, 0.5]]))
    loss, st = grpo_loss(logp, logp, ref, torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), 0.2, 0.2, kl_coef=1.0)
    k3 = (0.4 / 0.2) - np.log(0.4 / 0.2) - 1  # first token; the second matches the reference
    assert st["kl"] == pytest.approx(k3 / 2, rel=1e-5) and float(loss) == pytest.approx(k3 / 2, rel=1e-5)


def _policy() -> CharPolicy:
    torch.manual_seed(0)
    return CharPolicy(CharTokenizer("0123456789+-="), 5, 3, {"d_model": 32, "n_layer": 1, "n_head": 2},
                      torch.device("cpu"))


def test_trainer_moves_probability_toward_rewarded_completions() -> None:
    pol = _policy()
    batch = pol.teacher_batch(["1+2="] * 4 + ["4+4="] * 4, ["3", "7", "9", "5", "8", "1", "2", "6"])
    rewards = torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0])
    gb = GRPOBatch(batch, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), rewards)
    trainer = GRPOTrainer(pol, {"lr": 3e-3, "kl_coef": 0.0, "ppo_epochs": 2, "minibatch_size": 4}, seed=0)

    def seq_logp() -> torch.Tensor:
        with torch.no_grad():
            return (pol.token_logprobs(batch.seqs, batch.attn) * batch.comp[:, 1:]).sum(1)

    before = seq_logp()
    for _ in range(15):
        trainer.step(gb)
    after = seq_logp()
    assert after[0] > before[0] + 0.5 and after[4] > before[4] + 0.5
    assert (after[[1, 2, 3, 5, 6, 7]] < before[[1, 2, 3, 5, 6, 7]]).all()
    # the KL anchor holds the policy near the reference: the same steps move it less
    pol2 = _policy()
    t2 = GRPOTrainer(pol2, {"lr": 3e-3, "kl_coef": 5.0, "ppo_epochs": 2, "minibatch_size": 4}, seed=0)
    for _ in range(15):
        t2.step(GRPOBatch(batch, gb.prompt_idx, rewards))
    with torch.no_grad():
        anchored = (pol2.token_logprobs(batch.seqs, batch.attn) * batch.comp[:, 1:]).sum(1)
    assert (anchored[0] - before[0]) < (after[0] - before[0])


def test_sampling_layout_and_greedy_determinism() -> None:
    pol = _policy()
    ro = pol.sample(["1+2=", "33-4="], temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert ro.seqs.shape[1] <= 5 + 3 and not ro.comp[:, :5].any()
    for row, comp in zip(ro.seqs, ro.comp):
        gen = row[comp].tolist()
        assert pol.eos_id not in gen[:-1]  # completions stop at the first end token
    g1 = pol.sample(["1+2="], greedy=True).texts
    assert g1 == pol.sample(["1+2="], greedy=True).texts
    a = pol.sample(["1+2="] * 4, generator=torch.Generator().manual_seed(3)).texts
    assert a == pol.sample(["1+2="] * 4, generator=torch.Generator().manual_seed(3)).texts


@pytest.fixture(scope="module")
def warm() -> tuple[pl.DataFrame, dict]:
    from datasel.runtime import seed_everything

    prompts = build_prompt_sets({"arithmetic": {"digits": [1], "n_ops": [1, 2]},
                                 "sizes": {"warmstart": 600, "pool": 60, "heldout": 60}}, 0)
    seed_everything(0)
    pol = new_policy(prompts, {"kind": "tiny_gpt", "tiny_gpt": {"d_model": 32, "n_layer": 2, "n_head": 2}},
                     torch.device("cpu"))
    _, q, a = split_lists(prompts, "warmstart")
    hist = warm_start(pol, q, a, {"steps": 400, "batch_size": 64, "lr": 3e-3, "target_accuracy": 0.3,
                                  "eval_every": 25, "probe_size": 100}, 0)
    return prompts, {"ckpt": pol.checkpoint(), "hist": hist}


def test_warm_start_reaches_partial_accuracy(warm) -> None:
    hist = warm[1]["hist"]
    assert hist[-1]["probe_accuracy"] >= 0.3 or hist[-1]["step"] == 400
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_checkpoint_round_trip(warm) -> None:
    a = load_policy(warm[1]["ckpt"], torch.device("cpu"))
    b = load_policy(warm[1]["ckpt"], torch.device("cpu"))
    x, m = a.encode_prompts(["1+2=", "3-4="])
    assert torch.equal(a.logits(x, m), b.logits(x, m))


@pytest.mark.parametrize("sampler", ["cures", "uniform", "vade", "reinforce_ada"])
def test_loop_tables_and_budget(warm, sampler: str) -> None:
    prompts, w = warm
    cfg = {"budget": {"iterations": 2, "rollouts_per_iteration": 64},
           "grpo": {"lr": 3e-4, "kl_coef": 0.01},
           "runs": {"r": {"sampler": sampler, "batch_prompts": 8, "estimate_rollouts": 4, "group_size": 8,
                          "active_prompts": 8}}}
    pol = load_policy(w["ckpt"], torch.device("cpu"))
    seen = []
    metrics, stats = run_rl(pol, prompts, cfg, "r", 0, on_iteration=lambda it, p: seen.append(it))
    SCHEMAS["metrics"].validate(metrics, "m")
    SCHEMAS["prompt_stats"].validate(stats, "s")
    acc = metrics.filter(pl.col("metric") == "accuracy").sort("iteration")
    assert acc["iteration"].to_list() == [0, 1, 2] and acc["rollouts"][-1] <= 128
    assert ((acc["value"] >= 0) & (acc["value"] <= 1)).all()
    assert seen == [1, 2] and stats["iteration"].unique().sort().to_list() == [1, 2]
    assert stats.filter(pl.col("iteration") == 2)["rollouts"].sum() == acc["rollouts"][-1] - acc["rollouts"][1]
    # same seed, same numbers
    m2, _ = run_rl(load_policy(w["ckpt"], torch.device("cpu")), prompts, cfg, "r", 0)
    assert m2.equals(metrics)
