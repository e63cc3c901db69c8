"""Selection policies: exact windows, stratification quotas, seeded randomness, curricula and pacing."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from datasel.errors import ConfigError, DataError
from datasel.scoring import finalize_scores
from datasel.selection.curriculum import paced_batches, pacing_fraction
from datasel.selection.make import make_selection


def _data(n: int = 20):
    ids = [f"e{i:02d}" for i in range(n)]
    examples = pl.DataFrame({"example_id": ids, "split": ["train"] * n, "label": [i % 2 for i in range(n)]})
    scores = finalize_scores(pl.DataFrame({"example_id": ids, "score": [float(i) for i in range(n)]}), "s")
    return examples, scores


def _kept(table):
    return sorted(table.filter(pl.col("selected")).get_column("example_id").to_list())


def test_top_bottom_offset_windows():
    ex, sc = _data()  # exact windows over the whole pool: the class quotas (default for score policies) off
    top = make_selection(ex, sc, "t", {"policy": "top", "stratify": False}, 0.25, 0)
    assert _kept(top) == ["e15", "e16", "e17", "e18", "e19"]
    bottom = make_selection(ex, sc, "b", {"policy": "bottom", "stratify": False}, 0.25, 0)
    assert _kept(bottom) == ["e00", "e01", "e02", "e03", "e04"]
    off = make_selection(ex, sc, "o", {"policy": "offset", "offset": 0.1, "stratify": False}, 0.25, 0)
    assert _kept(off) == ["e13", "e14", "e15", "e16", "e17"]  # drop the 2 highest, keep the next 5
    clamped = make_selection(ex, sc, "o", {"policy": "offset", "offset": 18, "stratify": False}, 0.25, 0)
    assert _kept(clamped) == ["e00", "e01", "e02", "e03", "e04"]
    assert top.height == 20 and top.get_column("selection").unique().to_list() == ["t_keep25"]


def test_stratified_keeps_class_proportions():
    ex, sc = _data()
    ex = ex.with_columns(pl.when(pl.col("example_id") < "e15").then(0).otherwise(1).alias("label"))
    table = make_selection(ex, sc, "t", {"policy": "top", "stratify": True}, 0.4, 0)
    kept = table.filter(pl.col("selected")).join(ex, on="example_id")
    counts = dict(kept.group_by("label").len().iter_rows())
    assert counts == {0: 6, 1: 2}  # 15:5 classes, 8 kept → 6:2
    assert _kept(table)[-2:] == ["e18", "e19"]


def test_random_is_seeded_and_ignores_scores():
    ex, sc = _data(100)
    a = make_selection(ex, sc, "r", {"policy": "random"}, 0.3, 7)
    b = make_selection(ex, None, "r", {"policy": "random"}, 0.3, 7)
    c = make_selection(ex, None, "r", {"policy": "random"}, 0.3, 8)
    assert _kept(a) == _kept(b) != _kept(c) and len(_kept(a)) == 30


def test_curriculum_positions_follow_score():
    ex, sc = _data()
    cfg = {"policy": "bottom", "curriculum": {"order": "hard_to_easy", "score": "s"}}
    table = make_selection(ex, sc, "c", cfg, 0.5, 0, order_scores=sc)
    kept = table.filter(pl.col("selected")).sort("position")
    assert kept.get_column("example_id").to_list() == [f"e{i:02d}" for i in range(9, -1, -1)]
    assert table.filter(~pl.col("selected")).get_column("position").null_count() == 10


def test_pacing_is_monotone_and_reaches_one():
    for kind in ("linear", "root", "step"):
        cfg = {"pacing": kind, "start": 0.2, "end": 0.8}
        values = [pacing_fraction(t / 100, cfg) for t in range(101)]
        assert values[0] == pytest.approx(0.2) and values[-1] == 1.0
        assert all(b >= a for a, b in zip(values, values[1:]))
    order = torch.arange(100)
    sampler = paced_batches(order, 10, 100, {"pacing": "linear", "start": 0.1, "end": 0.5})
    first = next(sampler(0, torch.Generator().manual_seed(0)))
    assert first.max() < 10  # the first batch only sees the first 10% of the curriculum


def test_bad_selection_inputs():
    ex, sc = _data()
    with pytest.raises(ConfigError, match="outside"):
        make_selection(ex, sc, "t", {"policy": "top"}, 1.5, 0)
    with pytest.raises(ConfigError, match="unknown selection policy"):
        make_selection(ex, sc, "t", {"policy": "nope"}, 0.5, 0)
    with pytest.raises(DataError, match="no score"):
        make_selection(ex, sc.head(5), "t", {"policy": "top"}, 0.5, 0)
    with pytest.raises(ConfigError, match="needs a score"):
        make_selection(ex, None, "t", {"policy": "top"}, 0.5, 0)


def test_random_selection_is_independent_of_the_noise_draw(tiny_examples):
    # noise seed 0 and selection seed 0: a shared stream would make random 20% exactly the 20% flipped rows
    df, _ = tiny_examples
    table = make_selection(df, None, "random", {"policy": "random"}, 0.2, 0)
    kept = table.filter(pl.col("selected")).join(df.select("example_id", "is_noisy"), on="example_id")
    share = kept.get_column("is_noisy").mean()
    assert 0.08 < share < 0.32  # binomial(86, 0.2): far inside ±4 sd
