"""The RL loop: per iteration a curriculum spends its rollout budget, GRPO trains, held-out accuracy is measured.

Also the rules' steps (``prompts_step``, ``warmstart_step``, ``train_step``), on typed arguments that
``workflow/scripts/cures_*.py`` unpack from Snakemake, which write the tables: ``metrics`` (held-out accuracy against rollouts consumed) and
``prompt_stats`` (per iteration and prompt: α, β, p̂, σ, ρ, rollouts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from datasel.errors import ConfigError
from datasel.rl.evaluate import accuracy
from datasel.rl.grpo import GRPOTrainer
from datasel.rl.policy import Policy, build_policy, load_policy
from datasel.rl.prompts import PROMPTS_SCHEMA, build_prompt_sets
from datasel.rl.sampling import SAMPLERS
from datasel.rl.warmstart import warm_start
from datasel.runtime import pick_device, progress, seed_everything
from datasel.store import read_table, save_checkpoint_file, write_json, write_table

log = logging.getLogger(__name__)


def split_lists(prompts: pl.DataFrame, split: str) -> tuple[list[str], list[str], list[str]]:
    part = prompts.filter(pl.col("split") == split)
    return part["prompt_id"].to_list(), part["question"].to_list(), part["answer"].to_list()


def new_policy(prompts: pl.DataFrame, policy_cfg: dict[str, Any], device: torch.device) -> Policy:
    return build_policy(policy_cfg, prompts["question"].to_list(), prompts["answer"].to_list(), device)


def run_rl(
    policy: Policy,
    prompts: pl.DataFrame,
    cfg: dict[str, Any],
    run: str,
    seed: int,
    on_iteration: Callable[[int, Policy], None] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Train ``policy`` in place with the curriculum ``cfg['runs'][run]``; return (metrics, prompt_stats) frames."""
    if run not in cfg.get("runs", {}):
        raise ConfigError(f"no run named {run!r}", field="cures.runs", fix=f"use one of {sorted(cfg.get('runs', {}))}")
    run_cfg = cfg["runs"][run]
    budget_cfg, grpo_cfg, eval_cfg = cfg.get("budget", {}), cfg.get("grpo", {}), cfg.get("eval", {})
    iterations = int(budget_cfg.get("iterations", 20))
    per_iter = int(budget_cfg.get("rollouts_per_iteration", 256))
    gen = seed_everything(seed)
    rng = np.random.default_rng(seed)
    pool_ids, pool_q, pool_a = split_lists(prompts, "pool")
    _, held_q, held_a = split_lists(prompts, "heldout")
    n_eval = eval_cfg.get("heldout_size")
    if n_eval:
        held_q, held_a = held_q[: int(n_eval)], held_a[: int(n_eval)]
    from datasel.rl.sampling import RolloutEnv

    env = RolloutEnv(policy, pool_q, pool_a, float(grpo_cfg.get("temperature", 1.0)), gen,
                     int(grpo_cfg.get("rollout_chunk_size", 512)))
    sampler = SAMPLERS.get(run_cfg.get("sampler", "uniform"), where=f"cures.runs.{run}.sampler")(run_cfg, len(pool_q), rng)
    trainer = GRPOTrainer(policy, grpo_cfg, seed)
    method = run_cfg.get("sampler", "uniform")
    total = iterations * per_iter
    rows: list[dict[str, Any]] = []
    stats: list[pl.DataFrame] = []

    def record(it: int, metric: str, value: float) -> None:
        rows.append({"selection": run, "method": method, "fraction": env.consumed / total, "seed": seed,
                     "split": "heldout" if metric == "accuracy" else "pool", "metric": metric, "value": float(value),
                     "iteration": it, "rollouts": env.consumed})

    every = int(eval_cfg.get("every", 1))
    record(0, "accuracy", accuracy(policy, held_q, held_a))
    for it in progress(range(1, iterations + 1), desc=f"rl {run} seed {seed}", total=iterations, unit="iter"):
        res = sampler.step(env, per_iter, it)
        train_stats = trainer.step(res.batch)
        spent = res.rollouts
        mean_reward = float(res.batch.rewards.mean()) if res.batch.rewards.numel() else float("nan")
        record(it, "train_reward", mean_reward)
        record(it, "kl", train_stats.get("kl", 0.0))
        for k, v in res.info.items():
            record(it, k, v)
        if it % every == 0 or it == iterations:
            record(it, "accuracy", accuracy(policy, held_q, held_a))
            log.info("%s seed %d iteration %d: rollouts %d, held-out accuracy %.3f, train reward %.3f", run, seed, it,
                     env.consumed, rows[-1]["value"], mean_reward)
        stats.append(pl.DataFrame({
            "run": f"{run}_seed{seed}", "iteration": it, "prompt_id": pool_ids,
            "alpha": sampler.post.alpha, "beta": sampler.post.beta, "p_hat": sampler.post.p_hat,
            "sigma": res.sigma, "rho": res.rho, "rollouts": spent.astype(np.int64),
        }))
        if on_iteration is not None:
            on_iteration(it, policy)
    metrics = pl.DataFrame(rows)
    return metrics, pl.concat(stats)


# ---------------------------------------------------------------- the rules' steps (typed; workflow/scripts/cures_*.py)
def prompts_step(prompts_cfg: dict[str, Any], seed: int, out: str) -> None:
    """rule cures_prompts: the prompt table from ``cures.prompts``."""
    write_table(build_prompt_sets(dict(prompts_cfg), int(seed)), out, PROMPTS_SCHEMA)


def warmstart_step(prompts: str, policy_cfg: dict[str, Any], warmstart_cfg: dict[str, Any], seed: int, ckpt: str,
                   history: str) -> None:
    """rule cures_warmstart: a fresh policy (``cures.policy`` with ``device``) trained on the warm-start split ->
    ``ckpt`` (+ the ``history`` json)."""
    seed = int(seed)
    seed_everything(seed)
    table = read_table(prompts, PROMPTS_SCHEMA)
    policy = new_policy(table, dict(policy_cfg), pick_device(policy_cfg.get("device", "auto")))
    _, q, a = split_lists(table, "warmstart")
    hist = warm_start(policy, q, a, dict(warmstart_cfg), seed)
    save_checkpoint_file({**policy.checkpoint(), "warmstart": hist, "seed": seed}, ckpt)
    write_json(history, hist, indent=1)


def train_step(prompts: str, ckpt: str, run: str, seed: int, run_cfg: dict[str, Any], budget: dict[str, Any],
               grpo: dict[str, Any], evaluation: dict[str, Any], device: str, metrics: str, prompt_stats: str,
               iterations: list[str]) -> None:
    """rule cures_train: one (run, seed) from the warm-start checkpoint ``ckpt``; writes the metrics and prompt_stats
    tables and a checkpoint per iteration named in ``iterations`` (``.../iter<i>.pt``)."""
    cfg = {"runs": {run: dict(run_cfg)}, "budget": dict(budget), "grpo": dict(grpo), "eval": dict(evaluation)}
    seed = int(seed)
    table = read_table(prompts, PROMPTS_SCHEMA)
    policy = load_policy(torch.load(ckpt, map_location="cpu", weights_only=False), pick_device(device))
    iter_ckpts = {int(Path(p).stem.removeprefix("iter")): p for p in iterations}

    def save(it: int, pol: Policy) -> None:
        if it in iter_ckpts:
            save_checkpoint_file({**pol.checkpoint(), "iteration": it, "seed": seed, "run": run}, iter_ckpts[it])

    frame, stats = run_rl(policy, table, cfg, run, seed, on_iteration=save)
    write_table(frame, metrics, "metrics")
    write_table(stats, prompt_stats, "prompt_stats")
