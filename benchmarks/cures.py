"""CurES vs uniform GRPO, a VADE-like and a Reinforce-Ada-like sampler, at an equal rollout budget, on CPU.

Per seed: one arithmetic prompt table, one warm-started TinyGPT shared by every method (same start), then each
curriculum runs GRPO for the same number of iterations × rollouts. Figures: held-out accuracy against rollouts
consumed (mean over seeds), final accuracy, area under the accuracy curve, and the rollouts each method needs to
reach uniform GRPO's final accuracy. ``cures`` uses a small τ and the official empirical σ; ``cures_posterior`` the
Beta-posterior σ (this project's earlier default); ``cures_tau10`` a near-uniform constant τ; ``cures_tau_prompt`` the
official per-prompt τ = 100·(correct + 1). A run name ending in ``@population`` trains with the population group std
instead of the unbiased one (verl's, the default): ``cures_posterior@population`` is the earlier code's CurES.
The last line is one JSON object.

    DATASEL_PROGRESS=0 python benchmarks/cures.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time

import polars as pl
import torch

from datasel.report.cures_plots import summarize
from datasel.rl.loop import new_policy, run_rl, split_lists
from datasel.rl.policy import load_policy
from datasel.rl.prompts import build_prompt_sets
from datasel.rl.warmstart import warm_start
from datasel.runtime import seed_everything, set_threads

RUNS = {
    "grpo": {"sampler": "uniform", "group_size": 8},
    "cures": {"sampler": "cures", "tau": 0.1, "batch_prompts": 32, "estimate_rollouts": 4, "min_group": 2},
    "cures_posterior": {"sampler": "cures", "tau": 0.1, "batch_prompts": 32, "estimate_rollouts": 4, "min_group": 2,
                        "sigma": "posterior"},
    "cures_tau10": {"sampler": "cures", "tau": 10.0, "batch_prompts": 32, "estimate_rollouts": 4, "min_group": 2},
    "cures_tau_prompt": {"sampler": "cures", "tau_mode": "per_prompt", "batch_prompts": 32, "estimate_rollouts": 4,
                         "min_group": 2},
    "vade": {"sampler": "vade", "group_size": 8, "decay": 0.9},
    "reinforce_ada": {"sampler": "reinforce_ada", "round_size": 4, "max_per_prompt": 16, "active_prompts": 32},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--budget", type=int, default=256, help="rollouts per iteration")
    ap.add_argument("--pool", type=int, default=500)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--warm-steps", type=int, default=2000)
    ap.add_argument("--warm-target", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--runs", nargs="+", default=["grpo", "cures", "cures_tau10", "vade", "reinforce_ada"],
                    help=f"of {list(RUNS)}, each optionally suffixed @population")
    args = ap.parse_args()
    set_threads(1)
    logging.basicConfig(level=logging.WARNING)
    prompts = build_prompt_sets({"source": "arithmetic", "arithmetic": {"digits": [1, 2], "n_ops": [1, 2]},
                                 "sizes": {"warmstart": 3000, "pool": args.pool, "heldout": args.heldout}}, 0)
    cfg = {"budget": {"iterations": args.iterations, "rollouts_per_iteration": args.budget},
           "grpo": {"lr": args.lr, "kl_coef": 0.01, "clip_eps": 0.2, "temperature": 1.0, "ppo_epochs": 1,
                    "minibatch_size": 256},
           "eval": {"every": 1}, "runs": {k: RUNS[k.split("@")[0]] for k in args.runs}}
    curves = []
    timing: dict[str, float] = {}
    for seed in args.seeds:
        seed_everything(seed)
        t0 = time.time()
        pol = new_policy(prompts, {"kind": "tiny_gpt", "tiny_gpt": {"d_model": 64, "n_layer": 2, "n_head": 4}},
                         torch.device("cpu"))
        _, q, a = split_lists(prompts, "warmstart")
        hist = warm_start(pol, q, a, {"steps": args.warm_steps, "target_accuracy": args.warm_target,
                                      "eval_every": 50, "lr": 3e-3}, seed)
        print(f"seed {seed}: warm start {hist[-1]['step']} steps, probe accuracy {hist[-1]['probe_accuracy']:.3f} "
              f"({time.time() - t0:.0f}s)", flush=True)
        start = copy.deepcopy(pol.checkpoint())
        for run in args.runs:
            t0 = time.time()
            policy = load_policy(start, torch.device("cpu"))
            std = "population" if run.endswith("@population") else "unbiased"
            metrics, _ = run_rl(policy, prompts, {**cfg, "grpo": {**cfg["grpo"], "std": std}}, run, seed)
            timing[run] = timing.get(run, 0.0) + time.time() - t0
            acc = metrics.filter(pl.col("metric") == "accuracy").select("selection", "seed", "rollouts", "value")
            curves.append(acc)
            print(f"  {run:14s} final held-out accuracy {acc['value'][-1]:.3f} (start {acc['value'][0]:.3f}, "
                  f"{time.time() - t0:.0f}s)", flush=True)
    df = pl.concat(curves)
    summary = summarize(df, "grpo" if "grpo" in args.runs else args.runs[0])
    print("\nheld-out accuracy vs rollouts consumed (mean over seeds):")
    mean = df.group_by("selection", "rollouts").agg(pl.col("value").mean()).sort("rollouts")
    grid = sorted(set(mean["rollouts"].to_list()))
    marks = grid[:: max(1, len(grid) // 6)] + ([grid[-1]] if grid[-1] not in grid[:: max(1, len(grid) // 6)] else [])
    print("rollouts".ljust(16) + "".join(f"{m:>8d}" for m in marks))
    for run in args.runs:
        row = mean.filter(pl.col("selection") == run)
        vals = dict(zip(row["rollouts"].to_list(), row["value"].to_list()))
        print(run.ljust(16) + "".join(f"{vals.get(m, float('nan')):8.3f}" for m in marks))
    print("\nper method (mean ± std over seeds):")
    for run in args.runs:
        s = summary[run]
        print(f"  {run:14s} final {s['final_mean']:.3f} ± {s['final_std']:.3f}   AUC {s['auc_mean']:.3f}   "
              f"rollouts to first reach GRPO's final accuracy {s['rollouts_to_baseline_final']} "
              f"({s['seeds_reaching_baseline']}/{len(args.seeds)} seeds)   time {timing[run]:.0f}s")
    out = {"seeds": args.seeds, "iterations": args.iterations, "rollouts_per_iteration": args.budget,
           "total_rollouts": args.iterations * args.budget, **summary}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
