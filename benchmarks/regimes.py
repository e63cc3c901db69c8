"""The crossover between data regimes: margin over random against kept fraction, per label-noise level,
for the data-scarce grid (config/experiments/quality.yaml, 10,000 samples) beside the data-rich one
(config/experiments/quality_rich.yaml, 100,000 samples), and the regime goals checked on the numbers.

    python benchmarks/regimes.py --run scarce=results --run rich=rich/results --out regimes.png

Each ``--run NAME=RESULTS`` names a results folder whose quality grid has run (``quality/report/margins.csv`` and
the metrics tables). Prints, per regime and noise level: the best score-based selection at 50% kept against random
and full data (Welch 95% intervals), whether some filtered or pruned subset reaches the full noisy set's accuracy,
and the best datasel score's noise AUROC against cleanlab's; ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from datasel.report.plots import save_figure
from datasel.report.quality import welch_ci
from datasel.report.subsets import noise_detection
from datasel.store import read_table


def load_run(results: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict[float, pl.DataFrame]]:
    """(margins, test accuracy per selection/seed, noise detection per noise level) of one results folder."""
    marg = pl.read_csv(results / "quality/report/margins.csv")
    acc, detect = [], {}
    for run in sorted((results / "quality").glob("noise*")):
        noise = int(run.name.removeprefix("noise")) / 100
        files = sorted(run.glob("metrics/train/*/seed*.parquet"))
        m = pl.concat([read_table(p, "metrics") for p in files], how="diagonal_relaxed")
        acc.append(m.filter((pl.col("split") == "test") & (pl.col("metric") == "accuracy"))
                   .with_columns(pl.lit(noise).alias("noise")))
        if noise > 0:
            ex = read_table(run / "examples/examples.parquet", "examples")
            detect[noise] = noise_detection(ex, {p.stem: read_table(p, "scores") for p in run.glob("scores/*.parquet")})
    return marg, pl.concat(acc, how="diagonal_relaxed"), detect


def goals(name: str, acc: pl.DataFrame, detect: dict[float, pl.DataFrame]) -> list[dict]:
    out = []
    for noise in sorted(acc.get_column("noise").unique().to_list()):
        part = acc.filter(pl.col("noise") == noise)
        full = part.filter(pl.col("method") == "full").get_column("value").to_numpy()
        rand = part.filter((pl.col("method") == "random") & (pl.col("fraction") == 0.5)).get_column("value").to_numpy()
        half = part.filter((pl.col("fraction") == 0.5) & ~pl.col("method").is_in(["random", "full"]))
        row = {"regime": name, "noise": noise, "full": float(full.mean()) if len(full) else None}
        if half.height and len(full):
            best = half.group_by("method").agg(pl.col("value").mean()).sort("value", descending=True).item(0, "method")
            vals = half.filter(pl.col("method") == best).get_column("value").to_numpy()
            d_full, lo_f, hi_f = welch_ci(vals, full)
            d_rand, lo_r, _ = welch_ci(vals, rand) if len(rand) else (float("nan"),) * 3
            row.update(best_50=best, best_50_acc=float(vals.mean()), vs_full=[d_full, lo_f, hi_f],
                       within_full=bool(lo_f <= 0 <= hi_f or d_full >= 0), vs_random=d_rand,
                       beats_random=bool(lo_r > 0))
        subsets = part.filter(pl.col("method") != "full").group_by("method", "fraction").agg(pl.col("value").mean())
        top = subsets.sort("value", descending=True).row(0, named=True) if subsets.height else None
        if top and len(full):
            row.update(best_subset=f"{top['method']}@{top['fraction']:.0%}", best_subset_acc=top["value"],
                       reaches_full=bool(top["value"] >= full.mean()))
        d = detect.get(noise)
        if d is not None and d.height:
            ours = d.filter(pl.col("score") != "cleanlab")
            ref = d.filter(pl.col("score") == "cleanlab")
            if ours.height:
                row.update(best_score=ours.item(0, "score"), best_auroc=ours.item(0, "auroc"))
            if ref.height:
                row.update(cleanlab_auroc=ref.item(0, "auroc"),
                           at_least_cleanlab=bool(ours.height and ours.item(0, "auroc") >= ref.item(0, "auroc")))
        out.append(row)
    return out


def plot(runs: dict[str, pl.DataFrame], out: Path) -> None:
    noises = sorted({n for m in runs.values() for n in m.get_column("noise").unique().to_list()})
    fig, axes = plt.subplots(len(runs), len(noises), figsize=(6 * len(noises), 4 * len(runs)), squeeze=False)
    for r, (name, marg) in enumerate(runs.items()):
        for c, noise in enumerate(noises):
            ax = axes[r][c]
            part = marg.filter(pl.col("noise") == noise)
            for method in sorted(part.get_column("method").unique().to_list()):
                p = part.filter(pl.col("method") == method).sort("fraction")
                m = 100 * p.get_column("margin").to_numpy()
                err = np.nan_to_num(np.vstack([m - 100 * p.get_column("ci_low").to_numpy(),
                                               100 * p.get_column("ci_high").to_numpy() - m]))
                ax.errorbar(p.get_column("fraction").to_numpy(), m, yerr=err, marker="o", capsize=2, label=method)
            ax.axhline(0, color="black")
            ax.set_title(f"{name}, label noise {noise:.0%}")
            ax.set_xlabel("kept fraction")
            ax.set_ylabel("margin over random (points)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
    save_figure(fig, out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="NAME=RESULTS_FOLDER (repeat per regime)")
    ap.add_argument("--out", type=Path, default=Path("regimes.png"))
    args = ap.parse_args()
    margins, rows = {}, []
    for spec in args.run:
        name, _, folder = spec.partition("=")
        marg, acc, detect = load_run(Path(folder))
        margins[name] = marg
        rows += goals(name, acc, detect)
    plot(margins, args.out)
    for row in rows:
        print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"plot: {args.out}")
    print(json.dumps(rows, default=float))


if __name__ == "__main__":
    main()
