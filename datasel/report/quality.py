"""The selection-quality benchmark: every method × kept fraction × label-noise level against random and full
data, with seed spread, the margin over random with a Holm-corrected interval (:mod:`datasel.report.verdicts`),
and plots.

Per noise level the report opens with a recommendation; per kept fraction the best method is chosen on validation
and its test margin reported. A method "beats random" at a cell only when Holm's correction over the methods of
that cell rejects "no difference" (its interval is then above zero); cells where no method does are listed plainly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from datasel.report.curves import RISING_POINTS, flat, rising_warning
from datasel.report.plots import save_figure
from datasel.report.subsets import label_names, meta_classes
from datasel.report.summary import CLASS_MIX_POINTS, noise_dropped
from datasel.report.verdicts import (
    VERDICT_HEADER,
    Choice,
    best_per_fraction,
    choice_means,
    format_points,
    margins,
    markdown_table,
    method_note,
    recommendation,
    undertrained,
    verdict_rows,
    welch_ci,
)
from datasel.store import PathLike, atomic_path, read_table

log = logging.getLogger(__name__)


def cell_table(runs: dict[float, pl.DataFrame]) -> pl.DataFrame:
    """Per (noise, method, fraction): test accuracy mean/std/n, and training steps × batch (compute)."""
    parts = []
    for noise, metrics in runs.items():
        acc = metrics.filter((pl.col("split") == "test") & (pl.col("metric") == "accuracy"))
        steps = metrics.filter(pl.col("metric") == "steps").select("selection", "seed", pl.col("value").alias("steps"))
        parts.append(acc.join(steps, on=["selection", "seed"], how="left").with_columns(pl.lit(noise).alias("noise")))
    runs_df = pl.concat(parts, how="diagonal_relaxed")
    return runs_df


def against_full(cells: pl.DataFrame) -> pl.DataFrame:
    """Selections that keep every row they do not filter (``filter`` entries at kept fraction 1) against the full
    (noisy) set at the same noise level: accuracy difference and its Welch 95% interval."""
    rows: list[dict[str, Any]] = []
    whole = cells.filter(pl.col("fraction") >= 1)
    for (noise,), part in whole.group_by(["noise"], maintain_order=True):
        full = part.filter(pl.col("method") == "full").get_column("value").to_numpy()
        for (method,), m in part.filter(pl.col("method") != "full").group_by(["method"], maintain_order=True):
            if len(full) == 0:
                continue
            vals = m.get_column("value").to_numpy()
            diff, lo, hi = welch_ci(vals, full)
            rows.append({"noise": noise, "method": method, "accuracy_mean": float(vals.mean()),
                         "full_mean": float(full.mean()), "margin": diff, "ci_low": lo, "ci_high": hi,
                         "seeds": len(vals)})
    schema = {"noise": pl.Float64, "method": pl.String, "accuracy_mean": pl.Float64, "full_mean": pl.Float64,
              "margin": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "seeds": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort("noise", "margin", descending=[False, True])


def render_extras(noise: float, vs_full: pl.DataFrame | None, detection: pl.DataFrame | None,
                  balance: pl.DataFrame | None) -> list[str]:
    """The per-noise-level sections after the accuracy tables: filtered sets against the full set, noise detection
    (AUROC / average precision of each score against the injected flags), and the subsets' class-mix gap."""
    lines: list[str] = []
    part = vs_full.filter(pl.col("noise") == noise) if vs_full is not None else None
    if part is not None and part.height:
        lines += ["Filtered sets (every row the filter does not flag) against the full noisy set:", "",
                  "| selection | accuracy | full data | difference [95% CI] | at least full? |", "|---|---|---|---|---|"]
        for r in part.iter_rows(named=True):
            ok = "yes" if r["margin"] >= 0 else "no"
            lines.append(f"| {r['method']} | {100 * r['accuracy_mean']:.2f} | {100 * r['full_mean']:.2f} | "
                         f"{format_points(r)} | {ok} |")
        lines.append("")
    if detection is not None and detection.height:
        lines += ["Finding the injected noisy labels (score high = flagged; random: AUROC 0.5, average precision = "
                  f"the noise rate {detection.item(0, 'noise_rate'):.3f}):", "",
                  "| score | AUROC | average precision | its own flags |", "|---|---|---|---|"]
        for r in detection.iter_rows(named=True):
            flags = ("—" if r["flagged"] is None else f"{r['flagged']:.1%} flagged, precision "
                     f"{r['flag_precision']:.1%}, recall {r['flag_recall']:.1%}")
            lines.append(f"| {r['score']} | {r['auroc']:.3f} | {r['average_precision']:.3f} | {flags} |")
        best = detection.filter(pl.col("score") != "cleanlab")
        ref = detection.filter(pl.col("score") == "cleanlab")
        if best.height and ref.height:
            b, c = best.row(0, named=True), ref.row(0, named=True)
            verdict = "at least" if b["auroc"] >= c["auroc"] else "below"
            lines += ["", f"Best datasel score `{b['score']}`: AUROC {b['auroc']:.3f}, {verdict} cleanlab's "
                          f"{c['auroc']:.3f} on the same data."]
        lines.append("")
    moved = (balance.filter(pl.col("fraction") < 1).get_column("class_share_max_gap").max()
             if balance is not None and balance.height else None)
    if moved is not None and moved < CLASS_MIX_POINTS:
        lines += [f"Class mix: every subset keeps each class's share of the full training set within "
                  f"{CLASS_MIX_POINTS:g} point (largest move {moved:.1f} points).", ""]
    elif moved is not None:
        fracs = sorted(x for x in balance.get_column("fraction").unique().to_list() if x < 1)
        lines += ["Class mix gap (largest difference, in points, between a class's share of the subset and of the "
                  "full set):", "", "| method | " + " | ".join(f"keep {x:.0%}" for x in fracs) + " |",
                  "|---" * (len(fracs) + 1) + "|"]
        for method in sorted(set(balance.get_column("method").to_list()) - {"full"}):
            vals = []
            for x in fracs:
                v = balance.filter((pl.col("method") == method) & (pl.col("fraction") == x))
                vals.append(f"{v.item(0, 'class_share_max_gap'):.1f}" if v.height else "—")
            lines.append(f"| {method} | " + " | ".join(vals) + " |")
        lines.append("")
    return lines


def plot_margins(marg: pl.DataFrame, out: Path, title: str = "") -> None:
    """Margin over random (points, Holm-corrected Welch interval) against kept fraction, one panel per noise level:
    where a line sits above zero with its interval, the method beats random at that size."""
    noises = sorted(marg.get_column("noise").unique().to_list()) or [0.0]
    fig, axes = plt.subplots(1, len(noises), figsize=(6 * len(noises), 4.5), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        part = marg.filter((pl.col("noise") == noise) & (pl.col("method") != "full"))
        for i, method in enumerate(sorted(part.get_column("method").unique().to_list())):
            p = part.filter(pl.col("method") == method).sort("fraction")
            f, m = 100 * p.get_column("fraction").to_numpy(), 100 * p.get_column("margin").to_numpy()
            lo, hi = 100 * p.get_column("ci_low").to_numpy(), 100 * p.get_column("ci_high").to_numpy()
            err = np.nan_to_num(np.vstack([m - lo, hi - m]), nan=0.0)
            ax.errorbar(f + 0.4 * (i - 3), m, yerr=err, marker="o", capsize=2, label=method, lw=1)
        ax.axhline(0.0, color="black", lw=1.5, label="random")
        ax.set_title(f"{title + ', ' if title else ''}label noise {noise:.0%}", fontsize=9)
        ax.set_xlabel("kept fraction (%)")
        ax.set_ylabel("margin over random (accuracy points, Holm-corrected CI)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    save_figure(fig, out, dpi=110)


def plot_class_mix(hists: dict[float, pl.DataFrame], out: Path, title: str = "") -> None:
    """Each subset's class shares against the full training set's, one heat map per noise level: a row per method at
    each kept fraction, a column per class, the cell the share's difference in points (red: the class is
    over-represented, blue: it was emptied). A score ranking that starves hard classes shows as a blue column."""
    noises = sorted(hists) or [0.0]
    tables = {}
    for noise in noises:
        h = hists[noise].filter(~pl.col("method").is_in(["full", "full set"]) & pl.col("fraction").is_not_null()
                                & (pl.col("fraction") < 1))
        h = h.with_columns(((pl.col("share") - pl.col("full_share")) * 100).alias("gap"))
        rows = h.select("method", "fraction").unique().sort("method", "fraction")
        labels = sorted(h.get_column("label").unique().to_list())
        grid = np.full((rows.height, len(labels)), np.nan)
        for i, (method, frac) in enumerate(rows.iter_rows()):
            part = h.filter((pl.col("method") == method) & (pl.col("fraction") == frac))
            for lab, gap in part.select("label", "gap").iter_rows():
                grid[i, labels.index(lab)] = gap
        names = label_names(h)
        tables[noise] = ([f"{m} {f:.0%}" for m, f in rows.iter_rows()], [names.get(v, v) for v in labels], grid)
    height = max(3.0, 0.22 * max(len(t[0]) for t in tables.values()) + 1.5)
    fig, axes = plt.subplots(1, len(noises), figsize=(5.5 * len(noises), height), squeeze=False)
    vmax = max([float(np.nanmax(np.abs(t[2]))) for t in tables.values() if t[2].size and not np.isnan(t[2]).all()]
               + [0.5])
    for ax, noise in zip(axes[0], noises):
        names, labels, grid = tables[noise]
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(labels)), [str(v) for v in labels], fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("class")
        ax.set_title(f"{title + ', ' if title else ''}label noise {noise:.0%}: class share − full set's (points)",
                     fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    save_figure(fig, out, dpi=110)


def render_markdown(cells: pl.DataFrame, marg: pl.DataFrame, full: pl.DataFrame,
                    extras: dict[float, list[str]] | None = None, chosen: pl.DataFrame | None = None,
                    choice: Choice = Choice(), curves: dict[float, pl.DataFrame] | None = None,
                    rising_points: float = RISING_POINTS) -> str:
    """The quality report: per noise level a recommendation first, then the accuracy table, the per-fraction
    answer (chosen on ``choice``, judged on test, Holm-corrected) and the ``extras`` sections.

    ``chosen``: :func:`datasel.report.verdicts.choice_means` of the runs (None: no validation metrics, so the
    choice falls back to test accuracy and the table says so). ``curves``: per noise level the training curves
    (:mod:`datasel.training.curves`), for the "still rising" warning on full data and the chosen methods.
    """
    noises = sorted(cells.get_column("noise").unique().to_list())
    head, body = ["# Selection quality: test accuracy (%) by method and kept fraction", ""], []
    for noise in noises:
        part = cells.filter(pl.col("noise") == noise)
        fracs = sorted(x for x in part.get_column("fraction").unique().to_list() if x < 1)  # full data: heading
        f = full.filter(pl.col("noise") == noise).get_column("value").to_numpy()
        best = best_per_fraction(marg.filter(pl.col("noise") == noise), chosen, choice)
        warning = undertrained(pl.concat([part.select("method", "fraction", "value"),
                                          full.filter(pl.col("noise") == noise).select(
                                              pl.lit("full").alias("method"), pl.lit(1.0).alias("fraction"),
                                              "value")], how="vertical_relaxed"),
                               flat((curves or {}).get(noise), "full", 1.0, rising_points))
        rising = rising_warning((curves or {}).get(noise), [("full", 1.0), *((b["method"], b["fraction"])
                                                                           for b in best)], rising_points)
        warns = [w for w in (warning, rising) if w]
        answer = recommendation(best, warns)
        head.append(f"**Recommendation at label noise {noise:.0%}:** {answer}")
        for w in warns:
            head.append(f"Warning at label noise {noise:.0%}: {w}.")
        head.append("")
        lines = [f"## label noise {noise:.0%}" + (f" — full data {100 * f.mean():.2f} ± {100 * f.std(ddof=1):.2f}"
                                                  if len(f) > 1 else ""), ""]
        lines.append("| method | " + " | ".join(f"keep {x:.0%}" for x in fracs) + " |")
        lines.append("|---" * (len(fracs) + 1) + "|")
        for method in sorted(set(part.get_column("method").to_list()) - {"full"}):
            row = []
            for x in fracs:
                v = part.filter((pl.col("method") == method) & (pl.col("fraction") == x)).get_column("value").to_numpy()
                row.append(f"{100 * v.mean():.2f} ± {100 * (v.std(ddof=1) if len(v) > 1 else 0):.2f}" if len(v) else "—")
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
        if best:
            lines += [*markdown_table(VERDICT_HEADER, verdict_rows(best)), "", method_note(best), ""]
        cell_marg = marg.filter(pl.col("noise") == noise)
        losers = [x for x in fracs if not cell_marg.filter(pl.col("fraction") == x).get_column("beats_random").any()]
        winners = [f"{r['method']} (kept {r['fraction']:.0%})" for r in cell_marg.filter(
            pl.col("beats_random")).iter_rows(named=True)]
        lines.append(f"No method beats random (Holm-corrected) at kept {', '.join(f'{x:.0%}' for x in losers)}."
                     if losers else "At every kept fraction some method beats random (Holm-corrected).")
        if winners:
            lines.append(f"Every method that beats random on test (not chosen on validation): {', '.join(winners)}.")
        lines.append("")
        lines += (extras or {}).get(noise, [])
        body += lines
    return "\n".join(head + body)


def plot_quality(cells: pl.DataFrame, noise_table: pl.DataFrame | None, out_acc: Path, out_compute: Path,
                 out_noise: Path, batch_size: int) -> None:
    noises = sorted(cells.get_column("noise").unique().to_list())
    agg = cells.group_by("noise", "method", "fraction").agg(  # in percent, as every table of the report
        (100 * pl.col("value")).mean().alias("m"), (100 * pl.col("value")).std().fill_null(0).alias("s"),
        (pl.col("steps").mean() * batch_size).alias("examples_seen"))
    fig, axes = plt.subplots(1, len(noises), figsize=(6 * len(noises), 4.5), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        part = agg.filter(pl.col("noise") == noise)
        for method in sorted(set(part.get_column("method").to_list()) - {"full"}):
            p = part.filter(pl.col("method") == method).sort("fraction")
            f, m, s = (p.get_column(c).to_numpy() for c in ("fraction", "m", "s"))
            f = 100 * f
            ax.plot(f, m, marker="o", label=method, lw=2 if method == "random" else 1,
                    color="black" if method == "random" else None)
            ax.fill_between(f, m - s, m + s, alpha=0.12)
        full = part.filter(pl.col("method") == "full")
        if full.height:
            ax.axhline(full.get_column("m").item(0), ls="--", color="gray", label="full data")
        ax.set_title(f"label noise {noise:.0%}")
        ax.set_xlabel("kept fraction (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    save_figure(fig, out_acc, dpi=110)

    fig, axes = plt.subplots(1, len(noises), figsize=(6 * len(noises), 4.5), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        part = agg.filter(pl.col("noise") == noise)
        for method in sorted(part.get_column("method").unique().to_list()):
            p = part.filter(pl.col("method") == method).sort("examples_seen")
            ax.plot(p.get_column("examples_seen").to_numpy(), p.get_column("m").to_numpy(), marker="o", label=method,
                    ls="" if method == "full" else "-")
        ax.set_xscale("log")
        ax.set_xlabel("training compute (examples processed)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"label noise {noise:.0%}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    save_figure(fig, out_compute, dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if noise_table is not None and noise_table.height:
        for method in sorted(noise_table.get_column("method").unique().to_list()):
            p = noise_table.filter(pl.col("method") == method).sort("fraction")
            share = 100 * p.get_column("noisy_share_of_dropped").to_numpy()
            ax.plot(100 * p.get_column("fraction").to_numpy(), share, marker="o", label=method)
        base = float(noise_table.get_column("base_rate").max())
        ax.axhline(100 * base, color="red", ls="--", label=f"base rate {base:.0%}")
    ax.set_xlabel("kept fraction (%)")
    ax.set_ylabel("noisy share of dropped examples (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, out_noise, dpi=110)


def _by_method(table: pl.DataFrame) -> pl.DataFrame:
    """``method`` and kept ``fraction`` from a per-selection table's ``<method>_keep<pct>`` names."""
    return table.with_columns(
        pl.col("selection").str.replace(r"_keep\d+$", "").alias("method"),
        (pl.col("selection").str.extract(r"_keep(\d+)$").cast(pl.Float64) / 100).alias("fraction"))


def quality_report(noise: Sequence[float], metrics: Sequence[Sequence[PathLike]],
                   selections: Sequence[Sequence[PathLike]], examples: Sequence[PathLike], *, batch_size: int,
                   md: PathLike, csv: PathLike, accuracy: PathLike, compute: PathLike, noise_plot: PathLike,
                   margin: PathLike | None = None, class_mix: PathLike | None = None,
                   scores: Sequence[Sequence[PathLike]] | None = None, regime: str | None = None,
                   choose_on: dict[str, Any] | None = None, curves: Sequence[Sequence[PathLike]] | None = None,
                   rising_points: float = RISING_POINTS) -> None:
    """Gather every quality run into the table, margins and plots.

    One entry per run (label-noise level ``noise[i]``): its metrics, selections and score tables and its examples
    table, and its training ``curves`` (the "still rising" warning past ``rising_points``); ``batch_size`` is the
    training batch size (the compute axis); ``margin`` and ``class_mix`` plots are drawn when given."""
    from datasel.report.subsets import class_balance, class_histograms, noise_detection

    runs, noise_parts, detections, balances, hists, curve_tables = {}, [], {}, {}, {}, {}
    score_files = scores or [[] for _ in noise]
    for level, files in zip(noise, curves or []):
        if files:
            curve_tables[level] = pl.concat([read_table(p, "curves") for p in files], how="diagonal_relaxed")
    for level, metrics_files, sel_files, run_examples, run_scores in zip(noise, metrics, selections, examples,
                                                                       score_files):
        runs[level] = pl.concat([read_table(p, "metrics") for p in metrics_files], how="diagonal_relaxed")
        ex = read_table(run_examples, "examples")
        sels = pl.concat([read_table(p, "selections") for p in sel_files], how="diagonal_relaxed")
        balances[level] = _by_method(class_balance(ex, sels))
        # meta.json is written by the same prepare job as examples.parquet: the user's class names for the plot
        hists[level] = _by_method(class_histograms(ex, sels, meta_classes(Path(run_examples).with_name("meta.json"))))
        if level > 0:
            detections[level] = noise_detection(ex, {Path(p).stem: read_table(p, "scores") for p in run_scores})
            nd = _by_method(noise_dropped(ex, sels)).with_columns(
                pl.lit(float(ex.filter(pl.col("split") == "train").get_column("is_noisy").mean())).alias("base_rate"))
            noise_parts.append(nd.filter(pl.col("method") != "full"))
    cells = cell_table(runs)
    marg = margins(cells.filter(pl.col("method") != "full"))
    choice = Choice.from_config(choose_on)
    chosen = choice_means(pl.concat([m.with_columns(pl.lit(n).alias("noise")) for n, m in runs.items()],
                                    how="diagonal_relaxed"), choice)
    full = cells.filter(pl.col("method") == "full")
    vs_full = against_full(cells)
    with atomic_path(csv) as tmp:
        marg.write_csv(tmp)
    extras = {n: render_extras(n, vs_full, detections.get(n), balances.get(n)) for n in runs}
    text = render_markdown(cells.filter((pl.col("fraction") < 1) | (pl.col("method") == "full")), marg, full,
                           extras, chosen, choice, curve_tables, float(rising_points))
    if regime:
        text = text.replace("\n", f"\n\nRegime: {regime}.\n", 1)
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    plot_quality(cells, pl.concat(noise_parts) if noise_parts else None, Path(accuracy), Path(compute),
                 Path(noise_plot), int(batch_size))
    if margin is not None:
        plot_margins(marg, Path(margin), title=str(regime or ""))
    if class_mix is not None:
        plot_class_mix(hists, Path(class_mix), title=str(regime or "").split(":")[0])
    log.info("\n%s", text)
