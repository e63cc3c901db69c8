"""EL2N protocol sweep on the default experiment (config/config.yaml, MNIST-1D with 20% injected label noise).

Which proxy checkpoint and how many proxy runs K should EL2N use? The paper scores at epoch 20 of 200 (10% of the
schedule, at peak learning rate) and recommends K >= 10; the default config scores at epoch 5 of a 10-epoch cosine
run with K = 5. This script trains ``--runs`` proxy runs exactly as the workflow does (config.yaml's proxy block,
seeds 1000 + k), keeps a checkpoint at every epoch in ``--epochs``, and measures for each (epoch, K):
  - the noise AUROC: how well the EL2N score ranks the injected noisy labels above the clean ones;
  - the offset policy (drop the top ``offset`` share, keep the next fraction) at ``--fraction``: noisy share kept and
    the test accuracy of the configured target model trained on it (mean over ``--target-seeds``), for the (epoch, K)
    pairs in ``--train-at``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/el2n_protocol.py            # defaults: ~15 min on one core

Prints a table and ends with one JSON line.
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
from datasel.scoring import finalize_scores  # noqa: E402
from datasel.scoring.el2n import el2n  # noqa: E402
from datasel.selection.make import make_selection  # noqa: E402
from datasel.training.classify import evaluate, train_classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="proxy runs trained (K values are prefixes of these)")
    ap.add_argument("--epochs", default="1,2,3,5,10", help="proxy checkpoints scored")
    ap.add_argument("--ks", default="1,3,5,10")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--offset", type=float, default=0.3)
    ap.add_argument("--train-at", default="5:5,1:10,2:10,3:10,5:10",
                    help="epoch:K pairs whose offset selection trains target models")
    ap.add_argument("--target-seeds", type=int, default=2)
    ap.add_argument("--target-steps", type=int, default=None, help="override training.budget (steps)")
    ap.add_argument("--stop-early", action="store_true",
                    help="end each proxy run at the last epoch in --epochs (same schedule, same scores, less time)")
    args = ap.parse_args()
    os.environ.setdefault("DATASEL_PROGRESS", "0")
    logging.basicConfig(level=logging.WARNING)
    set_threads(1)
    from sklearn.metrics import roc_auc_score

    from datasel.config import check_config, load_config

    cfg = check_config(load_config([ROOT / "config" / "config.yaml"]), ROOT / "workflow" / "schemas")
    examples, meta = build_examples(cfg["data"])
    x, y, ids = load_split(examples, "train")
    xt, yt, _ = load_split(examples, "test")
    train = examples.filter(pl.col("split") == "train").sort("example_id")
    is_noisy = train.get_column("is_noisy").to_numpy().astype(bool)
    epochs = [int(e) for e in args.epochs.split(",")]
    ks = [int(k) for k in args.ks.split(",") if int(k) <= args.runs]
    pcfg = cfg["proxy"]
    t0 = time.perf_counter()
    per_run: dict[int, list[torch.Tensor]] = {e: [] for e in epochs}

    class _Done(Exception):
        """Raised after the last wanted checkpoint: the schedule is the full run's, the rest is not needed."""

    def record(e: int, m: torch.nn.Module, *_: object) -> None:
        if e in per_run:
            per_run[e].append(el2n(m, x, y).double())
            m.train()  # el2n's forward left it in eval mode; training resumes in train mode
        if args.stop_early and e == max(epochs):
            raise _Done

    for k in range(args.runs):
        seed_everything(1000 + k)
        model = build_model(pcfg["model"], meta)
        try:
            train_classifier(model, x, y, {**pcfg, "budget": {"unit": "epochs", "value": int(pcfg["epochs"])}},
                             seed=1000 + k, checkpoint_epochs=tuple(epochs), on_checkpoint=record)
        except _Done:
            pass
    t_proxy = time.perf_counter() - t0

    auroc: dict[str, float] = {}
    scores: dict[tuple[int, int], pl.DataFrame] = {}
    for e in epochs:
        for k in ks:
            s = torch.stack(per_run[e][:k]).mean(0).numpy()
            auroc[f"{e}:{k}"] = float(roc_auc_score(is_noisy, s))
            scores[(e, k)] = finalize_scores(pl.DataFrame({"example_id": ids, "score": s}), "el2n")

    print(f"proxy training {t_proxy:.0f}s; noise AUROC by epoch:K {json.dumps(auroc)}", flush=True)
    tcfg = dict(cfg["training"])
    if args.target_steps:
        tcfg["budget"] = {"unit": "steps", "value": int(args.target_steps)}
    pol = {"policy": "offset", "score": "el2n", "offset": args.offset}
    offset: dict[str, dict[str, Any]] = {}
    for pair in [p for p in args.train_at.split(",") if p]:
        e, k = (int(v) for v in pair.split(":"))
        if (e, k) not in scores:
            continue
        sel = make_selection(examples, scores[(e, k)], "el2n_offset", pol, args.fraction, 100)
        mask = sel.sort("example_id").get_column("selected").to_numpy()
        idx = torch.from_numpy(np.flatnonzero(mask))
        accs = []
        for seed in range(args.target_seeds):
            seed_everything(seed)
            model = build_model(tcfg["model"], meta)
            train_classifier(model, x[idx], y[idx], tcfg, seed=seed)
            accs.append(evaluate(model, xt, yt)["accuracy"])
        offset[pair] = {"noise_kept": float(is_noisy[mask].mean()), "acc_mean": statistics.mean(accs),
                        "acc_runs": accs}
        print(f"  offset at {pair}: {offset[pair]}", flush=True)
    wall = time.perf_counter() - t0
    print(f"EL2N protocol on the default experiment: {len(ids)} training examples, {is_noisy.mean():.0%} noisy, "
          f"{args.runs} proxy runs of {pcfg['epochs']} epochs ({pcfg['schedule']}), proxy training {t_proxy:.0f}s")
    print("noise AUROC (EL2N ranks noisy above clean)   rows: epoch, columns: K")
    print("epoch | " + " | ".join(f"K={k}" for k in ks))
    for e in epochs:
        print(f"{e:5d} | " + " | ".join(f"{auroc[f'{e}:{k}']:.4f}" for k in ks))
    print(f"offset policy (offset {args.offset}, keep {args.fraction:.0%}), target {tcfg['budget']}, "
          f"{args.target_seeds} seeds")
    for pair, r in offset.items():
        print(f"  epoch:K {pair:6s} noisy share kept {r['noise_kept']:.4f}  test acc {r['acc_mean']:.4f} "
              f"({', '.join(f'{a:.4f}' for a in r['acc_runs'])})")
    print(json.dumps({"runs": args.runs, "auroc": auroc, "offset": offset, "proxy_s": round(t_proxy, 1),
                      "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
