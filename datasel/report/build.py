"""The report step: gather metrics, selections and scores into the summary (table, answer, warnings) and figures."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from datasel.report.curves import RISING_POINTS, flat, plot_curves, rising_warning
from datasel.report.plots import accuracy_vs_fraction, noise_share_bars
from datasel.report.subsets import class_balance, class_histograms, meta_classes, noise_detection
from datasel.report.summary import (
    best_against_random,
    build_document,
    margins_on_test,
    noise_dropped,
    run_warnings,
    summarize,
    verdict_columns,
    write_summary,
)
from datasel.report.verdicts import Choice, recommendation, recommended
from datasel.store import PathLike, read_table

log = logging.getLogger(__name__)


def report(examples: PathLike, metrics: Sequence[PathLike], selections: Sequence[PathLike], *, csv: PathLike,
           md: PathLike, rst: PathLike, plot: PathLike, noise_plot: PathLike | None = None,
           scores: Sequence[PathLike] = (), meta: PathLike | None = None,
           choose_on: dict[str, Any] | None = None, curves: Sequence[PathLike] = (),
           curves_plot: PathLike | None = None, rising_points: float = RISING_POINTS) -> None:
    """The selection summary (``csv``, ``md``, ``rst``) and its figures (``plot``; ``noise_plot`` when given, which
    the rule asks for only when the config injects noise; ``curves_plot`` from the runs' validation ``curves``)
    from the run's tables. ``meta`` (the examples' meta.json) names the user's classes; ``choose_on`` is
    ``report.choose_on``; a curve that gained more than ``rising_points`` over its last interval warns."""
    examples = read_table(examples, "examples")
    metrics = pl.concat([read_table(p, "metrics") for p in metrics], how="diagonal_relaxed")
    selections = pl.concat([read_table(p, "selections") for p in selections], how="diagonal_relaxed")
    scores = {Path(p).stem: read_table(p, "scores") for p in scores}
    choice = Choice.from_config(choose_on)
    train = examples.filter(pl.col("split") == "train")
    base = float(train.get_column("is_noisy").mean()) if train.height else 0.0
    meta_dict = json.loads(Path(meta).read_text()) if meta is not None else {}
    lm = meta_dict.get("kind") == "causal_lm"
    table = summarize(metrics, noise_dropped(examples, selections))
    if not lm:  # instruction data: each selection's share from the target task(s) tells more (datasel.report.lm)
        table = table.join(class_balance(examples, selections).select("selection", "class_share_max_gap"),
                           on="selection", how="left")
    detection = noise_detection(examples, scores) if base > 0 else None
    best = best_against_random(metrics, choice)
    curves_df = pl.concat([read_table(p, "curves") for p in curves], how="diagonal_relaxed") if curves else None
    warnings = run_warnings(metrics, scores, flat(curves_df, "full", 1.0, float(rising_points)), off_target=lm)
    rising = rising_warning(curves_df, [("full", 1.0), *((b["method"], b["fraction"]) for b in best)],
                            float(rising_points))
    warnings += [rising] if rising else []
    measure = "test exact match of the fine-tuned model" if lm else "test accuracy of the target model"
    doc = build_document(table, best, warnings, base,
                         histograms=None if lm else class_histograms(examples, selections, meta_classes(meta)),
                         detection=detection,
                         measure=measure)
    answer = recommendation(best, warnings)
    columns = verdict_columns(table, margins_on_test(metrics), best, answer, warnings)
    if lm:  # what the accuracy is, and each selection's share from the target task(s)
        from datasel.report.lm import lm_section

        shares = lm_section(doc, examples, selections, meta_dict)
        columns = columns.join(shares.select("selection", "target_share", "base_rate"), on="selection", how="left")
    doc.image(f"{measure} against the kept fraction, every method, random and full data", Path(plot).name)
    write_summary(columns, doc, Path(csv), Path(md), Path(rst))
    accuracy_vs_fraction(table.filter(pl.col("method") != "full"), Path(plot),
                         full=table.filter(pl.col("method") == "full"), measure=measure)
    if curves_plot is not None:  # asked for only when training.curve_points > 0
        shown = recommended(best) or min(best, key=lambda b: abs(b["fraction"] - 0.5), default=None)
        runs = [("full", 1.0)] + ([("random", shown["fraction"]), (shown["method"], shown["fraction"])] if shown else [])
        plot_curves(curves_df if curves_df is not None else pl.DataFrame(), runs, Path(curves_plot),
                    title="full data, random and the chosen method" + (f" at kept {shown['fraction']:.0%}"
                                                                       if shown else ""))
    if noise_plot is not None:
        noise_share_bars(table, Path(noise_plot), base)
    for w in warnings:
        log.warning("%s", w)
    log.info("summary:\n%s", doc.markdown())
