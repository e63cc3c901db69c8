"""CurES and uniform GRPO on the policy config/experiments/cures.yaml uses (kind hf: a llama with a chat template and
LoRA adapters, no warm start), on a tiny local llama, through the rules' own steps (prompt table, fresh-policy
checkpoint, RL run): the same seed gives the same prompt choices, rollout allocation, metrics and adapters; another
seed does not."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from lm_models import save_digit_llama

from datasel.rl.loop import prompts_step, train_step, warmstart_step

RUNS = {"grpo": {"sampler": "uniform", "group_size": 4},
        "cures": {"sampler": "cures", "tau": 0.1, "batch_prompts": 4, "estimate_rollouts": 4, "min_group": 2}}
BUDGET = {"iterations": 3, "rollouts_per_iteration": 32, "checkpoint_every": 3}
GRPO = {"lr": 0.05, "kl_coef": 0.0, "clip_eps": 0.2, "temperature": 1.0, "ppo_epochs": 1, "minibatch_size": 32}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cures-hf")
    # one-digit differences: a reply of one token can be right, so rewards vary within a group
    prompts = {"source": "graded", "seed": 0, "graded": {"levels": ["sub1"]},
               "sizes": {"warmstart": 0, "pool": 16, "heldout": 4}}
    prompts_step(prompts, 0, str(root / "prompts.parquet"))
    policy = {"kind": "hf", "model": {"path": str(save_digit_llama(root / "llama"))}, "chat_template": True,
              "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
              "max_new_tokens": 1, "device": "cpu"}
    return root, policy


def _run(root: Path, policy: dict, seed: int, name: str) -> dict[str, tuple[pl.DataFrame, pl.DataFrame, dict]]:
    """Each curriculum from the fresh policy of ``seed``: (metrics, prompt_stats, last adapters) per run."""
    out = root / name
    prompts = str(root / "prompts.parquet")
    warmstart_step(prompts, policy, {"steps": 0}, seed, str(out / "warmstart.pt"), str(out / "warmstart.json"))
    got = {}
    for run, run_cfg in RUNS.items():
        last = out / run / f"iter{BUDGET['iterations']}.pt"
        train_step(prompts, str(out / "warmstart.pt"), run, seed, run_cfg, BUDGET, GRPO, {"every": 1}, "cpu",
                   str(out / f"{run}_metrics.parquet"), str(out / f"{run}_stats.parquet"), [str(last)])
        adapters = torch.load(last, map_location="cpu", weights_only=False)["adapters"]
        got[run] = (pl.read_parquet(out / f"{run}_metrics.parquet"), pl.read_parquet(out / f"{run}_stats.parquet"),
                    adapters)
    return got


def _same_adapters(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cures_on_a_lora_chat_policy_is_deterministic_given_seed(setup) -> None:
    root, policy = setup
    first, again, other = _run(root, policy, 0, "a"), _run(root, policy, 0, "b"), _run(root, policy, 1, "c")
    for run in RUNS:
        metrics, stats, adapters = first[run]
        # the runs had something to be deterministic about: rewarded rollouts, a trained policy, and for CurES
        # rollouts allocated unevenly over the prompts it kept
        rewards = metrics.filter(pl.col("metric") == "train_reward")["value"].fill_nan(0.0)
        assert (rewards > 0).any(), run
        assert any(bool(v.abs().sum() > 0) for k, v in adapters.items() if "lora_B" in k), run
        spent = stats.filter(pl.col("rollouts") > 0)
        assert spent.group_by("iteration").agg(pl.col("rollouts").sum())["rollouts"].max() <= BUDGET[
            "rollouts_per_iteration"]
        if run == "cures":
            assert spent["rollouts"].n_unique() > 1 and (spent["sigma"] > 0).any()
        # the same seed: the same prompts chosen, rollouts allocated, metrics and adapters, bit for bit
        assert stats.equals(again[run][1]), run
        assert metrics.equals(again[run][0]), run
        assert _same_adapters(adapters, again[run][2]), run
        # another seed: other choices and outcomes (the seed and run-name columns aside)
        assert not stats.drop("run").equals(other[run][1].drop("run")), run
        assert not metrics.drop("seed").equals(other[run][0].drop("seed")), run
        assert not _same_adapters(adapters, other[run][2]), run
