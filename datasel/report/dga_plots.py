"""Plots for the DGA stage: the domain-weight (α) trajectories and the specific-set loss curves per strategy."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

from datasel.store import atomic_path


def plot_weight_trajectories(weights: pl.DataFrame, path: str | os.PathLike, title: str = "DGA domain weights",
                             top: int = 12) -> None:
    """One line per domain (the ``top`` heaviest at the end when there are many), weight against step."""
    runs = weights.get_column("run").unique().sort().to_list()
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], runs):
        w = weights.filter(pl.col("run") == run)
        last = w.filter(pl.col("step") == w["step"].max()).sort("weight", descending=True)
        for dom in last.get_column("domain").head(top).to_list():
            d = w.filter(pl.col("domain") == dom).sort("step")
            ax.plot(d["step"].to_list(), d["weight"].to_list(), label=dom)
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("α (domain weight)")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_loss_curves(curves: pl.DataFrame, path: str | os.PathLike, strategies: Sequence[str] | None = None) -> None:
    """Specific-set loss against step, mean over seeds, one line per strategy (``strategy, seed, step, loss``)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    mean = curves.group_by("strategy", "step").agg(pl.col("loss").mean()).sort("step")
    for s in strategies or mean.get_column("strategy").unique().sort().to_list():
        d = mean.filter(pl.col("strategy") == s)
        ax.plot(d["step"].to_list(), d["loss"].to_list(), label=s)
    ax.set_xlabel("step")
    ax.set_ylabel("specific-set loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
