"""Where does a rating put the injected label noise? A metrics table and a plot for the Alchemist stage.

For each score table: the noisy share of the training examples in each percentile bin of the ranking (0 = highest
score) and the AUC of "clean ranks above noisy". The plot overlays the Shift-Gsampling density of the configured
policy, so a reader sees which band the policy keeps and how much noise that band holds. Rows go to the metrics
table (selection = the score entry, method = 'alchemist_rating', fraction = the bin's upper percentile).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import DataError
from datasel.selection.shift_gsampling import percentiles
from datasel.store import PathLike, atomic_path, read_table, write_table

log = logging.getLogger(__name__)


def auc_clean_high(score: np.ndarray, noisy: np.ndarray) -> float:
    """P(score of a random clean example > score of a random noisy one), ties counted half (Mann–Whitney U)."""
    clean, bad = score[~noisy], score[noisy]
    if not len(clean) or not len(bad):
        return float("nan")
    ranks = pl.Series(np.concatenate([clean, bad])).rank("average").to_numpy()
    u = ranks[: len(clean)].sum() - len(clean) * (len(clean) + 1) / 2
    return float(u / (len(clean) * len(bad)))


def noise_profile(examples: pl.DataFrame, scores: pl.DataFrame, bins: int, source: str = "scores") -> pl.DataFrame:
    """Noisy share per percentile bin of the best-first ranking: columns bin_hi, noisy_share, count."""
    train = examples.filter(pl.col("split") == "train").select("example_id", "is_noisy")
    joined = train.join(scores.select("example_id", "score", "rank"), on="example_id", how="inner").sort("rank")
    if joined.height != train.height:
        raise DataError(f"scores cover {joined.height} of {train.height} training examples", file=source,
                        field="example_id", fix="rerun the scoring step on the current examples table")
    w = percentiles(joined.height).numpy()
    b = np.minimum((w * bins).astype(int), bins - 1)
    return (
        joined.with_columns(pl.Series("bin", b))
        .group_by("bin")
        .agg(pl.col("is_noisy").mean().alias("noisy_share"), pl.len().alias("count"))
        .sort("bin")
        .with_columns(((pl.col("bin") + 1) / bins).alias("bin_hi"))
    )


def run_diagnostics(examples: PathLike, scores: Sequence[PathLike], cfg: dict[str, Any], *, metrics: PathLike,
                    plot: PathLike, policy: dict[str, Any] | None = None) -> None:
    """Metrics table + plot of where each rating puts the label noise: ``scores`` are the tables of the entries
    ``cfg["scores"]`` names (the ``alchemist`` section), in that order; ``policy`` (its Shift-Gsampling entry, if
    any) draws the sampling density over the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policy = policy or {}
    bins = int(cfg.get("bins", 20))
    examples_df = read_table(examples, "examples")
    rows, profiles = [], {}
    for name, path in zip(cfg["scores"], scores):
        table = read_table(path, "scores")
        prof = noise_profile(examples_df, table, bins, str(path))
        profiles[name] = prof
        joined = examples_df.filter(pl.col("split") == "train").join(table, on="example_id")
        auc = auc_clean_high(joined.get_column("score").to_numpy(), joined.get_column("is_noisy").to_numpy())
        log.info("%s: AUC(clean ranks above noisy) = %.3f", name, auc)
        base = {"selection": name, "method": "alchemist_rating", "seed": 0, "split": "train"}
        rows.append({**base, "fraction": 1.0, "metric": "auc_clean_high", "value": auc})
        rows += [{**base, "fraction": float(r["bin_hi"]), "metric": "noisy_share", "value": float(r["noisy_share"])}
                 for r in prof.iter_rows(named=True)]
    write_table(pl.DataFrame(rows), metrics, "metrics")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, prof in profiles.items():
        hi = prof.get_column("bin_hi").to_numpy()
        ax.stairs(prof.get_column("noisy_share").to_numpy(), np.concatenate([[hi[0] - 1.0 / bins], hi]),
                  label=f"{name}: noisy share", linewidth=1.8)
    noise = float(examples_df.filter(pl.col("split") == "train").get_column("is_noisy").mean())
    ax.axhline(noise, color="grey", ls=":", label=f"overall noise {noise:.0%}")
    ax.set_xlabel("percentile of the rating (0 = highest score)")
    ax.set_ylabel("share of injected noisy labels")
    if policy.get("policy") == "shift_gsampling":
        drop, mu = float(policy.get("drop_top", 0.1)), float(policy.get("mu", 0.5))
        sigma = float(policy.get("sigma", 0.15))
        grid = np.linspace(0, 1, 400)
        dens = np.exp(-((grid - mu) ** 2) / (2 * sigma**2)) * (grid >= drop)
        ax2 = ax.twinx()
        ax2.fill_between(grid, dens / dens.max(), alpha=0.15, color="C3", label="Shift-Gsampling density")
        ax2.set_ylim(0, 1.05)
        ax2.set_yticks([])
        ax2.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Where the rating puts the label noise")
    fig.tight_layout()
    with atomic_path(plot) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
