"""The selection report answers: per kept fraction the best selection and its margin over random with a 95%
interval, the summary table itself on the landing page, warnings for single-class models and saturated scores,
and plots only where they mean something. Hand-made metrics tables, so each expected figure is known."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import polars as pl
import pytest
from conftest import TINY, snakemake, write_config
from docutils.core import publish_parts

from datasel.report.build import report
from datasel.report.summary import best_against_random, build_document, run_warnings, summarize
from datasel.store import write_table

# test accuracy per (method, fraction): seeds 0, 1, 2 get mean + (-0.01, 0, +0.01)
MEANS = {("random", 0.3): 0.70, ("random", 0.5): 0.75, ("el2n_top", 0.3): 0.80, ("el2n_top", 0.5): 0.76,
         ("grand", 0.3): 0.60, ("grand", 0.5): 0.74, ("full", 1.0): 0.85}


def metrics_table(means=MEANS, single_class: set[tuple[str, int]] = frozenset()) -> pl.DataFrame:
    rows = []
    for (method, fraction), mean in means.items():
        selection = f"{method}_keep{round(100 * fraction)}"
        for seed, d in enumerate((-0.01, 0.0, 0.01)):
            base = {"selection": selection, "method": method, "fraction": fraction, "seed": seed, "split": "test"}
            rows.append({**base, "metric": "accuracy", "value": mean + d})
            rows.append({**base, "metric": "predicted_classes", "value": 1.0 if (selection, seed) in single_class
                         else 10.0})
    return pl.DataFrame(rows)


def test_best_selection_and_margin_per_fraction():
    best = {b["fraction"]: b for b in best_against_random(metrics_table())}
    assert set(best) == {0.3, 0.5}
    b = best[0.3]
    assert b["selection"] == "el2n_top_keep30" and b["margin"] == pytest.approx(0.10)
    # equal spreads of 0.01 on 3 seeds, two methods against random (Holm's first step: Bonferroni's 1 - 0.05/2):
    # Welch interval = ±t(1 - 0.025/2, 4) · sqrt(2 · 0.01² / 3)
    half = 3.495406 * np.sqrt(2 * 0.01**2 / 3)
    assert (b["ci_low"], b["ci_high"]) == pytest.approx((0.10 - half, 0.10 + half), abs=1e-4)
    assert b["verdict"] == "beats random" and b["family_size"] == 2
    # at 50% the best mean is 1 point above random, inside the interval: not a win
    assert best[0.5]["selection"] == "el2n_top_keep50" and best[0.5]["ci_low"] < 0 < best[0.5]["ci_high"]
    assert best[0.5]["verdict"] == "no clear difference"


def test_summary_shows_the_answer_and_the_table():
    metrics = metrics_table()
    doc = build_document(summarize(metrics), best_against_random(metrics), [], base_rate=0.0)
    md = doc.markdown()
    answer, rest = md.split("## All selections")
    assert "| 30% | `el2n_top_keep30` | — | 80.00 ± 1.00 | 70.00 | +10.00 [" in answer and "| beats random |" in answer
    assert "| 50% | `el2n_top_keep50` |" in answer and "| no clear difference |" in answer
    assert answer.startswith("# Selection summary: test accuracy of the target model\n\n**Recommendation:** Train on "
                             "`el2n_top_keep30` (kept 30%): +10.00 [")
    assert "Full data: 85.00 ± 1.00" in answer
    for sel in ("random_keep30", "grand_keep50", "full_keep100"):
        assert f"`{sel}`" in rest
    assert "noise" not in md.lower()  # no noise injected: no noise columns
    # the table is sorted: best first within each fraction
    kept30 = [line for line in rest.splitlines() if "| 30% |" in line]
    assert [line.split("|")[1].strip() for line in kept30] == ["el2n_top", "random", "grand"]


def test_the_rst_summary_renders_cleanly():
    metrics = metrics_table()
    doc = build_document(summarize(metrics), best_against_random(metrics), ["score `x` saturates"], 0.2)
    html = publish_parts(doc.rst(), writer="html", settings_overrides={"halt_level": 2})["body"]
    assert html.count("<table") == 2 and "saturates" in html
    assert "literal\">el2n_top_keep30<" in html and "<cite>" not in html


def test_no_random_baseline_says_how_to_get_one():
    metrics = metrics_table({k: v for k, v in MEANS.items() if k[0] != "random"})
    assert best_against_random(metrics) == []
    md = build_document(summarize(metrics), [], [], None).markdown()
    assert "random: {policy: random}" in md


def test_warning_for_a_single_class_model_names_selection_and_seeds():
    metrics = metrics_table(single_class={("grand_keep30", 0), ("grand_keep30", 2)})
    warnings = run_warnings(metrics)
    assert len(warnings) == 1
    assert "`grand_keep30`" in warnings[0] and "single class" in warnings[0] and "2 of 3 seeds: 0, 2" in warnings[0]
    assert run_warnings(metrics_table()) == []


def test_warning_for_a_saturated_score_only():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=200)
    saturated = np.where(np.arange(200) < 120, np.sqrt(2), rng.uniform(0, 1, 200))  # EL2N's ceiling on 2 classes
    floor = np.where(np.arange(200) < 150, 0.0, rng.uniform(0, 1, 200))
    scores = {name: pl.DataFrame({"score": v}) for name, v in
              (("el2n", saturated), ("loss", spread), ("grand", floor))}
    warnings = run_warnings(metrics_table(), scores)
    assert len(warnings) == 2  # sorted by score name; `loss` is spread out
    assert "`el2n` saturates: 60% of its 200 values equal its maximum 1.414" in warnings[0]
    assert "`grand` saturates: 75%" in warnings[1] and "minimum 0" in warnings[1]


def _report_files(tmp_path, df: pl.DataFrame, drop_label: int | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The report step's inputs for ``df`` (no noise, one selection of the training split: all of it, or all but
    the class ``drop_label``) and outputs."""
    df = df.with_columns(pl.lit(False).alias("is_noisy"))
    ex, metrics, sel = tmp_path / "examples.parquet", tmp_path / "metrics.parquet", tmp_path / "random_keep50.parquet"
    write_table(df, ex, "examples")
    write_table(metrics_table().with_columns(pl.col("seed").cast(pl.Int64)), metrics, "metrics")
    train = df.filter(pl.col("split") == "train")
    keep = train.get_column("label") != (-1 if drop_label is None else drop_label)
    write_table(pl.DataFrame({"selection": "random_keep50", "example_id": train.get_column("example_id"),
                              "selected": keep, "weight": keep.cast(pl.Float64),
                              "position": None}).with_columns(pl.col("position").cast(pl.Int64)), sel, "selections")
    out = {k: str(tmp_path / "report" / name) for k, name in
           (("csv", "summary.csv"), ("md", "summary.md"), ("rst", "summary.rst"), ("plot", "acc.png"))}
    return {"examples": str(ex), "metrics": [str(metrics)], "selections": [str(sel)]}, out


def test_report_step_without_noise_draws_no_noise_plot(tmp_path, tiny_examples):
    inputs, out = _report_files(tmp_path, tiny_examples[0])
    report(**inputs, **out)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "el2n_top_keep30" in md.split("## All selections")[0]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["acc.png", "summary.csv", "summary.md",
                                                                      "summary.rst"]


def test_report_class_balance_table_names_the_users_classes(tmp_path, tiny_examples):
    # string labels are stored as indices; the report reads their names back from the examples' meta.json
    df, meta = tiny_examples
    names = [f"class_{i}" for i in range(meta["num_classes"])]
    inputs, out = _report_files(tmp_path, df, drop_label=3)  # a class emptied: the balance table is shown
    meta_path = tmp_path / "meta.json"
    meta_path.write_text(json.dumps({**meta, "classes": names, "label_dtype": "str"}))
    report(**inputs, meta=meta_path, **out)
    balance = (tmp_path / "report" / "summary.md").read_text().split("Class balance")[1]
    header = balance.split("| subset |")[1].splitlines()[0]
    assert [c.strip() for c in header.strip(" |").split("|")] == names
    assert "class 0" not in balance


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_noise_plot_is_a_report_output_only_with_noise(tmp_path, noise):
    cfg = copy.deepcopy(TINY)
    cfg["data"]["noise"]["fraction"] = noise
    write_config(tmp_path, cfg)
    out = snakemake(tmp_path, "-n", "results/report/summary.md").stdout
    assert ("noise_dropped.png" in out) == (noise > 0)
    assert "results/report/summary.rst" in out


def test_snakemake_report_landing_page_shows_the_answer(tmp_path):
    write_config(tmp_path, TINY)
    snakemake(tmp_path, timeout=600)
    snakemake(tmp_path, "--report", "report.html", timeout=300)
    html = (tmp_path / "report.html").read_text()
    summary = (tmp_path / "results" / "report" / "summary.md").read_text()
    heading = "Selection per kept fraction: chosen on validation accuracy, judged on test against random"
    assert summary.startswith("# Selection summary: test accuracy of the target model\n\n**Recommendation:** ")
    assert heading in summary
    # the landing page text carries the summary itself: the recommendation, the answer's heading, every selection
    assert heading in html and "Recommendation:" in html
    for sel in ("random_keep50", "el2n_offset_keep50", "full_keep100"):
        assert sel in html
