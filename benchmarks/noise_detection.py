"""Noise detection on MNIST-1D with injected label noise: AUROC and average precision of EL2N, loss, AUM and
forgetting events (from K proxy runs) against cleanlab (out-of-fold proxies), all on the same data and recipe.

    DATASEL_PROGRESS=0 python benchmarks/noise_detection.py                       # 10,000 samples, 20% noise
    DATASEL_PROGRESS=0 python benchmarks/noise_detection.py --samples 3000 --seeds 2 --epochs 6 --folds 3

Everything goes through the library the workflow runs (datasel.training.dynamics, datasel.scoring.dynamics,
datasel.scoring.cleanlab_cv, datasel.report.subsets); nothing is written. Prints the table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import polars as pl
import torch

from datasel.data.prepare import build_examples
from datasel.report.subsets import noise_detection
from datasel.runtime import seed_everything
from datasel.scoring.dynamics import area_under_margin, forgetting_events
from datasel.scoring.el2n import el2n
from datasel.tasks import make_task
from datasel.tasks.base import per_example_cross_entropy
from datasel.training.classify import logits_of, train_classifier
from datasel.training.dynamics import EpochRecorder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--seeds", type=int, default=5, help="proxy runs K")
    ap.add_argument("--epochs", type=int, default=10, help="proxy epochs (EL2N/loss at the middle one)")
    ap.add_argument("--folds", type=int, default=5, help="cleanlab cross-validation folds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = {"source": "mnist1d", "mnist1d": {"num_samples": args.samples, "seed": 42},
            "splits": {"val": 0.1, "test": 0.2, "seed": 0}, "noise": {"fraction": args.noise, "seed": 0}}
    examples, meta = build_examples(data)
    proxy = {"model": {"name": "cnn1d", "channels": 32}, "epochs": args.epochs, "batch_size": 128,
             "optimizer": "adam", "lr": 0.003, "schedule": "cosine"}
    task = make_task(examples, meta, proxy["model"])
    train = task.split("train")
    mid = max(1, args.epochs // 2)
    stats: dict[str, list[np.ndarray]] = {"el2n": [], "loss": [], "aum": [], "forgetting": []}
    for seed in range(args.seeds):
        seed_everything(1000 + seed)
        model = task.build_model("proxy.model")
        rec = EpochRecorder(len(train), args.epochs)

        def at_mid(epoch: int, m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
            stats["el2n"].append(el2n(m, train.inputs, train.labels).double().numpy())
            stats["loss"].append(per_example_cross_entropy(logits_of(m, train.inputs), train.labels).double().numpy())
            m.train()

        train_classifier(model, train.inputs, train.labels, {**proxy, "budget": {"unit": "epochs",
                         "value": args.epochs}}, seed=1000 + seed, checkpoint_epochs=(mid,), on_checkpoint=at_mid,
                         on_batch=rec)
        stats["aum"].append(-area_under_margin(rec.margin.T))
        stats["forgetting"].append(forgetting_events(rec.correct.T))
    t_proxy = time.perf_counter() - t0
    tables = {k: pl.DataFrame({"example_id": list(train.ids), "score": np.mean(v, 0)}) for k, v in stats.items()}
    from datasel.scoring.cleanlab_cv import import_cleanlab, out_of_fold_probs

    cleanlab = import_cleanlab()
    probs = out_of_fold_probs(task, proxy, args.folds, 0)
    labels = train.labels.numpy()
    issues = cleanlab.filter.find_label_issues(labels, probs)
    tables["cleanlab"] = pl.DataFrame({"example_id": list(train.ids),
                                       "score": 1 - cleanlab.rank.get_label_quality_scores(labels, probs),
                                       "label_issue": issues})
    t_all = time.perf_counter() - t0
    from datasel.selection.filter import mixture_noise_rate

    # the noise rate the filter policy would estimate from each score (rate: auto), against the true rate
    rates = {k: (float(t.get_column("label_issue").mean()) if "label_issue" in t.columns
                 else mixture_noise_rate(t.get_column("score").to_numpy())[0]) for k, t in tables.items()}
    det = noise_detection(examples, tables).with_columns(
        pl.col("score").replace_strict(rates, default=None, return_dtype=pl.Float64).alias("estimated_rate"))
    print(f"MNIST-1D {args.samples} samples ({len(train)} training), {args.noise:.0%} label noise; "
          f"{args.seeds} proxy runs × {args.epochs} epochs, cleanlab {args.folds} folds; "
          f"proxies {t_proxy:.0f} s, total {t_all:.0f} s")
    print(det)
    print(json.dumps({"args": vars(args), "seconds": round(t_all, 1), "rows": det.to_dicts()}))


if __name__ == "__main__":
    main()
