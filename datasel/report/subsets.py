"""What the subsets and scores contain, beside the accuracy they reach: each selection's class histogram against the
full training set's, and how well each score finds the injected noisy labels (AUROC and average precision).

Why the class histogram: a score ranking can empty the classes the proxy finds hard (measured: a 70% EL2N subset
kept 48% of one class and 79% of another), and the accuracy table alone does not show it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl


def class_histograms(examples: pl.DataFrame, selections: pl.DataFrame,
                     classes: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per (selection, label): kept rows, the class's share of the subset and of the full training set, and
    the share of the class that was kept. The full set itself is the selection ``full set``. ``class`` is the
    label's name in the user's data (``classes``, the examples' meta.json), else the label index."""
    train = examples.filter(pl.col("split") == "train").select("example_id", "label")
    full = train.group_by("label").len("total").with_columns((pl.col("total") / train.height).alias("full_share"))
    kept = (selections.filter(pl.col("selected")).join(train, on="example_id", how="inner")
            .group_by("selection", "label").len("kept"))
    grid = draw_counts(selections).join(full, how="cross")
    # a stochastic policy's table stacks one subset per training seed: ``kept`` is the mean over its draws
    out = grid.join(kept, on=["selection", "label"], how="left").with_columns(
        (pl.col("kept").fill_null(0) / pl.col("draws")).alias("kept")).drop("draws")
    out = out.with_columns((pl.col("kept") / pl.col("kept").sum().over("selection").clip(lower_bound=1))
                           .alias("share"), (pl.col("kept") / pl.col("total")).alias("kept_of_class"))
    return out.with_columns(class_names(out.get_column("label"), classes)).sort("selection", "label")


def draw_counts(selections: pl.DataFrame) -> pl.DataFrame:
    """``selection, draws``: how many subsets each selection table stacks (one per training seed for a stochastic
    policy, see :mod:`datasel.selection.draws`; one otherwise)."""
    if "draw" not in selections.columns:
        return selections.select("selection").unique().with_columns(pl.lit(1).alias("draws"))
    return selections.group_by("selection").agg(pl.col("draw").n_unique().clip(lower_bound=1).alias("draws"))


def class_names(labels: pl.Series, classes: Sequence[str] | None) -> pl.Series:
    """The user's class name of each label index (the index itself when the names are unknown or are the indices)."""
    if not classes:
        return labels.cast(pl.String).alias("class")
    return pl.Series("class", [str(c) for c in classes], dtype=pl.String).gather(labels)


def meta_classes(meta_path: str | Path | None) -> list[str] | None:
    """The user's class names in label order, from the examples' meta.json (None where there is none)."""
    if not meta_path or not Path(meta_path).is_file():
        return None
    return json.loads(Path(meta_path).read_text()).get("classes")


def label_names(h: pl.DataFrame) -> dict[int, str]:
    """label index -> class name of a :func:`class_histograms` table (empty for a table without names)."""
    return dict(h.select("label", "class").unique().iter_rows()) if "class" in h.columns else {}


def class_balance(examples: pl.DataFrame, selections: pl.DataFrame) -> pl.DataFrame:
    """Per selection: the largest gap between a class's share of the subset and of the full set (points), and the
    smallest and largest share of a class kept."""
    h = class_histograms(examples, selections)
    return h.group_by("selection").agg(
        ((pl.col("share") - pl.col("full_share")).abs().max() * 100).alias("class_share_max_gap"),
        pl.col("kept_of_class").min().alias("class_kept_min"),
        pl.col("kept_of_class").max().alias("class_kept_max"),
    ).sort("selection")


def noise_detection(examples: pl.DataFrame, scores: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Per score table: AUROC and average precision of the score (high = flagged) against ``is_noisy``, over the
    training rows; for a detector that flags rows itself (``label_issue``), the precision and recall of its flags.
    Empty when no label was flipped (nothing to detect)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    train = examples.filter(pl.col("split") == "train").select("example_id", "is_noisy")
    rows = []
    for name, table in sorted(scores.items()):
        joined = train.join(table, on="example_id", how="inner")
        truth = joined.get_column("is_noisy").to_numpy().astype(bool)
        if joined.height == 0 or truth.all() or not truth.any():
            continue
        s = joined.get_column("score").to_numpy().astype(np.float64)
        row = {"score": name, "auroc": float(roc_auc_score(truth, s)),
               "average_precision": float(average_precision_score(truth, s)), "noise_rate": float(truth.mean()),
               "flag_precision": None, "flag_recall": None, "flagged": None}
        if "label_issue" in joined.columns:
            flags = joined.get_column("label_issue").to_numpy().astype(bool)
            row.update(flagged=float(flags.mean()), flag_recall=float((flags & truth).sum() / truth.sum()),
                       flag_precision=float((flags & truth).sum() / max(1, flags.sum())))
        rows.append(row)
    schema = {"score": pl.String, "auroc": pl.Float64, "average_precision": pl.Float64, "noise_rate": pl.Float64,
              "flag_precision": pl.Float64, "flag_recall": pl.Float64, "flagged": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort("auroc", descending=True)
