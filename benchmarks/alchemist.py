"""Alchemist benchmark: test accuracy of target models trained on Alchemist subsets against top-k, random and full
data, on noisy MNIST-1D (the default experiment) and noisy scikit-learn digits, over several seeds.

For each dataset (config/experiments/alchemist_<name>.yaml, as the workflow loads it):
  1. build the examples table, train one proxy run as the pipeline does and keep its checkpoint at the scoring epoch;
  2. rate every training example with the Alchemist scorer (with and without the group MLP: the ablation);
  3. select 50% and 20% with Shift-Gsampling, top-k (both on the Alchemist score) and random; plus full data;
  4. train the configured target model on each subset for every seed, same step budget; report test accuracy.
Also: the rating cost (feature extraction + one forward pass of the rater, seconds per 10k examples) and the one-off
meta-training cost, against the cost of one proxy epoch.

    DATASEL_PROGRESS=0 python benchmarks/alchemist.py                    # full: 3 seeds, configured budgets
    DATASEL_PROGRESS=0 python benchmarks/alchemist.py --train-steps 400  # reduced target-model budget

Prints readable figures and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasel.data.prepare import build_examples  # noqa: E402
from datasel.data.tensors import load_split  # noqa: E402
from datasel.models import build_model  # noqa: E402
from datasel.runtime import seed_everything, set_threads  # noqa: E402
from datasel.scoring import ScoreInputs, finalize_scores  # noqa: E402
from datasel.scoring.alchemist import Alchemist  # noqa: E402
from datasel.selection.make import make_selection  # noqa: E402
from datasel.store import write_table  # noqa: E402
from datasel.training.classify import evaluate, train_classifier  # noqa: E402
from datasel.training.proxy import save_checkpoint  # noqa: E402


def merged_config(experiment: str) -> dict[str, Any]:
    """The experiment's config as the workflow loads it (its `extends:` chain, schema defaults filled)."""
    from datasel.config import check_config, load_config

    path = ROOT / "config" / "experiments" / f"alchemist_{experiment}.yaml"
    return check_config(load_config([path]), ROOT / "workflow" / "schemas")


ARMS = ("alchemist_sg", "alchemist_top", "random", "alchemist_nogroup_sg", "alchemist_sg_strat",
        "alchemist_top_strat")


def run_dataset(name: str, seeds: list[int], train_steps: int | None, work: Path,
                arms_wanted: tuple[str, ...] = ARMS, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = merged_config(name)
    for entry in cfg["alchemist"]["scores"]:  # e.g. warmup / rater_optimizer for a before/after comparison
        cfg["scoring"][entry].update(overrides or {})
    examples, meta = build_examples(cfg["data"])
    ex_path = write_table(examples, work / name / "examples.parquet", "examples")
    x, y, ids = load_split(examples, "train")
    xt, yt, _ = load_split(examples, "test")
    train = examples.filter(pl.col("split") == "train").sort("example_id")
    noisy = dict(zip(train.get_column("example_id").to_list(), train.get_column("is_noisy").to_list()))
    n = x.shape[0]

    # 1. one proxy run, trained as rules/proxy.smk does, checkpointed at the Alchemist scoring epoch
    pcfg = cfg["proxy"]
    epoch = int(cfg["scoring"]["alchemist"]["epoch"])
    seed_everything(1000)
    proxy = build_model(pcfg["model"], meta)
    ckpt = work / name / f"proxy_epoch{epoch}.pt"
    t0 = time.perf_counter()
    train_classifier(proxy, x, y, {**pcfg, "budget": {"unit": "epochs", "value": int(pcfg["epochs"])}}, seed=1000,
                     checkpoint_epochs=(epoch,),
                     on_checkpoint=lambda e, m, *_: save_checkpoint(ckpt, m, model_cfg=pcfg["model"], epoch=e, seed=0))
    proxy_epoch_s = (time.perf_counter() - t0) / int(pcfg["epochs"])

    # 2. ratings (with the group MLP, and the ablation without it)
    scores, cost = {}, {}
    for entry in cfg["alchemist"]["scores"]:
        scorer = Alchemist(cfg["scoring"][entry])
        t0 = time.perf_counter()
        from datasel.scoring import alchemist as alc_mod

        timings: list[dict[str, float]] = []
        orig = alc_mod.alchemist_run

        def timed(*a: Any, _orig: Any = orig, _timings: list = timings, **k: Any) -> Any:
            out = _orig(*a, **k)
            _timings.append(out[2])
            return out

        alc_mod.alchemist_run = timed
        try:
            df = scorer.score(ScoreInputs(examples=ex_path, meta=meta, checkpoints=[ckpt], device="cpu", seed=0))
        finally:
            alc_mod.alchemist_run = orig
        scores[entry] = finalize_scores(df, entry)
        t = timings[0]
        cost[entry] = {"total_s": time.perf_counter() - t0, **t}
    # how much of the injected noise sits in the bottom decile of the rating, and the clean-vs-noisy AUC
    from sklearn.metrics import roc_auc_score

    detect = {}
    for entry, sc in scores.items():
        s = sc.sort("rank")
        is_noisy = np.array([noisy[e] for e in s.get_column("example_id")])
        detect[entry] = {
            "auc_clean_high": float(roc_auc_score(~is_noisy, s.get_column("score").to_numpy())),
            "noise_bottom10": float(is_noisy[-n // 10 :].mean()),
            "noise_top10": float(is_noisy[: n // 10].mean()),
        }

    # 3-4. selections and target models
    tcfg = dict(cfg["training"])
    if train_steps:
        tcfg["budget"] = {"unit": "steps", "value": int(train_steps)}
    pol = cfg["selection"]["policies"]
    arms = {a: pol[a] for a in arms_wanted}
    results: dict[str, dict[str, list[float]]] = {}
    noise_kept: dict[str, dict[str, float]] = {}

    def fit(mask: np.ndarray, seed: int) -> float:
        seed_everything(seed)
        model = build_model(tcfg["model"], meta)
        idx = torch.from_numpy(np.flatnonzero(mask))
        train_classifier(model, x[idx], y[idx], tcfg, seed=seed)
        return evaluate(model, xt, yt)["accuracy"]

    for seed in seeds:
        results.setdefault("full", {}).setdefault("1.0", []).append(fit(np.ones(n, dtype=bool), seed))
    for arm, pcfg_arm in arms.items():
        for frac in (0.5, 0.2):
            for seed in seeds:
                sc = scores.get(pcfg_arm.get("score")) if pcfg_arm.get("score") else None
                # selection seed offset from the noise seed: numpy's draw of k of n rows with the same seed as the
                # noise injection would pick exactly the noisy rows when k equals the noisy count (20% kept, 20%
                # noise)
                sel_seed = int(cfg["selection"]["seed"]) + 100 * (seed + 1)
                sel = make_selection(examples, sc, arm, pcfg_arm, frac, sel_seed)
                mask = sel.sort("example_id").get_column("selected").to_numpy()
                assert sel.sort("example_id").get_column("example_id").to_list() == ids
                results.setdefault(arm, {}).setdefault(str(frac), []).append(fit(mask, seed))
                kept = sel.filter(pl.col("selected")).get_column("example_id").to_list()
                noise_kept.setdefault(arm, {})[str(frac)] = float(np.mean([noisy[e] for e in kept]))
    summary = {
        arm: {f: {"mean": statistics.mean(v), "std": statistics.pstdev(v), "runs": v} for f, v in by.items()}
        for arm, by in results.items()
    }
    per10k = 1e4 / n
    cost_out = {
        entry: {
            "rate_s_per_10k": (c["features_s"] + c["rate_s"]) * per10k,
            "meta_train_s": c["meta_train_s"],
            "scorer_total_s": c["total_s"],
        }
        for entry, c in cost.items()
    }
    return {
        "n_train": n,
        "noise_fraction": float(np.mean(list(noisy.values()))),
        "train_steps": int(tcfg["budget"]["value"]),
        "accuracy": summary,
        "noise_in_subset": noise_kept,
        "detection": detect,
        "cost": cost_out,
        "proxy_epoch_s": proxy_epoch_s,
        "proxy_epoch_s_per_10k": proxy_epoch_s * per10k,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="mnist1d,digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=None, help="override training.budget (steps) to save time")
    ap.add_argument("--work", default="/tmp/datasel_bench_alchemist")
    ap.add_argument("--arms", default=",".join(ARMS), help="policy entries to train on (full data always runs)")
    ap.add_argument("--warmup", choices=["paper", "joint"], help="override the rater's warm-up mode")
    ap.add_argument("--rater-optimizer", choices=["adam", "sgd"], help="override the rater's optimizer")
    ap.add_argument("--rater-lr", type=float, help="override the rater's learning rate")
    args = ap.parse_args()
    os.environ.setdefault("DATASEL_PROGRESS", "0")
    logging.basicConfig(level=logging.WARNING)
    set_threads(1)
    work = Path(args.work)
    overrides = {k: v for k, v in (("warmup", args.warmup), ("rater_optimizer", args.rater_optimizer),
                                   ("rater_lr", args.rater_lr)) if v is not None}
    out: dict[str, Any] = {"seeds": args.seeds, "overrides": overrides}
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        r = run_dataset(name, list(range(args.seeds)), args.train_steps, work, tuple(args.arms.split(",")),
                        overrides)
        r["wall_s"] = time.perf_counter() - t0
        out[name] = r
        print(f"\n== {name}: {r['n_train']} training examples, {r['noise_fraction']:.0%} noisy labels, "
              f"{args.seeds} seeds, {r['train_steps']} target steps ({r['wall_s']:.0f} s)")
        full = r["accuracy"]["full"]["1.0"]
        print(f"  full data                 test acc {full['mean']:.4f} ± {full['std']:.4f}")
        for arm in [a for a in ARMS if a in r["accuracy"]]:
            for frac in ("0.5", "0.2"):
                a = r["accuracy"][arm][frac]
                print(f"  {arm:22s} {float(frac):4.0%}  test acc {a['mean']:.4f} ± {a['std']:.4f}   "
                      f"noisy share kept {r['noise_in_subset'][arm][frac]:.3f}")
        for entry, d in r["detection"].items():
            print(f"  rating {entry:18s} AUC(clean>noisy) {d['auc_clean_high']:.3f}   noisy share: top decile "
                  f"{d['noise_top10']:.3f}, bottom decile {d['noise_bottom10']:.3f}")
        for entry, c in r["cost"].items():
            print(f"  cost {entry:20s} rating {c['rate_s_per_10k']:.3f} s/10k examples; meta-training "
                  f"{c['meta_train_s']:.1f} s once; one proxy epoch {r['proxy_epoch_s']:.2f} s "
                  f"({r['proxy_epoch_s_per_10k']:.2f} s/10k)")
        acc = {a: {f: v["mean"] for f, v in by.items()} for a, by in r["accuracy"].items()}
        claims: dict[str, bool] = {}
        for sg, top in (("alchemist_sg", "alchemist_top"), ("alchemist_sg_strat", "alchemist_top_strat")):
            if sg in acc:
                claims[f"{sg}_50_beats_full"] = acc[sg]["0.5"] > acc["full"]["1.0"]
                print(f"  claim '{sg} 50% beats full data': {claims[f'{sg}_50_beats_full']} "
                      f"({acc[sg]['0.5']:.4f} vs {acc['full']['1.0']:.4f})")
            if sg in acc and top in acc:
                for f in ("0.5", "0.2"):
                    claims[f"{sg}_beats_{top}_{f}"] = acc[sg][f] > acc[top][f]
                    print(f"  claim '{sg} beats {top}' at {float(f):.0%}: {claims[f'{sg}_beats_{top}_{f}']} "
                          f"({acc[sg][f]:.4f} vs {acc[top][f]:.4f})")
        r["claims"] = claims
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
