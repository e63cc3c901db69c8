"""DGA reads a user's tabular domains through the vector task: standardized with the training split's statistics,
through the typed workflow steps (no Snakemake object)."""

from __future__ import annotations

import json
import os

import numpy as np
import polars as pl
import pytest
import torch

os.environ["DATASEL_PROGRESS"] = "0"
torch.set_num_threads(1)

from test_dga import CFG, META, synthetic  # noqa: E402

from datasel.mixing.steps import data_step, prepare_task, train_step  # noqa: E402
from datasel.store import read_table, write_table  # noqa: E402

# a user's CSV as prepared by the pipeline: data.standardize is on for a user's data (recorded in the meta)
USER_META = {**META, "standardize": True}
SCALE = np.array([1000.0, 0.001, 50.0, 1.0, 3e4, 7.0, 0.2, 900.0], dtype=np.float64)
OFFSET = np.array([5e3, -2.0, 100.0, 0.0, -1e5, 40.0, 0.5, 1e3], dtype=np.float64)


def _with_x(df: pl.DataFrame, x: np.ndarray) -> pl.DataFrame:
    return df.with_columns(pl.Series("x", x.astype(np.float32).tolist(), dtype=pl.List(pl.Float32)))


def _variants() -> tuple[pl.DataFrame, pl.DataFrame]:
    """(pre-standardized, raw) versions of one table: the raw one is the same features × scale + offset."""
    df = synthetic(80, 20)
    x = np.asarray(df["x"].to_list(), dtype=np.float64)
    train = (df["split"] == "train").to_numpy()
    standard = (x - x[train].mean(0)) / x[train].std(0)  # the training split's statistics, computed here by hand
    return _with_x(df, standard), _with_x(df, standard * SCALE + OFFSET)


def _run_steps(tmp_path, df: pl.DataFrame, name: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    src, out = tmp_path / name / "src", tmp_path / name / "out"
    src.mkdir(parents=True)
    write_table(df, src / "examples.parquet", "examples")
    (src / "meta.json").write_text(json.dumps(USER_META))
    data_step({"source": "examples", "specific": "target"}, out / "dga.parquet", out / "dga.meta.json",
              src / "examples.parquet", src / "meta.json")
    cfg = {**CFG, "train": {**CFG["train"], "steps": 40, "eval_every": 10}, "device": "cpu"}
    train_step(cfg, "dga", 0, out / "dga.parquet", out / "dga.meta.json", out / "model.pt", out / "w.parquet",
               out / "m.parquet", out / "curve.json")
    return read_table(out / "w.parquet", "domain_weights"), read_table(out / "m.parquet", "metrics")


def test_the_model_sees_standardized_inputs():
    standard, raw = _variants()
    task = prepare_task(raw, USER_META, {"model": CFG["model"]})
    ref = prepare_task(standard, USER_META, {"model": CFG["model"]})
    pool_train = torch.cat(task.xs + [task.spe_x])  # every train row: the statistics' own rows
    assert pool_train.mean(0).abs().max() < 1e-4 and (pool_train.std(0, unbiased=False) - 1).abs().max() < 1e-4
    for a, b in zip(task.xs + [task.spe_x, task.eval_x], ref.xs + [ref.spe_x, ref.eval_x]):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)
    # importance sampling's nearest neighbours and k-means read the same standardized vectors
    np.testing.assert_allclose(task.spe_embeddings, ref.spe_embeddings, atol=2e-4)
    assert float(task.eval_x.abs().max()) < 10  # a held-out row is scaled with the train statistics, not its own


def test_raw_scaled_csv_gives_the_same_dga_result_as_the_standardized_one(tmp_path):
    standard, raw = _variants()
    w_std, m_std = _run_steps(tmp_path, standard, "standard")
    w_raw, m_raw = _run_steps(tmp_path, raw, "raw")
    assert w_raw["domain"].to_list() == w_std["domain"].to_list()
    np.testing.assert_allclose(w_raw["weight"].to_numpy(), w_std["weight"].to_numpy(), atol=1e-3)
    np.testing.assert_allclose(m_raw["value"].to_numpy(), m_std["value"].to_numpy(), rtol=1e-3, atol=1e-3)
    final = w_std.filter(pl.col("step") == pl.col("step").max())
    assert dict(zip(final["domain"], final["weight"]))["good"] > 0.5  # DGA still finds the helpful domain


def test_standardize_off_keeps_the_values(tmp_path):
    """A builtin source (already scaled: meta without standardize) is read as it is."""
    df = synthetic(30, 10)
    task = prepare_task(df, META, {"model": CFG["model"]})
    good = df.filter(pl.col("domain") == "good").sort("example_id")
    np.testing.assert_array_equal(task.xs[task.domains.index("good")].numpy(),
                                  np.asarray(good["x"].to_list(), dtype=np.float32))


def test_a_text_model_for_tabular_domains_is_refused():
    from datasel.errors import ConfigError

    with pytest.raises(ConfigError, match="dga.model"):
        prepare_task(synthetic(20, 10), USER_META, {"model": {"name": "hf_classifier"}})
