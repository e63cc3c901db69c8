"""LESS's preconditioning before and after the fix, on a toy: Spearman correlation with LESS's own definition.

LESS (official ``collect_grad_reps.py`` / ``matching.py``): pool gradients → ``m'/sqrt(v'+eps)`` with the saved
Adam moments; target gradients plain; cosine; lr-weighted checkpoint sum; mean per target task, max over tasks.
"before" is datasel's earlier ``precondition: adam``: both splits preconditioned, ``m'/(sqrt(v')+eps)``, max over
single target rows. "after" is the feature store and ``target_alignment`` as they are now (``reduce: task_max``).

    python benchmarks/less_precondition.py [--pool 200] [--target 30] [--eps 1e-8]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import polars as pl
import torch
from scipy.stats import spearmanr
from torch import nn

os.environ.setdefault("DATASEL_PROGRESS", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--target", type=int, default=30)
    ap.add_argument("--eps", type=float, default=1e-8)
    args = ap.parse_args()
    from datasel.data.prepare import build_examples
    from datasel.features.index import unit_rows
    from datasel.features.projectors import AdamPreconditioner
    from datasel.tasks import make_task

    torch.manual_seed(0)
    df, meta = build_examples({"source": "mnist1d", "mnist1d": {"num_samples": 2000, "seed": 3}})
    train = df.filter(pl.col("split") == "train").sort("example_id").head(args.pool)
    val = df.filter(pl.col("split") == "val").sort("example_id").head(args.target)
    tasks = np.arange(args.target) % 3
    small = pl.concat([train, val])
    task = make_task(small, meta, {"name": "mlp", "hidden": [16]})
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, eps=args.eps)
    tr, va = task.split("train"), task.split("val")

    def grads(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(len(y)):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
            rows.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
        return torch.stack(rows).double()

    less = before = after = 0.0
    for _epoch, lr in ((1, 0.01), (2, 0.005), (3, 0.001)):
        for s in range(0, args.pool, 20):
            opt.zero_grad()
            nn.functional.cross_entropy(model(tr.inputs[s:s + 20]), tr.labels[s:s + 20]).backward()
            opt.step()
        st = opt.state_dict()["state"]
        m = torch.cat([st[k]["exp_avg"].reshape(-1) for k in range(len(st))]).double()
        v = torch.cat([st[k]["exp_avg_sq"].reshape(-1) for k in range(len(st))]).double()
        g_pool, g_tgt = grads(tr.inputs, tr.labels), grads(va.inputs, va.labels)

        def adam(g: torch.Tensor, inside: bool, m: torch.Tensor = m, v: torch.Tensor = v) -> torch.Tensor:
            m2, v2 = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            return m2 / (v2 + args.eps).sqrt() if inside else m2 / (v2.sqrt() + args.eps)

        def cos(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
            return unit_rows(a.numpy()).astype(np.float64) @ unit_rows(b.numpy()).astype(np.float64).T

        less = less + lr * cos(adam(g_pool, True), g_tgt)
        before = before + lr * cos(adam(g_pool, False), adam(g_tgt, False)).max(1)
        now = AdamPreconditioner(m.float(), v.float(), (0.9, 0.999), args.eps)
        after = after + lr * cos(now(g_pool.float()).double(), g_tgt)
    ref = np.stack([less[:, tasks == t].mean(1) for t in range(3)], 1).max(1)
    new = np.stack([after[:, tasks == t].mean(1) for t in range(3)], 1).max(1)
    print(f"pool {args.pool}, target {args.target} (3 tasks), 3 checkpoints, eps {args.eps:g}")
    print(f"Spearman vs LESS: before (both preconditioned, eps outside, max) {spearmanr(before, ref)[0]:+.3f}; "
          f"after {spearmanr(new, ref)[0]:+.3f}")


if __name__ == "__main__":
    main()
