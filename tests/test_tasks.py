"""The task seam: vector batching with standardization (fit on train, applied in memory), kind checks, and the
breast-cancer case (raw tabular features train, EL2N does not saturate)."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from datasel.data.prepare import build_examples
from datasel.data.tensors import load_split, standardize_default
from datasel.errors import ConfigError
from datasel.tasks import make_task
from datasel.tasks.vector import VectorTask


def _breast_cancer(tmp_path):
    sklearn = pytest.importorskip("sklearn.datasets")
    data = sklearn.load_breast_cancer(as_frame=True)
    frame = pl.from_pandas(data.frame)
    path = tmp_path / "cancer.csv"
    frame.write_csv(path)
    cols = [c for c in frame.columns if c != "target"]
    cfg = {"source": "files", "path": str(path), "label_column": "target", "feature_columns": cols,
           "splits": {"val": 0.1, "test": 0.2, "seed": 0}}
    df, meta = build_examples(cfg)
    meta["standardize"] = standardize_default(cfg)  # what the prepare step records
    return df, meta, path


def test_standardize_defaults_follow_the_source():
    assert standardize_default({"source": "files"}) and standardize_default({"source": "hf"})
    assert not standardize_default({"source": "mnist1d"}) and not standardize_default({"source": "digits"})
    assert not standardize_default({"source": "files", "standardize": False})
    assert standardize_default({"source": "digits", "standardize": True})


def test_standardization_is_fit_on_train_and_leaves_the_table_alone(tmp_path):
    df, meta, _ = _breast_cancer(tmp_path)
    before = df.clone()
    task = make_task(df, meta, {"name": "mlp"})
    train, test = task.split("train"), task.split("test")
    assert train.inputs.mean(0).abs().max() < 1e-4
    assert (train.inputs.std(0, unbiased=False) - 1).abs().max() < 1e-3
    raw_train, _, _ = load_split(df, "train")
    raw_test, _, ids = load_split(df, "test")
    assert ids == test.ids
    # test rows use the training statistics, not their own
    mean, std = raw_train.double().mean(0), raw_train.double().std(0, unbiased=False)
    assert torch.allclose(test.inputs.double(), (raw_test.double() - mean) / std, atol=1e-4)
    assert test.inputs.mean(0).abs().max() > 1e-3
    assert df.equals(before)  # the user's values are never rewritten


def test_constant_feature_is_centred_not_divided_by_zero():
    df = pl.DataFrame({"example_id": [f"e{i}" for i in range(6)], "split": ["train"] * 4 + ["test"] * 2,
                       "label": [0, 1, 0, 1, 0, 1], "x": [[1.0, float(i)] for i in range(5)] + [[7.0, 2.0]]})
    task = VectorTask(df, {"num_classes": 2, "kind": "vector", "standardize": True}, {"name": "mlp"})
    test = task.split("test").inputs
    assert torch.isfinite(test).all() and test[1, 0].item() == pytest.approx(6.0)


def test_builtin_data_is_not_standardized(tiny_examples):
    df, meta = tiny_examples
    task = make_task(df, {**meta, "standardize": False}, {"name": "mlp"})
    x, _, _ = load_split(df, "train")
    assert torch.equal(task.split("train").inputs, x)


def test_raw_tabular_features_train_and_el2n_does_not_saturate(tmp_path):
    from datasel.runtime import seed_everything
    from datasel.scoring.el2n import el2n
    from datasel.training.classify import evaluate, train_classifier

    df, meta, _ = _breast_cancer(tmp_path)
    task = make_task(df, meta, {"name": "mlp", "hidden": [64]})
    train, test = task.split("train"), task.split("test")
    seed_everything(0)
    model = task.build_model()
    cfg = {"batch_size": 64, "lr": 0.003, "budget": {"unit": "epochs", "value": 10}}
    train_classifier(model, train.inputs, train.labels, cfg, seed=0)
    acc = evaluate(model, test.inputs, test.labels)["accuracy"]
    assert acc > 0.85
    scores = el2n(model, train.inputs, train.labels)
    assert scores.median() < 0.5 and scores.max() < 2 ** 0.5 - 1e-3 and scores.std() > 1e-2


def test_text_column_with_a_vector_model_is_refused():
    df = pl.DataFrame({"example_id": ["a", "b"], "split": ["train", "train"], "label": [0, 1], "text": ["x", "y"]})
    with pytest.raises(ConfigError) as err:
        make_task(df, {"kind": "text", "num_classes": 2}, {"name": "mlp"}, where="proxy.model")
    assert err.value.field == "proxy.model.name" and "text" in str(err.value) and "hf_classifier" in err.value.fix


def test_vector_data_with_a_text_model_is_refused(tiny_examples):
    df, meta = tiny_examples
    with pytest.raises(ConfigError) as err:
        make_task(df, meta, {"name": "hf_classifier"}, where="training.model")
    assert err.value.field == "training.model.name" and "vector" in str(err.value) and "mlp" in err.value.fix
