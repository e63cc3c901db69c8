"""Class balance by default, CCS and the filter policy, each against a slow reference written here."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest

from datasel.errors import ConfigError
from datasel.runtime import rng_for
from datasel.scoring import finalize_scores
from datasel.selection.ccs import ccs_select, even_budgets
from datasel.selection.filter import mixture_noise_rate
from datasel.selection.make import make_selection


def _data(labels: list[int], scores: list[float]) -> tuple[pl.DataFrame, pl.DataFrame]:
    ids = [f"e{i:03d}" for i in range(len(labels))]
    ex = pl.DataFrame({"example_id": ids, "split": ["train"] * len(ids), "label": labels})
    return ex, finalize_scores(pl.DataFrame({"example_id": ids, "score": scores}), "s")


def _kept(table: pl.DataFrame) -> list[str]:
    return sorted(table.filter(pl.col("selected")).get_column("example_id").to_list())


# ------------------------------------------------------------------------------------------- class balance


def test_score_policies_keep_the_class_mix_by_default_and_opt_out_stays():
    # class 1 holds all the high scores: a plain top-k would keep only class 1
    labels = [0] * 30 + [1] * 10
    ex, sc = _data(labels, [float(i) for i in range(40)])
    for policy in ("top", "bottom", "offset", "ccs"):
        cfg = {"policy": policy, "offset": 0.1}
        kept = make_selection(ex, sc, "p", cfg, 0.5, 0).filter(pl.col("selected")).join(ex, on="example_id")
        assert dict(kept.group_by("label").len().iter_rows()) == {0: 15, 1: 5}, policy
    plain = make_selection(ex, sc, "p", {"policy": "top", "stratify": False}, 0.5, 0)
    assert _kept(plain) == [f"e{i:03d}" for i in range(20, 40)]  # the 20 highest scores, as before
    # random and the feature policies stay unstratified (no score ranking to correct)
    rand = make_selection(ex, sc, "r", {"policy": "random"}, 0.5, 3)
    ref = np.sort(rng_for(3, "policy:random").choice(40, size=20, replace=False))
    assert _kept(rand) == [f"e{i:03d}" for i in ref]


# ------------------------------------------------------------------------------------------------------ CCS


def _ccs_reference(hardness: np.ndarray, n_keep: int, beta: float, bins: int, seed: int) -> list[int]:
    """The official procedure, loop by loop: prune the hardest, count each equal-width stratum by masks, allocate
    over strata sorted by size, draw a permutation per stratum."""
    n = len(hardness)
    n_prune = min(int(beta * n), n - n_keep)
    order = sorted(range(n), key=lambda i: (-hardness[i], i))
    rest = sorted(order[n_prune:])
    s = [hardness[i] for i in rest]
    lo, hi = min(s), max(s)
    step = (hi - lo) / bins

    def stratum(v: float) -> int:
        return bins - 1 if v == hi else int((v - lo) // step) if step > 0 else 0

    members = [[rest[j] for j, v in enumerate(s) if stratum(v) == k] for k in range(bins)]
    sizes = [len(m) for m in members]
    budgets = [0] * bins
    left = n_keep
    for i, k in enumerate(sorted(range(bins), key=lambda k: (sizes[k], k))):
        budgets[k] = min(sizes[k], left // (bins - i))
        left -= budgets[k]
    rng = rng_for(seed, "policy:ccs")
    out: list[int] = []
    for k in range(bins):
        out += list(rng.permutation(np.array(members[k], dtype=np.int64))[: budgets[k]])
    return sorted(int(i) for i in out)


def test_even_budgets_pass_the_remainder_of_small_strata_on():
    assert even_budgets(np.array([2, 50, 50, 1]), 40).tolist() == [2, 18, 19, 1]
    assert even_budgets(np.array([5, 5, 5]), 9).tolist() == [3, 3, 3]
    assert even_budgets(np.array([3, 0, 100]), 200).tolist() == [3, 0, 100]  # more budget than rows: all kept


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_keep,beta,bins", [(30, 0.1, 5), (60, 0.3, 10), (95, 0.3, 50), (10, 0.0, 1)])
def test_ccs_matches_the_loop_reference(seed, n_keep, beta, bins):
    rng = np.random.default_rng(seed)
    hardness = np.concatenate([rng.exponential(1.0, 80), rng.normal(6, 0.3, 20)])  # a long tail and a mode
    got = ccs_select(hardness, n_keep, beta, bins, seed).tolist()
    assert got == _ccs_reference(hardness, n_keep, beta, bins, seed)
    assert len(got) == n_keep and len(set(got)) == n_keep
    pruned = np.argsort(-hardness, kind="stable")[: min(int(beta * 100), 100 - n_keep)]
    assert not set(pruned.tolist()) & set(got)  # the hardest beta never come back


def test_ccs_covers_the_score_range_where_top_k_does_not():
    hardness = np.linspace(0, 1, 200)
    kept = ccs_select(hardness, 20, 0.1, 10, 0)
    # one example from every tenth of [0, 0.9]: the coverage the paper is after
    assert np.bincount((hardness[kept] / 0.9 * 10).clip(max=9).astype(int), minlength=10).tolist() == [2] * 10


def test_ccs_refuses_bad_settings_by_field():
    with pytest.raises(ConfigError, match="beta"):
        ccs_select(np.arange(10.0), 5, 1.0, 5, 0)
    with pytest.raises(ConfigError, match="bins"):
        ccs_select(np.arange(10.0), 5, 0.1, 0, 0)


# --------------------------------------------------------------------------------------------------- filter


def test_filter_drops_the_flagged_share_and_fills_from_the_rest():
    labels = [i % 2 for i in range(50)]
    ex, sc = _data(labels, [float(i) for i in range(50)])
    full = make_selection(ex, sc, "f", {"policy": "filter", "rate": 0.2}, 1.0, 0)
    assert _kept(full) == [f"e{i:03d}" for i in range(40)]  # the 10 highest scores dropped
    part = make_selection(ex, sc, "f", {"policy": "filter", "rate": 0.2}, 0.5, 4)
    ref = np.sort(rng_for(4, "policy:filter").choice(40, size=25, replace=False))  # rows 10.. of the pool are 39..0
    assert _kept(part) == sorted(f"e{39 - i:03d}" for i in ref)
    with pytest.raises(ConfigError, match="rate"):
        make_selection(ex, sc, "f", {"policy": "filter", "rate": 1.5}, 1.0, 0)


def test_filter_auto_uses_the_detectors_own_flag():
    ex, sc = _data([0] * 10, [float(i) for i in range(10)])
    sc = sc.with_columns(pl.col("example_id").is_in(["e002", "e005"]).alias("label_issue"))
    table = make_selection(ex, sc, "f", {"policy": "filter"}, 1.0, 0)
    assert set(_kept(table)) == {f"e{i:03d}" for i in range(10)} - {"e002", "e005"}


def test_mixture_noise_rate_against_a_slow_em():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(0.2, 0.05, 800), rng.normal(0.9, 0.05, 200)])
    # reference: plain EM for two 1-D Gaussians from a quantile start, then the same posterior > 1/2 rule
    w, mu, var = np.array([0.5, 0.5]), np.quantile(s, [0.25, 0.75]), np.array([s.var()] * 2)
    for _ in range(200):
        dens = w * np.exp(-((s[:, None] - mu) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)
        r = dens / dens.sum(1, keepdims=True)
        w, mu = r.mean(0), (r * s[:, None]).sum(0) / r.sum(0)
        var = (r * (s[:, None] - mu) ** 2).sum(0) / r.sum(0)
    ref = float((r[:, int(np.argmax(mu))] > 0.5).mean())
    rate, why = mixture_noise_rate(s)
    assert rate == pytest.approx(ref, abs=0.002) and rate == pytest.approx(0.2, abs=0.01) and why == ""
    assert mixture_noise_rate(np.ones(5)) == (0.0, "the score is constant")


def test_mixture_noise_rate_refuses_modes_that_are_not_a_noisy_one():
    rng = np.random.default_rng(1)
    # one skewed mode (clean rows of varying difficulty): a 2-Gaussian fit splits it, but the halves overlap
    rate, why = mixture_noise_rate(rng.gamma(2.0, 1.0, 2000))
    assert rate == 0.0 and "overlap" in why
    # two distinct modes where the high one holds 80% of rows: not a noise rate
    rate, why = mixture_noise_rate(np.concatenate([rng.normal(0.0, 0.05, 200), rng.normal(1.0, 0.05, 800)]))
    assert rate == 0.0 and "implausible" in why


def test_filter_with_no_readable_noise_rate_keeps_every_row(caplog):
    rng = np.random.default_rng(2)
    ex, sc = _data([0] * 400, rng.gamma(2.0, 1.0, 400).tolist())
    with caplog.at_level(logging.WARNING):
        table = make_selection(ex, sc, "f", {"policy": "filter"}, 1.0, 0)
    assert len(_kept(table)) == 400
    assert "no row is flagged" in caplog.text


# ------------------------------------------------------------------------------------------- report tables


def test_class_histograms_and_balance_against_counting():
    from datasel.report.subsets import class_balance, class_histograms

    labels = [0] * 6 + [1] * 4
    ids = [f"e{i:03d}" for i in range(10)]
    ex = pl.DataFrame({"example_id": ids + ["v0"], "split": ["train"] * 10 + ["val"], "label": labels + [1]})
    kept = {"e000", "e001", "e006", "e007", "e008", "e009"}  # 2 of class 0, all 4 of class 1
    sel = pl.DataFrame({"selection": "s_keep60", "example_id": ids, "selected": [i in kept for i in ids]})
    h = class_histograms(ex, sel)
    assert h.select("label", "kept", "total").rows() == [(0, 2, 6), (1, 4, 4)]
    assert h.get_column("share").to_list() == pytest.approx([2 / 6, 4 / 6])
    assert h.get_column("full_share").to_list() == pytest.approx([0.6, 0.4])
    b = class_balance(ex, sel).row(0, named=True)
    assert b["class_share_max_gap"] == pytest.approx(100 * abs(4 / 6 - 0.4))
    assert (b["class_kept_min"], b["class_kept_max"]) == pytest.approx((2 / 6, 1.0))


def test_noise_detection_against_pair_counting():
    from datasel.report.subsets import noise_detection

    rng = np.random.default_rng(0)
    n = 60
    noisy = rng.random(n) < 0.3
    score = rng.normal(size=n) + 1.5 * noisy
    ids = [f"e{i:03d}" for i in range(n)]
    ex = pl.DataFrame({"example_id": ids, "split": "train", "is_noisy": noisy})
    flags = score > 1.0
    tables = {"s": pl.DataFrame({"example_id": ids, "score": score, "label_issue": flags})}
    row = noise_detection(ex, tables).row(0, named=True)
    pos, neg = score[noisy], score[~noisy]
    auroc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])  # Mann-Whitney by pairs
    order = np.argsort(-score)
    hits = np.cumsum(noisy[order])
    ap = np.sum(hits[noisy[order]] / (np.flatnonzero(noisy[order]) + 1)) / noisy.sum()  # precision at each hit
    assert row["auroc"] == pytest.approx(auroc) and row["average_precision"] == pytest.approx(ap)
    assert row["flag_recall"] == pytest.approx((flags & noisy).sum() / noisy.sum())
    assert row["flag_precision"] == pytest.approx((flags & noisy).sum() / flags.sum())
    clean = ex.with_columns(pl.lit(False).alias("is_noisy"))
    assert noise_detection(clean, tables).height == 0  # no injected noise: nothing to detect


def test_filtered_full_set_is_compared_with_the_full_noisy_set():
    from datasel.report.quality import against_full, render_extras, welch_ci

    rows = [{"noise": 0.2, "fraction": 1.0, "method": "full", "value": v} for v in (0.80, 0.82, 0.81)]
    rows += [{"noise": 0.2, "fraction": 1.0, "method": "filter_cleanlab", "value": v} for v in (0.84, 0.85, 0.83)]
    rows += [{"noise": 0.2, "fraction": 0.5, "method": "random", "value": 0.7}]
    got = against_full(pl.DataFrame(rows)).row(0, named=True)
    d, lo, hi = welch_ci(np.array([0.84, 0.85, 0.83]), np.array([0.80, 0.82, 0.81]))
    assert got["method"] == "filter_cleanlab" and (got["margin"], got["ci_low"], got["ci_high"]) == \
        pytest.approx((d, lo, hi))
    text = "\n".join(render_extras(0.2, against_full(pl.DataFrame(rows)), None, None))
    assert "| filter_cleanlab | 84.00 | 81.00 | +3.00 [" in text and "| yes |" in text
