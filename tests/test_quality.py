"""The selection-quality benchmark: its statistics against scipy, and a smoke run of the grid target."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
from conftest import TINY, snakemake, write_config
from scipy import stats

from datasel.report.quality import margins, welch_ci


def test_welch_interval_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.7, 0.02, 5), rng.normal(0.65, 0.05, 4)
    diff, lo, hi = welch_ci(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9)


def test_margins_flag_only_clear_wins():
    rows = []
    for seed in range(4):
        rows += [
            {"noise": 0.2, "fraction": 0.5, "method": "random", "value": 0.60 + 0.001 * seed},
            {"noise": 0.2, "fraction": 0.5, "method": "clear", "value": 0.70 + 0.001 * seed},
            {"noise": 0.2, "fraction": 0.5, "method": "tie", "value": 0.60 + (0.02 if seed % 2 else -0.02)},
        ]
    m = margins(pl.DataFrame(rows))
    verdict = dict(zip(m.get_column("method"), m.get_column("beats_random")))
    assert verdict == {"clear": True, "tie": False}


def test_quality_grid_smoke(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["stages"] = ["quality"]
    cfg["quality"] = {"noise": [0.0, 0.2], "fractions": [0.3, 1.0], "seeds": [0, 1],
                      "curriculum": {"order": "easy_to_hard", "score": "el2n", "pacing": "linear"},
                      "budget": {"unit": "steps", "value": 30}}
    write_config(tmp_path, cfg)
    snakemake(tmp_path)
    rep = tmp_path / "results" / "quality" / "report"
    text = (rep / "quality.md").read_text()
    assert "label noise 0%" in text and "label noise 20%" in text and "el2n_offset_cl" in text
    assert "beats random" in text and "keep 100%" not in text and "**Recommendation at label noise 0%:**" in text
    marg = pl.read_csv(rep / "margins.csv")
    assert set(marg.get_column("method")) == {"el2n_offset", "el2n_offset_cl", "random_cl"}
    assert set(marg.get_column("noise")) == {0.0, 0.2} and (marg.get_column("seeds") == 2).all()
    for png in ("accuracy_vs_fraction.png", "accuracy_vs_compute.png", "noise_dropped.png", "class_mix.png"):
        assert (rep / png).stat().st_size > 5_000
    # the curriculum variant really trains in a different order: same subset, different model
    a = pl.read_parquet(tmp_path / "results/quality/noise20/selections/el2n_offset_keep30.parquet")
    b = pl.read_parquet(tmp_path / "results/quality/noise20/selections/el2n_offset_cl_keep30.parquet")
    assert a.filter(pl.col("selected")).get_column("example_id").to_list() == \
        b.filter(pl.col("selected")).get_column("example_id").to_list()
    assert b.filter(pl.col("selected")).get_column("position").null_count() == 0


def test_quality_grid_with_gradient_feature_methods(tmp_path):
    """Gradient cosine (LESS without Adam) and k-center in the grid: each noise level's run featurizes its own proxies and selects from them."""
    from datasel.features.store import FeatureSet

    cfg = copy.deepcopy(TINY)
    cfg["stages"] = ["quality"]
    cfg["features"] = {"shards": 2, "sets": {"grads": {"seeds": [0], "epochs": [1], "dim": 32}}}
    cfg["scoring"]["gradcos"] = {"method": "target_alignment", "features": "grads", "reduce": "mean", "weights": "uniform"}
    cfg["quality"] = {"noise": [0.0, 0.2], "fractions": [0.3, 1.0], "seeds": [0, 1], "curriculum": None,
                      "policies": {"gradcos_top": {"policy": "top", "score": "gradcos"},
                                   "kcenter": {"policy": "kcenter", "features": "grads"}},
                      "budget": {"unit": "steps", "value": 20}}
    write_config(tmp_path, cfg)
    snakemake(tmp_path)
    marg = pl.read_csv(tmp_path / "results/quality/report/margins.csv")
    assert set(marg.get_column("method")) >= {"gradcos_top", "kcenter"}  # margins over random, added by the grid
    feats, kept = {}, {}
    for noise in (0, 20):
        run = tmp_path / f"results/quality/noise{noise}"
        feats[noise] = FeatureSet.open(run / "features/grads/seed0-epoch1-train/index.json").load()
        sel = pl.read_parquet(run / "selections/gradcos_top_keep30.parquet")
        kept[noise] = sel.filter(pl.col("selected")).get_column("example_id").sort().to_list()
    # the runs differ only in their labels: features of one run must not be reused for the other
    assert feats[0].shape == feats[20].shape and not np.allclose(feats[0], feats[20])
    assert kept[0] != kept[20]
    assert not (tmp_path / "results/features").exists()  # nothing computed for the unused default run


def test_report_names_a_significant_winner_that_is_not_the_best_mean():
    """A high but noisy mean is the best method; a steadier one clears random: the table must say so."""
    from datasel.report.quality import render_markdown

    rows = []
    for seed in range(4):
        rows += [{"noise": 0.2, "fraction": 0.5, "method": "random", "value": 0.60 + 0.001 * seed},
                 {"noise": 0.2, "fraction": 0.5, "method": "noisy", "value": 0.72 + (0.15 if seed % 2 else -0.15)},
                 {"noise": 0.2, "fraction": 0.5, "method": "steady", "value": 0.66 + 0.001 * seed}]
    cells = pl.DataFrame(rows)
    full = pl.DataFrame({"noise": [0.2, 0.2], "value": [0.8, 0.82]})
    text = render_markdown(cells, margins(cells), full)
    # no validation metrics: the choice falls back to test (and says so); the verdict is the chosen method's own
    assert "| 50% | `noisy_keep50` | — |" in text and "| no clear difference |" in text
    assert "Every method that beats random on test (not chosen on validation): steady (kept 50%)." in text
    assert "At every kept fraction some method beats random (Holm-corrected)." in text
    assert text.splitlines()[2].startswith("**Recommendation at label noise 20%:** No selection beats random here")


def test_class_mix_plot_names_the_users_classes(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heat map's columns read the dataset's class names (meta.json `classes`), in label order."""
    import datasel.report.quality as quality

    hists = pl.DataFrame({"method": ["el2n"] * 3, "fraction": [0.5] * 3, "label": [0, 1, 2],
                          "share": [0.5, 0.3, 0.2], "full_share": [0.4, 0.3, 0.3],
                          "class": ["spam", "ham", "eggs"]})
    seen = {}
    monkeypatch.setattr(quality, "save_figure", lambda fig, out, dpi=110: seen.update(
        x=[t.get_text() for t in fig.axes[0].get_xticklabels()], y=[t.get_text() for t in fig.axes[0].get_yticklabels()]))
    quality.plot_class_mix({0.0: hists}, tmp_path / "mix.png")
    assert seen == {"x": ["spam", "ham", "eggs"], "y": ["el2n 50%"]}
