"""CurES report: held-out accuracy against rollouts consumed, the difficulty (p̂) distribution over iterations, and a
summary of final accuracy and rollouts-to-reach-GRPO per curriculum."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from datasel.store import PathLike, atomic_path, read_table

log = logging.getLogger(__name__)


def accuracy_curves(metrics: pl.DataFrame) -> pl.DataFrame:
    """selection, seed, rollouts, value of the held-out accuracy rows."""
    return metrics.filter(pl.col("metric") == "accuracy").select("selection", "seed", "rollouts", "value")


def summarize(acc: pl.DataFrame, baseline: str = "grpo") -> dict[str, dict[str, Any]]:
    """Per run: final accuracy (mean, std, per seed), normalized area under the accuracy-vs-rollouts curve, the
    rollouts needed to reach the baseline's final accuracy of the same seed (mean over seeds; None if never), and the
    speed-up: the baseline's own rollouts to that accuracy over this run's (1.0 for the baseline; the paper's
    "faster convergence"). The baseline may reach its final accuracy before its last iteration, so its own count,
    not the budget, is the reference."""
    base = {s: g.sort("rollouts")["value"][-1] for (s,), g in acc.filter(pl.col("selection") == baseline).group_by("seed")}
    runs: dict[str, dict[str, Any]] = {}
    for (run,), part in sorted(acc.group_by("selection"), key=lambda kv: kv[0][0]):
        finals, aucs, reach = [], [], []
        for (seed,), g in sorted(part.group_by("seed"), key=lambda kv: kv[0][0]):
            g = g.sort("rollouts")
            x, y = np.asarray(g["rollouts"], dtype=float), np.asarray(g["value"], dtype=float)
            finals.append(float(y[-1]))
            aucs.append(float(np.trapezoid(y, x) / max(x[-1] - x[0], 1.0)))
            if seed in base:
                hit = np.nonzero(y >= base[seed] - 1e-9)[0]
                reach.append(float(x[hit[0]]) if len(hit) else float("inf"))
        r = float(np.mean(reach)) if reach and np.all(np.isfinite(reach)) else None
        runs[run] = {
            "final_mean": float(np.mean(finals)), "final_std": float(np.std(finals)), "finals": finals,
            "auc_mean": float(np.mean(aucs)), "rollouts_to_baseline_final": r,
            "seeds_reaching_baseline": int(np.sum(np.isfinite(reach))) if reach else 0,
        }
    own = runs.get(baseline, {}).get("rollouts_to_baseline_final")
    for s in runs.values():
        r = s["rollouts_to_baseline_final"]
        s["speedup_vs_baseline"] = round(own / r, 2) if own and r else None
    return runs


def saturation(metrics: pl.DataFrame) -> dict[str, float]:
    """Per run: the share of all its rollouts spent on prompts whose rollouts of that iteration were all right or all
    wrong (the ``saturated_share`` rows, weighted by the rollouts each iteration spent; NaN rows skipped)."""
    rows = metrics.filter(pl.col("metric") == "saturated_share")
    if rows.is_empty():  # a run that records no share (and a table from before the metric) has no iteration column
        return {}
    rows = rows.sort("selection", "seed", "iteration").with_columns(
        pl.col("rollouts").diff().over("selection", "seed").fill_null(pl.col("rollouts")).alias("spent")
    ).filter(pl.col("value").is_not_nan())
    if rows.is_empty():
        return {}
    agg = rows.group_by("selection").agg(((pl.col("value") * pl.col("spent")).sum() / pl.col("spent").sum()).alias("s"))
    return {r["selection"]: float(r["s"]) for r in agg.iter_rows(named=True)}


def plot_accuracy(acc: pl.DataFrame, path: str | Path) -> None:
    """Each seed's curve (thin) and the mean over seeds (thick, ± std). A curriculum that drops prompts spends a
    different number of rollouts per seed by the same evaluation, so the mean is taken per evaluation (the k-th of
    every seed, which fall on the same iteration), at the seeds' mean rollouts, not per rollout count."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, ((run,), part) in enumerate(sorted(acc.group_by("selection"), key=lambda kv: kv[0][0])):
        color = f"C{i}"
        seeds = [g.sort("rollouts") for _, g in sorted(part.group_by("seed"), key=lambda kv: kv[0][0])]
        for g in seeds:
            ax.plot(g["rollouts"], g["value"], color=color, lw=0.8, alpha=0.35)
        k = min(len(g) for g in seeds)
        xs = np.array([g["rollouts"].to_numpy()[:k] for g in seeds], dtype=float)
        ys = np.array([g["value"].to_numpy()[:k] for g in seeds], dtype=float)
        x, y, sd = xs.mean(0), ys.mean(0), ys.std(0)
        ax.plot(x, y, color=color, lw=2, label=f"{run} ({len(seeds)} seeds)")
        ax.fill_between(x, y - sd, y + sd, color=color, alpha=0.12)
    ax.set_xlabel("rollouts consumed")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title("accuracy vs rollouts: each seed, and the mean ± std per evaluation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_difficulty(stats: pl.DataFrame, path: str | Path, bins: int = 10) -> None:
    """Per run: top, the pool's p̂ distribution per iteration; bottom, the share of rollouts spent per p̂ bin."""
    stats = stats.with_columns(pl.col("run").str.replace(r"_seed\d+$", "").alias("curriculum"))
    runs = sorted(stats["curriculum"].unique().to_list())
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 5.5), squeeze=False, sharey=True)
    edges = np.linspace(0, 1, bins + 1)
    for j, run in enumerate(runs):
        part = stats.filter(pl.col("curriculum") == run)
        iters = sorted(part["iteration"].unique().to_list())
        pool = np.zeros((bins, len(iters)))
        spent = np.zeros((bins, len(iters)))
        for k, it in enumerate(iters):
            p = part.filter(pl.col("iteration") == it)
            ph, r = p["p_hat"].to_numpy(), p["rollouts"].to_numpy().astype(float)
            pool[:, k] = np.histogram(ph, edges)[0] / max(len(ph), 1)
            spent[:, k] = np.histogram(ph, edges, weights=r)[0] / max(r.sum(), 1)
        for row, (mat, what) in enumerate(((pool, "pool share"), (spent, "rollout share"))):
            ax = axes[row, j]
            im = ax.imshow(mat, origin="lower", aspect="auto", extent=(iters[0] - 0.5, iters[-1] + 0.5, 0, 1),
                           cmap="viridis", vmin=0)
            ax.set_title(f"{run}: {what}", fontsize=8)
            ax.set_xlabel("iteration")
            if j == 0:
                ax.set_ylabel("posterior p̂")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def report_step(metrics: Sequence[PathLike], prompt_stats: Sequence[PathLike], *, accuracy: PathLike,
                difficulty: PathLike, summary: PathLike) -> None:
    """rule cures_report: metrics + prompt_stats tables → two plots (``accuracy``, ``difficulty``) and ``summary``
    (JSON, with each run's share of rollouts spent on saturated prompts)."""
    metrics_df = pl.concat([read_table(p, "metrics") for p in metrics], how="diagonal_relaxed")
    stats = pl.concat([read_table(p, "prompt_stats") for p in prompt_stats], how="diagonal_relaxed")
    acc = accuracy_curves(metrics_df)
    plot_accuracy(acc, accuracy)
    plot_difficulty(stats, difficulty)
    runs = summarize(acc, "grpo" if "grpo" in acc["selection"].to_list() else acc["selection"][0])
    for run, share in saturation(metrics_df).items():
        if run in runs:
            runs[run]["saturated_rollout_share"] = share
    with atomic_path(summary) as tmp:
        Path(tmp).write_text(json.dumps(runs, indent=1))
    for run, s in runs.items():
        log.info("%s: final held-out accuracy %.3f ± %.3f, rollouts to baseline's final %s, rollouts on saturated "
                 "prompts %s", run, s["final_mean"], s["final_std"], s["rollouts_to_baseline_final"],
                 s.get("saturated_rollout_share"))
