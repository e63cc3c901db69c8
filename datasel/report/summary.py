"""The selection summary: a recommendation first (:mod:`datasel.report.verdicts`: per kept fraction the selection
chosen on validation, its Holm-corrected test margin over random), warnings about runs whose numbers mean little,
then method × kept fraction → test accuracy (mean ± std over seeds) and how much of the injected label noise each
selection dropped.

The document is built once as a list of blocks and rendered to Markdown (``summary.md``) and reStructuredText
(``summary.rst``, included by the Snakemake report's landing page), so both say the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.report.subsets import draw_counts, label_names
from datasel.report.verdicts import (
    VERDICT_HEADER,
    Choice,
    best_per_fraction,
    choice_means,
    margins,
    method_note,
    recommendation,
    recommended,
    selection_of,
    undertrained,
    verdict_rows,
)

# a score "saturates" when more than this share of its values sit at its maximum (or minimum): its ranking among
# them is a tie broken by id, so a top/bottom/offset policy over it selects arbitrarily
SATURATION_SHARE = 0.5
# the class-balance table is shown only when some class's share of some subset moves by at least this many points
CLASS_MIX_POINTS = 1.0


def noise_dropped(examples: pl.DataFrame, selections: pl.DataFrame) -> pl.DataFrame:
    """Per selection: how many rows it dropped, the share of those that carry an injected noisy label, and the
    share of all noisy labels it removed (recall)."""
    train = examples.filter(pl.col("split") == "train").select("example_id", "is_noisy")
    joined = selections.join(train, on="example_id", how="inner")
    # counts are means over a stochastic policy's draws (one subset per training seed); the shares are unchanged
    return joined.group_by("selection").agg(
        (~pl.col("selected")).sum().alias("dropped"),
        (pl.col("is_noisy") & ~pl.col("selected")).sum().alias("noisy_dropped"),
        pl.col("is_noisy").sum().alias("noisy_total"),
    ).join(draw_counts(selections), on="selection").with_columns(
        pl.col("dropped", "noisy_dropped", "noisy_total") / pl.col("draws")).drop("draws").with_columns(
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
    return table.sort(["fraction", f"{metric}_mean", "selection"], descending=[False, True, False])


def best_against_random(metrics: pl.DataFrame, choice: Choice = Choice()) -> list[dict[str, Any]]:
    """Per kept fraction < 1: the selection with the best mean on ``choice`` (validation accuracy by default), its
    Holm-corrected test margin over random and a verdict (:mod:`datasel.report.verdicts`).

    Empty when the run has no random selection to compare against.
    """
    marg = margins_on_test(metrics)
    if marg.height == 0:
        return []
    rows = best_per_fraction(marg, choice_means(metrics, choice), choice)
    for r in rows:
        r["selection"] = selection_of(r)
    return rows


def margins_on_test(metrics: pl.DataFrame) -> pl.DataFrame:
    """Every selection's test-accuracy margin over random at its kept fraction, Holm-corrected per fraction."""
    cells = metrics.filter((pl.col("split") == "test") & (pl.col("metric") == "accuracy") & (pl.col("fraction") < 1)
                           & (pl.col("method") != "full"))
    return margins(cells)


def verdict_columns(table: pl.DataFrame, marg: pl.DataFrame, best: list[dict[str, Any]], answer: str,
                    warnings: list[str]) -> pl.DataFrame:
    """``table`` (:func:`summarize`) with the answer as columns, for summary.csv: each selection's test margin over
    random (fractions 0-1, Holm-corrected interval, p-values, family size, verdict), whether it is the method chosen
    on validation at its kept fraction and the recommended one, and the recommendation and warnings (the same text
    on every row, so any row answers)."""
    cols = ["margin", "ci_low", "ci_high", "ci_level", "p_value", "p_holm", "family_size", "verdict"]
    chosen = {b["selection"] for b in best}
    pick = recommended(best)
    named = marg.select(pl.concat_str(pl.col("method"), pl.lit("_keep"),
                                      (100 * pl.col("fraction")).round().cast(pl.Int64)).alias("selection"), *cols)
    return table.join(named, on="selection", how="left").with_columns(
        pl.col("selection").is_in(list(chosen)).alias("chosen_on_validation"),
        (pl.col("selection") == (selection_of(pick) if pick else "")).alias("recommended"),
        pl.lit(answer).alias("recommendation"),
        pl.lit(" | ".join(warnings)).alias("warnings"),
    )


def run_warnings(metrics: pl.DataFrame, scores: Mapping[str, pl.DataFrame] | None = None,
                 full_flat: bool | None = None, off_target: bool = False) -> list[str]:
    """Sentences about results that look like numbers but mean little: an under-trained target model (a random half
    of the data does as well as all of it; redundant data instead when ``full_flat``, the full data's curve having
    reached its plateau), a target model that predicted one class (its accuracy is the majority
    share), a score whose values pile up at one end (its ranking is mostly ties). ``off_target``: instruction data,
    whose pool is not the target task's distribution (:func:`datasel.report.verdicts.undertrained`)."""
    test = metrics.filter((pl.col("split") == "test") & (pl.col("metric") == "accuracy"))
    out = [w for w in [undertrained(test, full_flat, off_target)] if w]
    one = metrics.filter((pl.col("metric") == "predicted_classes") & (pl.col("split") == "test")
                         & (pl.col("value") <= 1))
    for (selection,), part in one.group_by(["selection"], maintain_order=True):
        total = metrics.filter((pl.col("selection") == selection) & (pl.col("metric") == "predicted_classes")
                               & (pl.col("split") == "test")).height
        seeds = ", ".join(str(s) for s in sorted(part.get_column("seed").to_list()))
        out.append(f"the target model trained on `{selection}` predicted a single class on the test split "
                   f"({part.height} of {total} seeds: {seeds}), so its accuracy is the share of that class; "
                   "scale the inputs (data.standardize) or check training.lr and training.budget")
    for name, table in sorted((scores or {}).items()):
        s = table.get_column("score").drop_nulls().to_numpy().astype(np.float64)
        if len(s) == 0:
            continue
        for end, value in (("maximum", s.max()), ("minimum", s.min())):
            share = float(np.isclose(s, value, rtol=1e-5, atol=1e-12).mean())
            if share > SATURATION_SHARE:
                out.append(f"score `{name}` saturates: {share:.0%} of its {len(s)} values equal its {end} "
                           f"{value:.4g}, so a selection by it breaks ties arbitrarily; check the proxy model "
                           "(unscaled inputs, a checkpoint too late or too early)")
                break
    return out


@dataclass
class Doc:
    """A small document: headings, paragraphs, bullet lists and tables, rendered to Markdown or reST."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, alt: str, path: str) -> None:
        """A figure beside the document (Markdown viewers show it; reST names the file, since Snakemake's report
        carries the figure itself)."""
        self.blocks.append(("img", (alt, path)))

    def markdown(self) -> str:
        out = []
        for kind, body in self.blocks:
            if kind == "h":
                out.append(f"{'#' * body[0]} {body[1]}")
            elif kind == "p":
                out.append(body)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in body))
            elif kind == "img":
                out.append(f"![{body[0]}]({body[1]})")
            else:
                header, rows = body
                out.append("\n".join([f"| {' | '.join(header)} |", "|" + "---|" * len(header),
                                      *(f"| {' | '.join(r)} |" for r in rows)]))
        return "\n\n".join(out) + "\n"

    def rst(self) -> str:
        def inline(text: str) -> str:  # Markdown `code` is reST ``code`` (single backticks would be a citation)
            return text.replace("`", "``").replace("````", "``")

        out = []
        marks = {1: "=", 2: "-", 3: "~"}
        for kind, body in self.blocks:
            if kind == "h":
                out.append(f"{body[1]}\n{marks[body[0]] * max(4, len(body[1]) + 2)}")
            elif kind == "p":
                out.append(inline(body))
            elif kind == "ul":
                out.append("\n".join(f"- {inline(item)}" for item in body))
            elif kind == "img":
                out.append(f"Figure ``{body[1]}``: {inline(body[0])}.")
            else:
                header, rows = body
                lines = [".. list-table::", "   :header-rows: 1", ""]
                for r in [header, *rows]:
                    lines += [f"   * - {inline(r[0]) or ' '}", *(f"     - {inline(c) or ' '}" for c in r[1:])]
                out.append("\n".join(lines))
        return "\n\n".join(out) + "\n"


def _pct(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def build_document(table: pl.DataFrame, best: list[dict[str, Any]], warnings: list[str],
                   base_rate: float | None = None, histograms: pl.DataFrame | None = None,
                   detection: pl.DataFrame | None = None,
                   measure: str = "test accuracy of the target model") -> Doc:
    """The summary: the recommendation and the warnings that change it first, then the answer per kept fraction,
    then every selection; with ``histograms``
    (:func:`datasel.report.subsets.class_histograms`) each subset's class mix against the full set's, with
    ``detection`` (:func:`datasel.report.subsets.noise_detection`) how well each score finds the noisy labels;
    ``measure`` names what the accuracy is, in the title."""
    doc = Doc()
    doc.heading(f"Selection summary: {measure}", 1)
    full = table.filter(pl.col("method") == "full")
    doc.para(f"**Recommendation:** {recommendation(best, warnings)}")
    if warnings:
        doc.heading("Warnings")
        doc.bullets(warnings)
    if best:
        chosen_on = best[0]["chosen_on"].split(" (")[0]
        doc.heading(f"Selection per kept fraction: chosen on {chosen_on}, judged on test against random")
        whole = f" Full data: {_pct(full.item(0, 'accuracy_mean'), full.item(0, 'accuracy_std'))}." if full.height else ""
        doc.para(method_note(best) + whole)
        doc.table(VERDICT_HEADER, verdict_rows(best))
    else:
        doc.para("No margin over random: the run has no `random` selection (add `random: {policy: random}` to "
                 "selection.policies) or no other selection to compare with it.")
    doc.heading("All selections")
    noisy = base_rate is not None and base_rate > 0 and "noisy_share_of_dropped" in table.columns
    header = ["method", "kept", "selection", "test accuracy (%)", "seeds"]
    header += ["noisy share of dropped", "noise recall"] if noisy else []
    gap = "class_share_max_gap" in table.columns
    header += ["class mix gap (points)"] if gap else []
    rows = []
    for r in table.iter_rows(named=True):
        row = [r["method"], f"{r['fraction']:.0%}", f"`{r['selection']}`", _pct(r["accuracy_mean"], r["accuracy_std"]),
               str(r["seeds"])]
        if noisy:
            row += ["—" if r[c] is None or r["fraction"] >= 1 or math.isnan(r[c]) else f"{r[c]:.1%}"
                    for c in ("noisy_share_of_dropped", "noise_recall")]
        if gap:
            row += ["—" if r["class_share_max_gap"] is None else f"{r['class_share_max_gap']:.1f}"]
        rows.append(row)
    doc.table(header, rows)
    if noisy:
        doc.para(f"Injected label noise in the training split: {base_rate:.1%} of rows.")
    if gap:
        doc.para("Class mix gap: the largest difference, in points, between a class's share of the subset and its "
                 "share of the full training set (0 = the subset keeps the class mix).")
    if histograms is not None and histograms.height:
        _class_histogram_table(doc, histograms)
    if detection is not None and detection.height:
        _detection_table(doc, detection)
    return doc


def _class_histogram_table(doc: Doc, h: pl.DataFrame) -> None:
    labels = sorted(h.get_column("label").unique().to_list())
    names = label_names(h)
    moved = float(((h.get_column("share") - h.get_column("full_share")).abs() * 100).max() or 0.0)
    if moved < CLASS_MIX_POINTS:
        doc.para(f"Class balance: every subset keeps each class's share of the full training set within "
                 f"{CLASS_MIX_POINTS:g} point (largest move {moved:.1f} points).")
        return
    doc.heading("Class balance: share of each class in each subset (%)")
    first = h.filter(pl.col("selection") == h.item(0, "selection")).sort("label")
    rows = [["full training set", *(f"{100 * v:.1f}" for v in first.get_column("full_share").to_list())]]
    for (sel,), part in h.group_by(["selection"], maintain_order=True):
        shares = dict(zip(part.get_column("label").to_list(), part.get_column("share").to_list()))
        rows.append([f"`{sel}`", *(f"{100 * shares.get(lab, 0.0):.1f}" for lab in labels)])
    doc.table(["subset", *(_class_header(names.get(lab, str(lab))) for lab in labels)], rows)


def _class_header(name: str) -> str:
    # integer labels read as "class 3"; the user's own names (`class_0`, `spam`) stand as they are
    return f"class {name}" if name.lstrip("-").isdigit() else name


def _detection_table(doc: Doc, d: pl.DataFrame) -> None:
    doc.heading("Finding the injected noisy labels")
    rows = []
    for r in d.iter_rows(named=True):
        flags = ("—" if r["flagged"] is None else
                 f"{r['flagged']:.1%} flagged, precision {r['flag_precision']:.1%}, recall {r['flag_recall']:.1%}")
        rows.append([f"`{r['score']}`", f"{r['auroc']:.3f}", f"{r['average_precision']:.3f}", flags])
    doc.table(["score", "AUROC", "average precision", "its own flags"], rows)
    doc.para(f"Each score ranks the training rows (high = flagged) against the injected noise flag; a random ranking "
             f"has AUROC 0.5 and average precision {d.item(0, 'noise_rate'):.3f} (the noise rate). A score below 0.5 "
             "ranks noisy labels *last* (it rates them as good, e.g. a usefulness score).")


def to_markdown(table: pl.DataFrame, base_rate: float | None = None) -> str:
    """The table of every selection alone, as Markdown (for the log)."""
    return build_document(table, [], [], base_rate).markdown().split("## All selections\n\n", 1)[1]


def write_summary(table: pl.DataFrame, doc: Doc, out_csv: Path, out_md: Path, out_rst: Path | None = None) -> None:
    from datasel.store import atomic_path

    with atomic_path(out_csv) as tmp:
        table.write_csv(tmp)
    with atomic_path(out_md) as tmp:
        tmp.write_text(doc.markdown())
    if out_rst is not None:
        with atomic_path(out_rst) as tmp:
            tmp.write_text(doc.rst())
