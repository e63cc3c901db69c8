"""Matplotlib figures for the report (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

from datasel.store import atomic_path


def save_figure(fig: plt.Figure, out: str | Path, dpi: int = 120) -> None:
    """Lay out, write atomically as PNG, and free the figure."""
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def accuracy_vs_fraction(table: pl.DataFrame, out: Path, full: pl.DataFrame | None = None,
                         metric: str = "accuracy", measure: str = "test accuracy of the target model") -> None:
    """One line per method (mean ± std band over seeds); full data as a horizontal reference; ``measure`` names
    what the metric is (the title's words, as in the summary's title).

    The legend lists methods best first (mean over kept fractions), random drawn in black as the bar to clear.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    mean, std = f"{metric}_mean", f"{metric}_std"
    order = (table.filter(pl.col("fraction") < 1).group_by("method").agg(pl.col(mean).mean())
             .sort([mean, "method"], descending=[True, False]).get_column("method").to_list())
    for method in order:
        part = table.filter((pl.col("method") == method) & (pl.col("fraction") < 1)).sort("fraction")
        if part.height == 0:
            continue
        # percent, the unit of every table of the report
        f, m, s = (100 * part.get_column(c).to_numpy() for c in ("fraction", mean, std))
        rand = method == "random"
        # error bars too: a method run at one kept fraction has no band to show its spread
        ax.errorbar(f, m, yerr=s, marker="o", capsize=3, label=method, color="black" if rand else None,
                    lw=2 if rand else 1.5)
        ax.fill_between(f, m - s, m + s, alpha=0.15, color="black" if rand else None)
    if full is not None and full.height:
        m, s = 100 * full.get_column(mean).item(0), 100 * full.get_column(std).item(0)
        ax.axhline(m, color="black", ls="--", lw=1, label="full data")
        ax.axhspan(m - s, m + s, color="black", alpha=0.07)
    ax.set_xlabel("kept fraction of the training set (%)")
    ax.set_ylabel(f"{measure.split(' of ')[0]} (%)")
    ax.set_title(f"{measure[0].upper()}{measure[1:]} vs kept fraction (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save_figure(fig, out)


def noise_share_bars(table: pl.DataFrame, out: Path, base_rate: float) -> None:
    """Share of injected noisy labels among the dropped examples, per selection, against the base rate.

    Drawn only when noise was injected (the report rule declares it then): without it every bar is zero. Bars are
    grouped by kept fraction, highest share first within each.
    """
    part = (table.filter(pl.col("fraction") < 1).drop_nulls("noisy_share_of_dropped")
            .sort(["fraction", "noisy_share_of_dropped", "method"], descending=[False, True, False]))
    fig, ax = plt.subplots(figsize=(8, 0.3 * max(4, part.height) + 1))
    labels = part.get_column("selection").to_list()
    ax.barh(range(part.height), 100 * part.get_column("noisy_share_of_dropped").to_numpy())
    ax.axvline(100 * base_rate, color="red", ls="--", label=f"base rate {base_rate:.0%}")
    ax.set_yticks(range(part.height), labels, fontsize=7)
    ax.invert_yaxis()  # first row on top
    ax.set_xlabel("share of injected noisy labels among dropped examples (%)")
    ax.set_title("Injected label noise among the examples each selection dropped")
    ax.legend()
    save_figure(fig, out)
