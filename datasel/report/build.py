"""Snakemake step: gather metrics and selections into the summary table and figures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from datasel.report.plots import accuracy_vs_fraction, noise_share_bars
from datasel.report.summary import noise_dropped, summarize, to_markdown, write_summary
from datasel.store import read_table

log = logging.getLogger(__name__)


def report(smk: Any) -> None:
    examples = read_table(smk.input.examples, "examples")
    metrics = pl.concat([read_table(p, "metrics") for p in smk.input.metrics], how="diagonal_relaxed")
    selections = pl.concat([read_table(p, "selections") for p in smk.input.selections], how="diagonal_relaxed")
    noise = noise_dropped(examples, selections)
    table = summarize(metrics, noise)
    train = examples.filter(pl.col("split") == "train")
    base = float(train.get_column("is_noisy").mean()) if train.height else 0.0
    write_summary(table, Path(smk.output.csv), Path(smk.output.md), base)
    accuracy_vs_fraction(table.filter(pl.col("method") != "full"), Path(smk.output.plot),
                         full=table.filter(pl.col("method") == "full"))
    noise_share_bars(table, Path(smk.output.noise_plot), base)
    log.info("summary:\n%s", to_markdown(table, base))
