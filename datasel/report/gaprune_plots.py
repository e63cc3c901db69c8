"""GAPrune figure: retrieval quality against sparsity per pruning method, one-shot and after retraining."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def plot_gaprune(metrics: pl.DataFrame, out: str | Path, metric: str = "ndcg@10") -> Path:
    """One panel per eval split (domain, general); solid = after retraining, dashed = one-shot; dense as lines."""
    from datasel.report.plots import plt, save_figure  # Agg backend, atomic PNG writes

    df = metrics.filter(pl.col("metric") == metric).with_columns(
        pl.col("selection").str.split("_").list.last().alias("stage")
    )
    splits = sorted(df.get_column("split").unique().to_list()) or ["domain"]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        part = df.filter(pl.col("split") == split)
        dense = part.filter(pl.col("method") == "dense")
        for row in dense.iter_rows(named=True):
            ax.axhline(row["value"], color="black", ls="-" if row["stage"] == "retrained" else "--", lw=1,
                       label=f"dense ({row['stage']})")
        methods = sorted(m for m in part.get_column("method").unique().to_list() if m != "dense")
        for i, m in enumerate(methods):
            for stage, ls, mk, fill in (("oneshot", "--", "o", "none"), ("retrained", "-", "s", f"C{i}")):
                d = part.filter((pl.col("method") == m) & (pl.col("stage") == stage)).sort("fraction")
                if d.height:
                    ax.plot(d["fraction"], d["value"], ls=ls, marker=mk, mfc=fill, color=f"C{i}",
                            label=f"{m} ({stage})")
        ax.set_title(f"{split} retrieval")
        ax.set_xlabel("sparsity of the candidate tensors")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    save_figure(fig, out)
    return Path(out)
