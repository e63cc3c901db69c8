"""Snakemake step: gather metrics, selections and scores into the summary (table, answer, warnings) and figures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from datasel.report.curves import RISING_POINTS, plot_curves, rising_warning
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
from datasel.store import read_table

log = logging.getLogger(__name__)


def report(smk: Any) -> None:
    examples = read_table(smk.input.examples, "examples")
    metrics = pl.concat([read_table(p, "metrics") for p in smk.input.metrics], how="diagonal_relaxed")
    selections = pl.concat([read_table(p, "selections") for p in smk.input.selections], how="diagonal_relaxed")
    scores = {Path(p).stem: read_table(p, "scores") for p in smk.input.get("scores", [])}
    params = getattr(smk, "params", None)
    choice = Choice.from_config(params.get("choose_on") if params is not None else None)
    train = examples.filter(pl.col("split") == "train")
    base = float(train.get_column("is_noisy").mean()) if train.height else 0.0
    table = summarize(metrics, noise_dropped(examples, selections)).join(
        class_balance(examples, selections).select("selection", "class_share_max_gap"), on="selection", how="left")
    warnings = run_warnings(metrics, scores)
    detection = noise_detection(examples, scores) if base > 0 else None
    best = best_against_random(metrics, choice)
    curve_files = smk.input.get("curves", [])
    curves = pl.concat([read_table(p, "curves") for p in curve_files], how="diagonal_relaxed") if curve_files else None
    rising = rising_warning(curves, [("full", 1.0), *((b["method"], b["fraction"]) for b in best)],
                            float(params.get("rising_points", RISING_POINTS)) if params is not None else RISING_POINTS)
    warnings += [rising] if rising else []
    doc = build_document(table, best, warnings, base,
                         histograms=class_histograms(examples, selections, meta_classes(smk.input.get("meta"))),
                         detection=detection)
    answer = recommendation(best, warnings)
    write_summary(verdict_columns(table, margins_on_test(metrics), best, answer, warnings), doc,
                  Path(smk.output.csv), Path(smk.output.md), Path(smk.output.rst))
    accuracy_vs_fraction(table.filter(pl.col("method") != "full"), Path(smk.output.plot),
                         full=table.filter(pl.col("method") == "full"))
    if "curves_plot" in smk.output.keys():  # declared only when training.curve_points > 0
        shown = recommended(best) or min(best, key=lambda b: abs(b["fraction"] - 0.5), default=None)
        runs = [("full", 1.0)] + ([("random", shown["fraction"]), (shown["method"], shown["fraction"])] if shown else [])
        plot_curves(curves if curves is not None else pl.DataFrame(), runs, Path(smk.output.curves_plot),
                    title="full data, random and the chosen method" + (f" at kept {shown['fraction']:.0%}"
                                                                       if shown else ""))
    if "noise_plot" in smk.output.keys():  # declared only when the config injects noise
        noise_share_bars(table, Path(smk.output.noise_plot), base)
    for w in warnings:
        log.warning("%s", w)
    log.info("summary:\n%s", doc.markdown())
