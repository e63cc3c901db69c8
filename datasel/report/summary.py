"""The selection summary: method × kept fraction → test accuracy (mean ± std over seeds) and how much of the
injected label noise each selection dropped."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def noise_dropped(examples: pl.DataFrame, selections: pl.DataFrame) -> pl.DataFrame:
    """Per selection: how many rows it dropped, the share of those that carry an injected noisy label, and the
    share of all noisy labels it removed (recall)."""
    train = examples.filter(pl.col("split") == "train").select("example_id", "is_noisy")
    joined = selections.join(train, on="example_id", how="inner")
    return joined.group_by("selection").agg(
        (~pl.col("selected")).sum().alias("dropped"),
        (pl.col("is_noisy") & ~pl.col("selected")).sum().alias("noisy_dropped"),
        pl.col("is_noisy").sum().alias("noisy_total"),
    ).with_columns(
        (pl.col("noisy_dropped") / pl.col("dropped").clip(lower_bound=1)).alias("noisy_share_of_dropped"),
        (pl.col("noisy_dropped") / pl.col("noisy_total").clip(lower_bound=1)).alias("noise_recall"),
    )


def summarize(metrics: pl.DataFrame, noise: pl.DataFrame | None = None, split: str = "test",
              metric: str = "accuracy") -> pl.DataFrame:
    """One row per (method, fraction, selection): mean, std and count over seeds, plus the noise columns."""
    table = (
        metrics.filter((pl.col("split") == split) & (pl.col("metric") == metric))
        .group_by("method", "fraction", "selection")
        .agg(
            pl.col("value").mean().alias(f"{metric}_mean"),
            pl.col("value").std().fill_null(0.0).alias(f"{metric}_std"),
            pl.len().alias("seeds"),
        )
    )
    if noise is not None:
        table = table.join(noise.select("selection", "noisy_share_of_dropped", "noise_recall"), on="selection", how="left")
    return table.sort(["fraction", f"{metric}_mean"], descending=[False, True])


def to_markdown(table: pl.DataFrame, base_rate: float | None = None) -> str:
    """A plain Markdown table (no extra dependency), accuracy as mean ± std in percent."""
    acc = [c for c in table.columns if c.endswith("_mean")][0]
    std = acc.replace("_mean", "_std")
    head = "| method | kept | selection | test accuracy (%) | seeds | noisy share of dropped | noise recall |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        share = r.get("noisy_share_of_dropped")
        recall = r.get("noise_recall")
        lines.append(
            f"| {r['method']} | {r['fraction']:.0%} | {r['selection']} | {100 * r[acc]:.2f} ± {100 * r[std]:.2f} | "
            f"{r['seeds']} | {'—' if share is None or r['fraction'] >= 1 else f'{share:.1%}'} | "
            f"{'—' if recall is None or r['fraction'] >= 1 else f'{recall:.1%}'} |"
        )
    if base_rate is not None:
        lines.append("")
        lines.append(f"Injected noise base rate in the training split: {base_rate:.1%}.")
    return "\n".join(lines) + "\n"


def write_summary(table: pl.DataFrame, out_csv: Path, out_md: Path, base_rate: float | None) -> None:
    from datasel.store import atomic_path

    with atomic_path(out_csv) as tmp:
        table.write_csv(tmp)
    with atomic_path(out_md) as tmp:
        tmp.write_text(to_markdown(table, base_rate))
