"""The examples table: stable ids, splits, injected noise, every source, and clean refusals of bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from datasel.data.prepare import build_examples
from datasel.errors import DataselError


def test_noise_is_exact_and_only_in_train(tiny_examples):
    df, meta = tiny_examples
    train = df.filter(pl.col("split") == "train")
    assert train.get_column("is_noisy").sum() == round(0.2 * train.height)
    assert not df.filter(pl.col("split") != "train").get_column("is_noisy").any()
    noisy = train.filter(pl.col("is_noisy"))
    assert (noisy.get_column("label") != noisy.get_column("label_orig")).all()
    assert meta["num_classes"] == 10 and meta["input_dim"] == 40


def test_splits_partition_and_ids_unique(tiny_examples):
    df, meta = tiny_examples
    assert df.get_column("example_id").is_unique().all()
    assert set(df.get_column("split").unique()) == {"train", "val", "test"}
    assert sum(meta["sizes"].values()) == df.height


def _file_frame(n: int = 60, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"f1": rng.normal(size=n), "f2": rng.normal(size=n), "cls": rng.integers(0, 3, n),
                         "note": [f"row{i}" for i in range(n)]})


def test_ids_depend_on_content_not_order(tmp_path):
    frame = _file_frame()
    frame.write_parquet(tmp_path / "a.parquet")
    frame.sample(fraction=1.0, shuffle=True, seed=1).write_parquet(tmp_path / "b.parquet")
    cfg = {"source": "files", "label_column": "cls", "feature_columns": ["f1", "f2"], "name": "toy"}
    a, _ = build_examples({**cfg, "path": str(tmp_path / "a.parquet")})
    b, _ = build_examples({**cfg, "path": str(tmp_path / "b.parquet")})
    assert a.sort("example_id").get_column("example_id").to_list() == b.sort("example_id").get_column("example_id").to_list()
    key = ["example_id", "split", "note"]
    assert a.select(key).sort("example_id").equals(b.select(key).sort("example_id"))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_file_sources_keep_original_fields(tmp_path, fmt):
    frame = _file_frame()
    path = tmp_path / f"d.{fmt}"
    {"parquet": frame.write_parquet, "jsonl": frame.write_ndjson, "csv": frame.write_csv}[fmt](path)
    df, meta = build_examples({"source": "files", "path": str(path), "label_column": "cls",
                               "feature_columns": ["f1", "f2"]})
    assert df.height == 60 and "note" in df.columns and meta["input_dim"] == 2


def test_hf_sources_from_local_files(tmp_path):
    import datasets

    frame = pl.DataFrame({"text": [f"sentence number {i}" for i in range(40)], "label": ["pos", "neg"] * 20})
    ds = datasets.Dataset(frame.to_arrow())
    ds.save_to_disk(str(tmp_path / "saved"))
    df, meta = build_examples({"source": "hf", "path": str(tmp_path / "saved"), "text_column": "text"})
    assert meta["kind"] == "text" and meta["classes"] == ["neg", "pos"] and df.height == 40
    frame.write_ndjson(tmp_path / "x.jsonl")
    df2, _ = build_examples({"source": "hf", "path": "json", "data_files": str(tmp_path / "x.jsonl"),
                             "hf_split": "train", "text_column": "text"})
    assert sorted(df2.get_column("example_id")) == sorted(df.get_column("example_id"))


BAD = {
    "missing file": ({"path": "nope.parquet"}, None, "not found"),
    "label outside classes": ({"num_classes": 2}, lambda f: f, "outside the classes"),
    "nan input": ({}, lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(float("nan"))
                                                 .otherwise(pl.col("f1")).alias("f1")), "NaN"),
    "inf input": ({}, lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(float("inf"))
                                                 .otherwise(pl.col("f2")).alias("f2")), "inf"),
    "duplicate ids": ({"id_column": "note"}, lambda f: f.with_columns(pl.lit("same").alias("note")), "more than once"),
    "single class": ({}, lambda f: f.with_columns(pl.lit(1).alias("cls")), "single class"),
    "empty": ({}, lambda f: f.head(0), "no rows"),
    "missing label column": ({"label_column": "target"}, lambda f: f, "no label column"),
    "non-numeric feature": ({"feature_columns": ["f1", "note"]}, lambda f: f, "expected a number"),
}


@pytest.mark.parametrize("key,value,closest", [("label_column", "clss", "cls"), ("id_column", "nte", "note"),
                                               ("feature_columns", ["f1", "f22"], "f2")])
def test_a_column_the_file_lacks_names_the_config_key_and_the_closest_column(tmp_path, key, value, closest):
    # the field is the config key to edit (not the misspelt column), and the fix names the likely column
    path = tmp_path / "d.parquet"
    _file_frame().write_parquet(path)
    cfg = {"source": "files", "path": str(path), "label_column": "cls", "feature_columns": ["f1", "f2"], key: value}
    with pytest.raises(DataselError) as err:
        build_examples(cfg)
    assert err.value.field == f"data.{key}"
    assert f"did you mean '{closest}'?" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_missing_feature_value_names_its_column_and_the_config_key(tmp_path, fmt):
    # an empty CSV cell (null) or a NaN: the message names the user's column, not the internal `x`
    frame = pl.DataFrame({"alcohol": [13.0, 12.5, 14.1, 13.3, 12.9, 13.8], "ash": [2.4, 2.1, 2.6, 2.2, None, 2.5],
                          "cls": ["class_0", "class_1"] * 3})
    if fmt == "parquet":
        frame = frame.with_columns(pl.col("ash").fill_null(float("nan")))
    path = tmp_path / f"wine.{fmt}"
    getattr(frame, f"write_{fmt}")(path)
    with pytest.raises(DataselError) as err:
        build_examples({"source": "files", "path": str(path), "label_column": "cls",
                        "feature_columns": ["alcohol", "ash"]})
    assert err.value.field == "data.feature_columns"
    assert "'ash' (1 rows)" in str(err.value) and "alcohol" not in str(err.value) and "rows [4]" in str(err.value)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_a_named_field(tmp_path, case):
    extra, mutate, needle = BAD[case]
    path = tmp_path / "d.parquet"
    if mutate is not None:
        mutate(_file_frame()).write_parquet(path)
    cfg = {"source": "files", "path": str(path), "label_column": "cls", "feature_columns": ["f1", "f2"], **extra}
    with pytest.raises(DataselError) as err:
        build_examples(cfg)
    text = str(err.value)
    assert needle in text
    assert "fix:" in text and ("file" in text)
