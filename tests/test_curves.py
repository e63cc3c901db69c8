"""Training curves: recorded at evenly spaced steps without changing training, and the "still rising" warning."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from conftest import TINY

from datasel.errors import ConfigError
from datasel.report.curves import RISING_PREFIX, last_rise, rising_warning
from datasel.report.verdicts import recommendation
from datasel.store import read_table, write_table
from datasel.training.curves import CurveRecorder, curve_points, curve_steps


def test_curve_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert curve_steps(10, 5) == [2, 4, 6, 8, 10]
    assert curve_steps(7, 3) == [3, 5, 7]
    assert curve_steps(2, 5) == [1, 2]  # fewer steps than points: every step once
    assert curve_steps(10, 0) == [] and curve_steps(0, 5) == []


def test_curve_points_is_checked():
    assert curve_points({}) == 5 and curve_points({"curve_points": 0}) == 0
    for bad in (-1, 2.5, True, "5"):
        with pytest.raises(ConfigError) as e:
            curve_points({"curve_points": bad})
        assert e.value.field == "training.curve_points"


def _run_train(tmp_path, tiny_examples, curve: int, tag: str, seeds=(0, 1)) -> tuple[list[pl.DataFrame], list]:
    """The train step over ``seeds`` as the train rule runs it (metrics then curves outputs, one process)."""
    from types import SimpleNamespace

    from test_bad_input import fake_job

    from datasel.pipeline import train
    from datasel.selection.make import make_selection
    from datasel.snakemake_entry import over_outputs, run_step

    df, meta = tiny_examples
    res = tmp_path / "results"
    if not (res / "sel.parquet").exists():
        write_table(df, res / "examples.parquet", "examples")
        (res / "meta.json").write_text(json.dumps(meta))
        write_table(make_selection(df, None, "random", {"policy": "random"}, 0.5, 0), res / "sel.parquet",
                    "selections")
    training = {**TINY["training"], "budget": {"unit": "steps", "value": 12}, "curve_points": curve}
    outs = {**{f"m{s}": str(tmp_path / tag / f"metrics{s}.parquet") for s in seeds},
            **{f"c{s}": str(tmp_path / tag / f"curves{s}.parquet") for s in seeds}}
    smk = fake_job(tmp_path, f"train_{tag}", params=SimpleNamespace(seeds=list(seeds)),
                   output=[outs[f"m{s}"] for s in seeds] + [outs[f"c{s}"] for s in seeds])
    run_step(smk, over_outputs(lambda s, seed, own: train(
        res / "examples.parquet", res / "meta.json", res / "sel.parquet", own[0], training, int(seed),
        "random_keep50", {"method": "random", "fraction": 0.5}, curves_out=own[1]), "seed", "seeds"))
    return ([read_table(outs[f"m{s}"], "metrics") for s in seeds],
            [read_table(outs[f"c{s}"], "curves") for s in seeds])


def test_a_training_run_records_its_curve_and_trains_exactly_as_without(tmp_path, tiny_examples):
    metrics, curves = _run_train(tmp_path, tiny_examples, 4, "on")
    plain, empty = _run_train(tmp_path, tiny_examples, 0, "off")
    for s, (c, m) in enumerate(zip(curves, metrics)):
        assert c.get_column("seed").unique().to_list() == [s]
        acc = c.filter(pl.col("metric") == "accuracy").sort("step")
        assert acc.get_column("step").to_list() == [3, 6, 9, 12]
        assert set(c.get_column("split").to_list()) == {"val"} and c.get_column("steps").unique().to_list() == [12]
        # the last point is the final model: the metrics table's validation accuracy and loss, to the bit
        for metric in ("accuracy", "loss"):
            final = m.filter((pl.col("split") == "val") & (pl.col("metric") == metric)).item(0, "value")
            assert c.filter(pl.col("metric") == metric).sort("step").get_column("value").to_list()[-1] == final
    # evaluating along the way changes nothing in training: the final metrics equal a run without a curve
    for a, b in zip(metrics, plain):
        assert a.equals(b)
    assert all(e.height == 0 for e in empty) and set(empty[0].columns) >= set(curves[0].columns)
    # seeds differ (the curve is per seed, not one curve copied)
    assert not curves[0].get_column("value").equals(curves[1].get_column("value"))


def test_curve_recorder_restores_training_mode_and_sees_the_model_as_it_is():
    torch.manual_seed(0)
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))
    rec = CurveRecorder(x, y, points=2)
    model.train()
    rec(1, 4, model)  # not a curve step
    assert rec.rows == []
    rec(2, 4, model)
    assert model.training and [r["step"] for r in rec.rows] == [2, 2]
    with torch.no_grad():
        expected = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert rec.rows[0]["metric"] == "accuracy" and rec.rows[0]["value"] == pytest.approx(expected)


def _curve_table(method: str, fraction: float, per_seed: list[list[float]]) -> pl.DataFrame:
    rows = [{"selection": "", "method": method, "fraction": fraction, "seed": s, "step": 10 * (i + 1), "steps": 50,
             "split": "val", "metric": "accuracy", "value": v}
            for s, values in enumerate(per_seed) for i, v in enumerate(values)]
    return pl.DataFrame(rows)


def test_still_rising_warns_on_a_rising_curve_and_not_on_a_flat_one():
    rising = _curve_table("full", 1.0, [[0.5, 0.7, 0.8, 0.85, 0.88]] * 3)
    flat = _curve_table("el2n_top", 0.5, [[0.5, 0.8, 0.86, 0.875, 0.878], [0.5, 0.8, 0.86, 0.877, 0.874],
                                          [0.5, 0.8, 0.86, 0.876, 0.879]])
    curves = pl.concat([rising, flat])
    r = last_rise(curves, "full", 1.0)
    assert r["rise"] == pytest.approx(0.03) and r["rose_share"] == 1.0 and r["steps"] == 10
    w = rising_warning(curves, [("full", 1.0), ("el2n_top", 0.5)])
    assert w.startswith(RISING_PREFIX) and "`full_keep100` rose from 85.00% to 88.00%" in w
    assert "el2n_top" not in w
    assert rising_warning(flat, [("el2n_top", 0.5)]) is None
    # the threshold is the config's: a 3-point rise is not "clearly rising" at 5 points
    assert rising_warning(curves, [("full", 1.0)], points=5.0) is None
    assert rising_warning(curves, [("full", 1.0)], points=3.0) is not None
    assert rising_warning(None, [("full", 1.0)]) is None


def test_one_seed_jumping_does_not_make_a_curve_rising():
    # mean rise 2 points, but carried by one seed of three: not a majority
    one_jump = _curve_table("full", 1.0, [[0.8, 0.80], [0.8, 0.79], [0.8, 0.87]])
    assert last_rise(one_jump, "full", 1.0)["rise"] == pytest.approx(0.02)
    assert rising_warning(one_jump, [("full", 1.0)]) is None


def test_the_recommendation_tells_to_train_longer_when_accuracy_still_rises():
    best = [{"method": "el2n_top", "fraction": 0.5, "margin": 0.02, "ci_low": 0.01, "ci_high": 0.03,
             "beats_random": True, "family_size": 2, "chosen_on": "validation accuracy", "choice_mean": 0.9,
             "choice_higher": True, "accuracy_mean": 0.9, "random_mean": 0.88, "verdict": "beats random",
             "random_choice_mean": 0.88}]
    warning = rising_warning(_curve_table("full", 1.0, [[0.5, 0.7]] * 2), [("full", 1.0)])
    text = recommendation(best, [warning])
    assert text.startswith("Train on `el2n_top_keep50`") and "still rising" in text and "train longer" in text
    assert "still rising" not in recommendation(best, [])


def test_the_summary_warns_and_draws_the_curves_from_the_curve_tables(tmp_path, tiny_examples):
    from test_report import _report_files

    from datasel.report.build import report

    inputs, out = _report_files(tmp_path, tiny_examples[0])
    rising = _curve_table("full", 1.0, [[0.5, 0.7, 0.8, 0.85, 0.88]] * 3)
    flat = _curve_table("el2n_top", 0.3, [[0.5, 0.8, 0.8, 0.8, 0.8]] * 3)
    for name, table in (("full", rising), ("el2n", flat)):
        write_table(table, tmp_path / "curves" / f"{name}.parquet", "curves")
    curves = [str(tmp_path / "curves" / "full.parquet"), str(tmp_path / "curves" / "el2n.parquet")]
    out["curves_plot"] = str(tmp_path / "report" / "curves.png")
    report(**inputs, **out, curves=curves, rising_points=1.0)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "train longer (training.budget)" in md.split("## ")[0]  # the advice is in the recommendation
    assert "`full_keep100` rose from 85.00% to 88.00%" in md
    assert "el2n_top_keep30` rose" not in md
    assert (tmp_path / "report" / "curves.png").stat().st_size > 1000
    # the same full-data curve under a 5-point threshold: no warning, no advice
    report(**inputs, **out, curves=curves, rising_points=5.0)
    assert "still rising" not in (tmp_path / "report" / "summary.md").read_text()
