"""Forgetting events and AUM from a hand-written per-epoch table, and the proxy trainer's per-epoch recorder."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from datasel.errors import DataError
from datasel.scoring.base import SCORERS, ScoreInputs, finalize_scores
from datasel.store import write_table
from datasel.training.classify import train_classifier
from datasel.training.dynamics import EpochRecorder

# three examples over four epochs (1 = correct at that presentation), and their margins
CORRECT = {"a": [0, 1, 0, 1], "b": [1, 1, 1, 1], "c": [0, 0, 0, 0]}
MARGIN = {"a": [-1.0, 0.5, -0.5, 2.0], "b": [1.0, 2.0, 3.0, 4.0], "c": [-2.0, -1.0, -3.0, -2.0]}
# by hand: a is learned at 2, forgotten at 3 (one event); b never forgotten; c never learned -> T = 4
FORGETTING = {"a": 1.0, "b": 0.0, "c": 4.0}
AUM = {"a": 0.25, "b": 2.5, "c": -2.0}


def _epoch_table(seed: int, correct: dict, margin: dict) -> pl.DataFrame:
    rows = [{"example_id": e, "seed": seed, "epoch": t + 1, "correct": bool(correct[e][t]),
             "margin": float(margin[e][t])} for e in correct for t in range(4)]
    return pl.DataFrame(rows).with_columns(pl.col("margin").cast(pl.Float32))


def _inputs(tmp_path, tables: list[pl.DataFrame]) -> ScoreInputs:
    ex = pl.DataFrame({"example_id": ["a", "b", "c", "v"], "source": "t", "split": ["train"] * 3 + ["val"],
                       "label": [0, 1, 0, 1], "label_orig": [0, 1, 0, 1], "is_noisy": [False] * 4})
    write_table(ex, tmp_path / "examples.parquet", "examples")
    paths = [write_table(t, tmp_path / f"seed{i}" / "epochs.parquet", "proxy_epochs") for i, t in enumerate(tables)]
    return ScoreInputs(examples=tmp_path / "examples.parquet", meta={}, epoch_tables=paths)


def test_forgetting_and_aum_match_the_hand_computed_values(tmp_path):
    inputs = _inputs(tmp_path, [_epoch_table(0, CORRECT, MARGIN)])
    f = SCORERS.get("forgetting")({}).score(inputs)
    assert dict(zip(f["example_id"], f["score"])) == FORGETTING
    a = finalize_scores(SCORERS.get("aum")({}).score(inputs), "aum")
    got = {r["example_id"]: r for r in a.iter_rows(named=True)}
    assert {k: v["aum"] for k, v in got.items()} == pytest.approx(AUM)
    assert {k: v["score"] for k, v in got.items()} == pytest.approx({k: -v for k, v in AUM.items()})
    assert got["c"]["rank"] == 1  # the never-learned, negative-margin example ranks first (likeliest mislabeled)


def test_scores_average_over_proxy_runs(tmp_path):
    other = {"a": [1, 0, 1, 0], "b": [1, 0, 0, 1], "c": [1, 1, 1, 1]}  # a: 2 events, b: 1, c: 0
    inputs = _inputs(tmp_path, [_epoch_table(0, CORRECT, MARGIN), _epoch_table(1, other, MARGIN)])
    f = SCORERS.get("forgetting")({}).score(inputs)
    assert dict(zip(f["example_id"], f["score"])) == {"a": 1.5, "b": 0.5, "c": 2.0}
    assert dict(zip(f["example_id"], f["score_std"])) == pytest.approx({"a": 0.7071, "b": 0.7071, "c": 2.8284},
                                                                       abs=1e-4)


def test_an_incomplete_epoch_table_is_refused_by_file(tmp_path):
    table = _epoch_table(0, CORRECT, MARGIN).filter(~((pl.col("example_id") == "b") & (pl.col("epoch") == 3)))
    inputs = _inputs(tmp_path, [table])
    with pytest.raises(DataError, match="one per example and epoch") as err:
        SCORERS.get("aum")({}).score(inputs)
    assert "seed0/epochs.parquet" in str(err.value)


def test_the_recorder_sees_each_presentation_before_its_update():
    # lr 0: the model never changes, so every epoch's recorded margin is the fixed model's margin
    torch.manual_seed(0)
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    model = torch.nn.Linear(4, 3)
    rec = EpochRecorder(50, 3)
    train_classifier(model, x, y, {"budget": {"unit": "epochs", "value": 3}, "batch_size": 8, "lr": 0.0,
                                   "optimizer": "sgd", "momentum": 0.0}, seed=0, on_batch=rec)
    with torch.no_grad():
        logits = model(x)
    top2 = logits.topk(2, dim=1)
    assigned = logits.gather(1, y[:, None]).squeeze(1)
    other = torch.where(top2.indices[:, 0] == y, top2.values[:, 1], top2.values[:, 0])
    table = rec.table([f"e{i:02d}" for i in range(50)], seed=7)
    assert table.height == 150 and set(table["epoch"].unique()) == {1, 2, 3} and set(table["seed"]) == {7}
    for t in (1, 2, 3):
        part = table.filter(pl.col("epoch") == t).sort("example_id")
        np.testing.assert_allclose(part["margin"].to_numpy(), (assigned - other).numpy(), rtol=1e-5, atol=1e-6)
        assert part["correct"].to_list() == (logits.argmax(1) == y).tolist()


def test_cleanlab_flags_the_flipped_labels_of_separable_data(tmp_path):
    pytest.importorskip("cleanlab")
    from datasel.data.prepare import build_examples

    df, meta = build_examples({"source": "digits", "splits": {"val": 0.1, "test": 0.1, "seed": 0},
                               "noise": {"fraction": 0.1, "seed": 0}})
    write_table(df, tmp_path / "examples.parquet", "examples")
    proxy = {"model": {"name": "mlp", "hidden": [32]}, "epochs": 15, "batch_size": 64, "lr": 0.01,
             "optimizer": "adam"}
    inputs = ScoreInputs(examples=tmp_path / "examples.parquet", meta=meta, proxy_cfg=proxy, seed=0)
    table = SCORERS.get("cleanlab")({"folds": 3}).score(inputs)
    truth = table.join(df.select("example_id", "is_noisy"), on="example_id")
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truth["is_noisy"].to_numpy(), truth["score"].to_numpy()) > 0.9
    flagged = truth.filter(pl.col("label_issue"))
    assert flagged.height > 0 and flagged["is_noisy"].mean() > 0.7  # most of what it flags was flipped
