"""Workflow steps called as plain functions, the way a notebook or another runner would: typed arguments in, the
rule's files out, no Snakemake object. Each checks a property the step's inputs decide."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import TINY, AnyJob, recording, script_step

from datasel.errors import ConfigError
from datasel.scoring.base import finalize_scores
from datasel.selection.make import make_selection
from datasel.store import read_table, write_table

ACCURACY = {"random": 0.80, "el2n": 0.86, "full": 0.90}  # test accuracy per method, ± 0.01 over three seeds


def _examples(tmp: Path, df: pl.DataFrame, meta: dict) -> Path:
    path = tmp / "examples" / "examples.parquet"
    write_table(df, path, "examples")
    path.with_name("meta.json").write_text(json.dumps(meta))
    return path


def _noise_score(df: pl.DataFrame) -> pl.DataFrame:
    """A score that ranks every clean training example above every noisy one (ties broken by id)."""
    train = df.filter(pl.col("split") == "train")
    return finalize_scores(train.select("example_id", (~pl.col("is_noisy")).cast(pl.Float64).alias("score")), "s")


def _metrics(selection: str, method: str, fraction: float, shift: float) -> pl.DataFrame:
    rows = [{"selection": selection, "method": method, "fraction": fraction, "seed": seed, "split": split,
             "metric": metric, "value": value}
            for seed, d in enumerate((-0.01, 0.0, 0.01))
            for split, metric, value in (("test", "accuracy", ACCURACY[method] + shift + d),
                                         ("val", "accuracy", ACCURACY[method] + shift + d),
                                         ("train", "steps", 10.0))]
    return pl.DataFrame(rows).with_columns(pl.col("seed").cast(pl.Int64))


def test_quality_report_step_reads_each_run_at_its_noise_level(tmp_path, tiny_examples):
    """Two runs, the second with el2n 5 points lower: the margins table pairs each run's tables with its own noise
    level, the regime reaches the page, and the optional plots are drawn only when asked for."""
    from datasel.report.quality import quality_report

    df, meta = tiny_examples
    examples = _examples(tmp_path, df, meta)
    score = tmp_path / "scores" / "s.parquet"
    write_table(_noise_score(df), score, "scores")
    metrics, selections = [], []
    for noise, shift in ((0.0, 0.0), (0.2, -0.05)):
        run = tmp_path / f"noise{round(100 * noise)}"
        m, s = [], []
        for name, method, fraction in (("random_keep50", "random", 0.5), ("el2n_keep50", "el2n", 0.5),
                                       ("full_keep100", "full", 1.0)):
            write_table(_metrics(name, method, fraction, shift if method == "el2n" else 0.0),
                        run / "metrics" / f"{name}.parquet", "metrics")
            sel = make_selection(df, read_table(score, "scores") if method == "el2n" else None, name,
                                 {"policy": "top", "score": "s"} if method == "el2n" else {"policy": method},
                                 fraction, 0)
            write_table(sel, run / "selections" / f"{name}.parquet", "selections")
            m.append(run / "metrics" / f"{name}.parquet")
            s.append(run / "selections" / f"{name}.parquet")
        metrics.append(m)
        selections.append(s)
    out = {k: tmp_path / "report" / f"{k}.{'csv' if k == 'csv' else 'md' if k == 'md' else 'png'}"
           for k in ("md", "csv", "accuracy", "compute", "noise_plot")}
    quality_report([0.0, 0.2], metrics, selections, [examples, examples], scores=[[], [score]], regime="tiny: test",
                   batch_size=32, margin=tmp_path / "report" / "margin.png", **out)
    marg = pl.read_csv(out["csv"]).filter(pl.col("method") == "el2n").sort("noise")
    assert marg.get_column("noise").to_list() == [0.0, 0.2]
    assert marg.get_column("margin").to_list() == pytest.approx([0.06, 0.01])
    assert marg.get_column("random_mean").to_list() == pytest.approx([0.80, 0.80])
    text = out["md"].read_text()
    assert "Regime: tiny: test." in text and "label noise 0%" in text and "label noise 20%" in text
    assert "Finding the injected noisy labels" in text  # the noisy run's score table was read
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        [p.name for p in out.values()] + ["margin.png"])  # no class_mix plot: not asked for


def test_alchemist_diagnostics_step_on_a_score_that_separates_the_noise(tmp_path, tiny_examples):
    from datasel.meta.diagnostics import run_diagnostics

    df, meta = tiny_examples
    examples = _examples(tmp_path, df, meta)
    score = tmp_path / "scores" / "s.parquet"
    write_table(_noise_score(df), score, "scores")
    metrics, plot = tmp_path / "metrics" / "alchemist_rating.parquet", tmp_path / "plots" / "alchemist.png"
    run_diagnostics(examples, [score], {"scores": ["sep"], "bins": 5}, metrics=metrics, plot=plot,
                    policy={"policy": "shift_gsampling", "drop_top": 0.1, "mu": 0.5, "sigma": 0.15})
    table = read_table(metrics, "metrics")
    assert set(table.get_column("selection")) == {"sep"}
    auc = table.filter(pl.col("metric") == "auc_clean_high").get_column("value").to_list()
    assert auc == [pytest.approx(1.0)]
    shares = table.filter(pl.col("metric") == "noisy_share").sort("fraction").get_column("value").to_list()
    train = df.filter(pl.col("split") == "train")
    noisy = int(train.get_column("is_noisy").sum())
    assert len(shares) == 5 and shares[0] == 0.0 and shares[-1] == pytest.approx(min(1.0, noisy / (train.height / 5)),
                                                                                  abs=0.02)
    assert plot.stat().st_size > 5_000


def test_cures_report_step_summarizes_each_run(tmp_path):
    from datasel.report.cures_plots import report_step

    rows = [{"selection": run, "method": run, "fraction": 1.0, "seed": 0, "split": "test", "metric": "accuracy",
             "value": v, "rollouts": r}
            for run, curve in (("grpo", (0.1, 0.3, 0.5)), ("cures", (0.2, 0.5, 0.6)))
            for r, v in zip((0, 100, 200), curve)]
    metrics = tmp_path / "metrics.parquet"
    write_table(pl.DataFrame(rows).with_columns(pl.col("seed", "rollouts").cast(pl.Int64)), metrics, "metrics")
    stats = tmp_path / "stats.parquet"
    write_table(pl.DataFrame({"run": ["cures_seed0", "grpo_seed0"], "iteration": [0, 0], "prompt_id": ["p", "p"],
                              "alpha": 1.0, "beta": 1.0, "p_hat": 0.5, "sigma": 0.1, "rho": 1.0, "rollouts": [4, 4]}),
                stats, "prompt_stats")
    out = {k: tmp_path / "out" / name for k, name in
           (("accuracy", "acc.png"), ("difficulty", "diff.png"), ("summary", "summary.json"))}
    report_step([metrics], [stats], **out)
    summary = json.loads(out["summary"].read_text())
    assert summary["grpo"]["final_mean"] == pytest.approx(0.5)
    assert summary["cures"]["rollouts_to_baseline_final"] == 100.0  # reaches grpo's final 0.5 at 100 rollouts
    assert summary["grpo"]["speedup_vs_baseline"] == 1.0 and summary["cures"]["speedup_vs_baseline"] == 2.0
    assert out["accuracy"].stat().st_size > 5_000 and out["difficulty"].stat().st_size > 5_000


def test_cures_speedup_is_against_the_rollouts_grpo_itself_needed():
    """GRPO reaching its final accuracy before its last iteration is the reference, not the whole budget: a
    curriculum that gets there later is slower, whatever the budget."""
    from datasel.report.cures_plots import summarize

    curves = {"grpo": ((0, 0.3), (64, 0.5), (128, 0.5), (256, 0.5)), "cures": ((0, 0.3), (64, 0.4), (192, 0.5),
                                                                               (256, 0.5))}
    acc = pl.DataFrame([{"selection": run, "seed": 0, "rollouts": r, "value": v} for run, pts in curves.items()
                        for r, v in pts])
    s = summarize(acc)
    assert s["grpo"]["rollouts_to_baseline_final"] == 64.0 and s["cures"]["rollouts_to_baseline_final"] == 192.0
    assert s["grpo"]["speedup_vs_baseline"] == 1.0 and s["cures"]["speedup_vs_baseline"] == pytest.approx(0.33)


def test_proxy_step_writes_a_checkpoint_per_epoch_and_refuses_a_late_one(tmp_path, tiny_examples):
    from datasel.training.proxy import run_proxy

    df, meta = tiny_examples
    examples = _examples(tmp_path, df, meta)
    cfg = {**{k: v for k, v in TINY["proxy"].items() if k != "seeds"}, "epochs": 1, "checkpoints": [0, 1]}
    outs = [tmp_path / "proxy/seed1/epoch0.pt", tmp_path / "proxy/seed1/epoch1.pt",
            tmp_path / "proxy/seed1/epochs.parquet"]
    run_proxy(examples, examples.with_name("meta.json"), outs, cfg, 1, device="cpu")
    for epoch in (0, 1):
        ckpt = torch.load(outs[epoch], map_location="cpu", weights_only=False)
        assert (ckpt["epoch"], ckpt["seed"], ckpt["model_cfg"]) == (epoch, 1, cfg["model"])
    assert read_table(outs[2], "proxy_epochs").get_column("seed").unique().to_list() == [1]
    with pytest.raises(ConfigError) as err:
        run_proxy(examples, examples.with_name("meta.json"), outs, {**cfg, "checkpoints": [0, 2]}, 1, device="cpu")
    assert err.value.field == "proxy.checkpoints"


def test_compute_device_reads_the_runs_compute_section():
    from types import SimpleNamespace

    from datasel.snakemake_entry import compute_device

    assert compute_device(SimpleNamespace(config={"compute": {"device": "cuda"}})) == "cuda"
    assert compute_device(SimpleNamespace(config={"compute": {"threads": 2}})) == "auto"
    assert compute_device(SimpleNamespace()) == "auto"  # a job object without a config (a test's)


def test_score_step_scores_on_the_device_it_is_given(tmp_path, tiny_examples, monkeypatch):
    """The scorer reads the step's ``device`` (the run's compute.device), not a fixed "auto"."""
    import datasel.pipeline
    from datasel.scoring.base import ScoreInputs, Scorer

    seen: list[ScoreInputs] = []

    class Recording(Scorer):
        def score(self, inputs: ScoreInputs) -> pl.DataFrame:
            seen.append(inputs)
            return _noise_score(pl.read_parquet(inputs.examples)).select("example_id", "score")

    monkeypatch.setattr(datasel.pipeline.SCORERS, "get", lambda name, where=None: Recording)
    df, meta = tiny_examples
    examples = _examples(tmp_path, df, meta)
    for device in ("cpu", "cuda", "auto"):
        out = tmp_path / "scores" / f"{device}.parquet"
        datasel.pipeline.score("s", {"method": "s"}, examples, examples.with_name("meta.json"), out, device=device)
        assert read_table(out, "scores").height == df.filter(pl.col("split") == "train").height
    assert [i.device for i in seen] == ["cpu", "cuda", "auto"]
    datasel.pipeline.score("s", {"method": "s"}, examples, examples.with_name("meta.json"), tmp_path / "d.parquet")
    assert seen[-1].device == "auto"  # the default, for a call from Python that names none


SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "workflow" / "scripts").glob("*.py"))
# a step whose device is its own stage's key rather than compute.device
OWN_DEVICE = {"cures_train": "cures.policy.device"}


def test_each_script_hands_its_step_the_runs_compute_device(monkeypatch):
    """A step that computes on a device gets the run's compute.device from its script (or, where listed, its own
    stage's device key)."""
    import inspect

    import datasel.snakemake_entry

    monkeypatch.setattr(datasel.snakemake_entry, "run_step", lambda smk, fn, **kw: fn(smk))
    checked, wrong = set(), []
    for script in SCRIPTS:
        tree, module, name = script_step(script)
        real = getattr(module, name)
        if "device" not in inspect.signature(real).parameters or script.stem in OWN_DEVICE:
            continue
        bound = []
        with monkeypatch.context() as m:
            m.setattr(module, name, recording(real, bound))
            exec(compile(tree, str(script), "exec"), {"snakemake": AnyJob({"compute": {"device": "cuda"}})})
        checked.add(script.stem)
        if not bound or any(b.arguments.get("device") != "cuda" for b in bound):
            wrong.append(f"{script.name} does not pass compute.device to {name}(device=...)")
    assert not wrong, wrong
    assert {"proxy", "features_shard", "score", "train"} <= checked
