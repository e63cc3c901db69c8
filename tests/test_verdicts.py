"""The report's answer: chosen on validation and judged on test, Holm-corrected against random, one recommendation
sentence; random subsets that differ per training seed; the `easy` policy. Hand-made tables, known answers."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from datasel.report.summary import (
    best_against_random,
    build_document,
    margins_on_test,
    run_warnings,
    summarize,
    verdict_columns,
)
from datasel.report.verdicts import holm, margins, recommendation
from datasel.selection.draws import one_draw
from datasel.selection.make import make_selection

SPREAD = (-0.015, -0.005, 0.005, 0.015)  # four training seeds around each mean


def metrics(test: dict[tuple[str, float], float], val: dict[tuple[str, float], float] | None = None) -> pl.DataFrame:
    """A metrics table: per (method, fraction) four seeds at mean + SPREAD, on test and (where given) val."""
    rows = []
    for split, means in (("test", test), ("val", val or {})):
        for (method, fraction), mean in means.items():
            for seed, d in enumerate(SPREAD):
                rows.append({"selection": f"{method}_keep{round(100 * fraction)}", "method": method,
                             "fraction": fraction, "seed": seed, "split": split, "metric": "accuracy",
                             "value": mean + d})
    return pl.DataFrame(rows)


def test_best_method_is_chosen_on_validation_and_judged_on_test():
    # at 50%: `peek` has the best test accuracy, `steady` the best validation accuracy: steady is named, and the
    # margin stated is steady's *test* margin (4 points), not peek's 10
    m = metrics({("random", 0.5): 0.70, ("peek", 0.5): 0.80, ("steady", 0.5): 0.74, ("full", 1.0): 0.85},
                {("random", 0.5): 0.70, ("peek", 0.5): 0.69, ("steady", 0.5): 0.75, ("full", 1.0): 0.85})
    (best,) = best_against_random(m)
    assert best["selection"] == "steady_keep50" and best["chosen_on"] == "validation accuracy"
    assert best["margin"] == pytest.approx(0.04) and best["choice_mean"] == pytest.approx(0.75)
    # without validation rows the choice falls back to test and says so (never passed off as validated)
    (fallback,) = best_against_random(m.filter(pl.col("split") == "test"))
    assert fallback["selection"] == "peek_keep50" and fallback["chosen_on"].startswith("test accuracy (no validation")
    md = build_document(summarize(m), [best], run_warnings(m)).markdown()
    assert "## Selection per kept fraction: chosen on validation accuracy, judged on test against random" in md


def _welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch p-value from the textbook formula (not scipy's ttest_ind)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * stats.t.sf(abs(t), dof)


def test_holm_verdict_matches_a_hand_computation():
    means = {("random", 0.5): 0.715, ("a", 0.5): 0.76, ("b", 0.5): 0.741, ("c", 0.5): 0.739}
    m = metrics(means)
    vals = {k[0]: v + np.array(SPREAD) for k, v in means.items()}
    p = {name: _welch_p(vals[name], vals["random"]) for name in "abc"}
    # uncorrected, all three clear 5%
    assert all(v < 0.05 for v in p.values())
    # Holm by hand, m = 3: the smallest p against 0.05/3, the next against 0.05/2, the last against 0.05/1; stop
    # at the first that fails
    ordered = sorted(p, key=p.get)
    assert ordered == ["a", "b", "c"]
    assert p["a"] < 0.05 / 3 and not p["b"] < 0.05 / 2  # so Holm rejects a only; c is not tested
    expected = {"a": "beats random", "b": "no clear difference", "c": "no clear difference"}
    out = margins(m.filter(pl.col("split") == "test"))
    assert dict(zip(out.get_column("method"), out.get_column("verdict"))) == expected
    assert (out.get_column("family_size") == 3).all()
    row = {r["method"]: r for r in out.iter_rows(named=True)}
    assert row["a"]["p_value"] == pytest.approx(p["a"], rel=1e-9)
    assert row["a"]["p_holm"] == pytest.approx(3 * p["a"], rel=1e-9)
    assert row["b"]["p_holm"] == pytest.approx(max(3 * p["a"], 2 * p["b"]), rel=1e-9)
    assert row["c"]["p_holm"] == pytest.approx(max(2 * p["b"], p["c"]), rel=1e-9)
    # a's interval is at its Holm step's level (Bonferroni's 1 - 0.05/3) and clears zero; b's and c's (after the
    # stop, at the stopping step's level 1 - 0.05/2) contain it, as their verdicts say
    assert row["a"]["ci_level"] == pytest.approx(1 - 0.05 / 3) and row["a"]["ci_low"] > 0
    for name in "bc":
        assert row[name]["ci_level"] == pytest.approx(1 - 0.05 / 2) and row[name]["ci_low"] < 0 < row[name]["ci_high"]
    # the interval is Welch's at that level
    d = vals["a"].mean() - vals["random"].mean()
    va, vb = vals["a"].var(ddof=1) / 4, vals["random"].var(ddof=1) / 4
    dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 3)
    half = stats.t.ppf(1 - 0.05 / 6, dof) * math.sqrt(va + vb)
    assert (row["a"]["ci_low"], row["a"]["ci_high"]) == pytest.approx((d - half, d + half), rel=1e-9)


def test_holm_adjusted_p_values_are_monotone_and_keep_input_order():
    adjusted, levels, rejected = holm([0.04, 0.001, 0.03, 0.5])
    assert adjusted == pytest.approx([0.09, 0.004, 0.09, 0.5])  # max(4*.001, 3*.03, 2*.04) = .09 for both
    assert rejected == [False, True, False, False] and levels[1] == pytest.approx(1 - 0.05 / 4)


WIN = {("random", 0.3): 0.70, ("good", 0.3): 0.78, ("meh", 0.3): 0.70, ("random", 0.5): 0.75,
       ("good", 0.5): 0.76, ("meh", 0.5): 0.75, ("full", 1.0): 0.85}


def test_recommendation_names_a_winner_chosen_on_validation():
    m = metrics(WIN, WIN)
    best = best_against_random(m)
    text = recommendation(best, run_warnings(m))
    assert text.startswith("Train on `good_keep30` (kept 30%): +8.00 [")
    assert "points over random on test (Holm-corrected over 2 methods), chosen on validation accuracy." in text
    # the csv carries the same answer on every row, and flags the recommended and the chosen selections
    table = verdict_columns(summarize(m), margins_on_test(m), best, text, [])
    assert set(table.get_column("recommendation")) == {text}
    assert table.filter(pl.col("recommended")).get_column("selection").to_list() == ["good_keep30"]
    assert sorted(table.filter(pl.col("chosen_on_validation")).get_column("selection")) == ["good_keep30",
                                                                                          "good_keep50"]
    assert table.filter(pl.col("selection") == "meh_keep30").item(0, "verdict") == "no clear difference"


def test_recommendation_when_nothing_beats_random():
    # `loser` has the best validation accuracy at 50% but loses to random on test: it is never called best
    means = {("random", 0.3): 0.70, ("loser", 0.3): 0.69, ("random", 0.5): 0.75, ("loser", 0.5): 0.70,
             ("full", 1.0): 0.85}
    val = {**means, ("random", 0.5): 0.74, ("loser", 0.5): 0.80}
    m = metrics(means, val)
    text = recommendation(best_against_random(m), run_warnings(m))
    assert text.startswith("No selection beats random here: use a random 50% subset (or the full data)")
    assert "`loser`, is -5.00 [" in text and "(loses to random)" in text
    assert "Train on" not in text


def test_recommendation_warns_when_the_model_is_under_trained():
    # a random half does as well as the full data: more data does not help with this budget
    means = {**WIN, ("full", 1.0): 0.74}
    m = metrics(means, means)
    warnings = run_warnings(m)
    assert len(warnings) == 1 and warnings[0].startswith(
        "under-trained: a random 50% subset reaches 75.00% test accuracy, at least the full data's 74.00%")
    text = recommendation(best_against_random(m), warnings)
    assert text.startswith("Train on `good_keep30`") and text.endswith(
        "But the model is under-trained (see the warnings): raise training.budget before acting on this.")
    assert run_warnings(metrics(WIN, WIN)) == []


def test_a_random_half_at_the_full_datas_ceiling_is_saturation_not_under_training():
    # every subset and the full data reach 100%: the task needs no more data, the budget is not the problem
    means = {k: 1.0 for k in WIN} | {("full", 1.0): 1.0}
    m = metrics(means, means)
    warnings = run_warnings(m)
    assert len(warnings) == 1 and warnings[0].startswith(
        "saturated: a random 50% subset reaches 100.00% test accuracy, as the full data does (100.00%)")
    text = recommendation(best_against_random(m), warnings)
    assert text.startswith("No selection beats random here") and "under-trained" not in text
    assert text.endswith("The task is saturated (see the warnings): a random subset already matches the full data.")


def test_a_random_half_matching_a_converged_full_run_is_redundancy_not_under_training():
    # the full data's curve had flattened: more steps would not help, so the budget is not what the margin misses
    means = {**WIN, ("full", 1.0): 0.74}
    m = metrics(means, means)
    flat_warnings = run_warnings(m, full_flat=True)
    assert len(flat_warnings) == 1 and flat_warnings[0].startswith(
        "redundant: a random 50% subset reaches 75.00% test accuracy, at least the full data's 74.00%, and the full "
        "data's validation accuracy was flat")
    text = recommendation(best_against_random(m), flat_warnings)
    assert "under-trained" not in text and text.endswith("which had stopped improving.")
    # a rising curve, or none, leaves the budget as the suspect
    assert run_warnings(m, full_flat=False)[0].startswith("under-trained")
    assert run_warnings(m, full_flat=None)[0].startswith("under-trained")


def test_on_instruction_data_a_random_subset_beating_the_full_pool_is_dilution_not_under_training():
    # the pool is mostly other tasks: the full pool is no ceiling on the target task, whatever the budget
    means = {**WIN, ("full", 1.0): 0.74}
    m = metrics(means, means)
    warnings = run_warnings(m, off_target=True)
    assert len(warnings) == 1 and warnings[0].startswith(
        "diluted: a random 50% subset reaches 75.00% test accuracy, at least the full data's 74.00% on the target task")
    text = recommendation(best_against_random(m), warnings)
    assert "under-trained" not in text and "raise training.budget" not in text
    assert run_warnings(metrics(WIN, WIN), off_target=True) == []  # the full pool ahead: nothing to say


def test_a_curve_is_flat_unless_it_rose_over_the_second_half_of_training():
    from datasel.report.curves import flat

    def curve(values: list[float]) -> pl.DataFrame:
        return pl.DataFrame([{"selection": "full_keep100", "method": "full", "fraction": 1.0, "seed": s,
                              "step": 10 * (i + 1), "steps": 10 * len(values), "split": "val", "metric": "accuracy",
                              "value": v} for s in range(3) for i, v in enumerate(values)])

    assert flat(curve([0.5, 0.7, 0.72, 0.72]), "full", 1.0) is False  # +2 points since step 20 of 40
    assert flat(curve([0.5, 0.72, 0.72, 0.725]), "full", 1.0) is True
    # flat over the last interval only (a decayed learning rate), rising over the second half: not a plateau
    assert flat(curve([0.39, 0.41, 0.42, 0.45, 0.45]), "full", 1.0) is False
    assert flat(None, "full", 1.0) is None and flat(curve([0.5, 0.6]), "el2n", 0.5) is None


def _examples(n: int = 60) -> pl.DataFrame:
    return pl.DataFrame({"example_id": [f"e{i:03d}" for i in range(n)], "split": "train",
                         "label": [i % 3 for i in range(n)]})


def test_random_subsets_differ_across_training_seeds_and_repeat_for_the_same_seed():
    ex = _examples()
    sel = make_selection(ex, None, "random", {"policy": "random"}, 0.5, seed=7, draws=[0, 1, 2])
    kept = {d: one_draw(sel, d).filter(pl.col("selected")).get_column("example_id").to_list() for d in (0, 1, 2)}
    assert all(len(v) == 30 for v in kept.values())
    assert kept[0] != kept[1] and kept[1] != kept[2] and kept[0] != kept[2]
    again = make_selection(ex, None, "random", {"policy": "random"}, 0.5, seed=7, draws=[2, 0, 1])
    assert again.equals(sel)  # same config, same ids, whatever order the seeds are listed in
    # the default draw (export, show) is the smallest training seed's; a missing one is refused
    assert one_draw(sel).equals(one_draw(sel, 0))
    with pytest.raises(Exception, match="no draw for training seed 5"):
        one_draw(sel, 5)
    # a deterministic policy ignores the draws: one subset, no draw column, the table it always wrote
    scores = pl.DataFrame({"example_id": ex.get_column("example_id"), "score": np.arange(60.0),
                           "rank": np.arange(60, 0, -1)})
    top = make_selection(ex, scores, "top", {"policy": "top", "score": "s"}, 0.5, seed=7, draws=[0, 1, 2])
    assert "draw" not in top.columns and top.equals(make_selection(ex, scores, "top", {"policy": "top"}, 0.5, 7))


def test_easy_keeps_the_lowest_scores_of_each_class():
    ex = _examples()
    rng = np.random.default_rng(0)
    s = rng.normal(size=60) + np.array([5.0 * (i % 3) for i in range(60)])  # classes at different score levels
    order = np.argsort(-s, kind="stable")
    rank = np.empty(60, dtype=np.int64)
    rank[order] = np.arange(1, 61)
    scores = pl.DataFrame({"example_id": ex.get_column("example_id"), "score": s, "rank": rank})
    sel = make_selection(ex, scores, "easy", {"policy": "easy", "score": "s"}, 0.5, seed=0)
    kept = set(sel.filter(pl.col("selected")).get_column("example_id"))
    expected = set()
    for c in range(3):
        rows = [i for i in range(60) if i % 3 == c]
        expected |= {f"e{i:03d}" for i in sorted(rows, key=lambda i: s[i])[:10]}  # the 10 lowest of each class
    assert kept == expected
    bottom = make_selection(ex, scores, "easy", {"policy": "bottom", "score": "s"}, 0.5, seed=0)
    assert bottom.equals(sel)  # bottom is the same policy under its older name


def test_class_balance_table_only_when_a_share_moves_a_point():
    m = metrics(WIN, WIN)
    hist = pl.DataFrame({"selection": ["good_keep30"] * 2, "label": [0, 1], "share": [0.505, 0.495],
                         "full_share": [0.5, 0.5], "class": ["0", "1"]})
    md = build_document(summarize(m), best_against_random(m), [], histograms=hist).markdown()
    assert "within 1 point (largest move 0.5 points)" in md and "## Class balance" not in md
    moved = hist.with_columns(pl.Series("share", [0.52, 0.48]))
    md = build_document(summarize(m), best_against_random(m), [], histograms=moved).markdown()
    assert "## Class balance: share of each class in each subset (%)" in md


def test_run_exit_summary_prints_the_recommendation_from_summary_csv(tmp_path):
    import time

    from datasel.runfolder import answer_lines

    assert answer_lines(tmp_path, time.time()) == []  # no summary (a features-only run): nothing printed
    m = metrics({**WIN, ("full", 1.0): 0.74}, WIN)
    best, warnings = best_against_random(m), run_warnings(m)
    text = recommendation(best, warnings)
    path = tmp_path / "results" / "report" / "summary.csv"
    path.parent.mkdir(parents=True)
    verdict_columns(summarize(m), margins_on_test(m), best, text, warnings).write_csv(path)
    lines = answer_lines(tmp_path, time.time() - 60)
    assert lines[0] == f"datasel: {text}  (results/report/summary.csv, written by this run)"
    assert lines[1].startswith("datasel: warning: under-trained: a random 50% subset") and len(lines) == 2
    assert "not rebuilt by this run" in answer_lines(tmp_path, time.time() + 60)[0]


def test_quality_report_class_mix_table_only_when_a_share_moves_a_point():
    from datasel.report.quality import render_extras

    balance = pl.DataFrame({"method": ["el2n", "random"], "fraction": [0.5, 0.5], "class_share_max_gap": [0.4, 0.9]})
    text = "\n".join(render_extras(0.0, None, None, balance))
    assert "within 1 point (largest move 0.9 points)" in text and "| method |" not in text
    text = "\n".join(render_extras(0.0, None, None, balance.with_columns(pl.Series("class_share_max_gap", [3.0, 0.9]))))
    assert "Class mix gap" in text and "| el2n | 3.0 |" in text
