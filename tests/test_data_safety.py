"""The user's data is theirs: reserved column names, the data kind, dense class indices, duplicates across splits,
splits that end up empty, label noise only when asked, and what meta records so an export can give rows back."""

from __future__ import annotations

import copy
import json
import logging
import string

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import ROOT, TINY, snakemake, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasel.data.prepare import build_examples
from datasel.data.sources import INTERNAL_COLUMNS
from datasel.errors import ConfigError, DataError, DataselError
from datasel.store import SCHEMAS, write_table

PROPS = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _frame(n: int = 60, seed: int = 0, labels=None) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"f1": rng.normal(size=n), "f2": rng.normal(size=n),
                         "cls": rng.integers(0, 3, n) if labels is None else labels})


def _build(tmp_path, frame: pl.DataFrame, **cfg):
    path = tmp_path / "mine.parquet"
    frame.write_parquet(path)
    base = {"source": "files", "path": str(path), "label_column": "cls", "feature_columns": ["f1", "f2"]}
    return build_examples({**base, **cfg})


def _by_row(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort("source_row")


def _user_labels(df: pl.DataFrame, meta: dict, column: str = "label_orig") -> list[str]:
    """The labels in the user's terms: each row's class index through meta ``classes``."""
    return [meta["classes"][i] for i in _by_row(df).get_column(column).to_list()]


# ---- 1. reserved column names ----

RESERVED_CASES = {
    "example_id": {}, "source": {}, "is_noisy": {}, "label_orig": {}, "source_row": {},
    "split": {},  # a column named split without split_column is not silently taken for the split
    "domain": {},
    "x": {},  # the inputs are feature_columns here, so a user's x would be overwritten
    "label": {},  # the label is 'cls'
    "text": {"text_column": "body"},  # the text is 'body'
}


@pytest.mark.parametrize("name", sorted(RESERVED_CASES))
def test_a_user_column_named_like_an_internal_one_is_refused(tmp_path, name):
    frame = _frame().with_columns(pl.lit("users").alias(name))
    extra = RESERVED_CASES[name]
    if "text_column" in extra:
        frame = frame.with_columns(pl.lit("some words").alias("body"))
        extra = {**extra, "feature_columns": None}
    with pytest.raises(DataError) as err:
        _build(tmp_path, frame, **extra)
    e = err.value
    assert e.field == name and "mine.parquet" in str(e)
    assert "rename" in e.fix and "reserved names" in e.fix


def test_a_reserved_name_mapped_onto_its_own_role_is_accepted(tmp_path):
    frame = _frame(n=90).with_columns(split=pl.Series(["train", "val", "test"] * 30), domain=pl.lit("d1"))
    frame = frame.with_columns(x=pl.concat_list("f1", "f2")).rename({"cls": "label"}).drop("f1", "f2")
    path = tmp_path / "mine.parquet"
    frame.write_parquet(path)
    df, meta = build_examples({"source": "files", "path": str(path), "split_column": "split",
                               "domain_column": "domain"})
    assert meta["sizes"] == {"train": 30, "val": 30, "test": 30}
    assert meta["columns"] == {"label": "label", "id": None, "text": None, "features": None, "split": "split",
                               "domain": "domain"}
    assert _by_row(df).get_column("split").to_list() == frame.get_column("split").to_list()


def test_one_column_in_two_roles_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, _frame().with_columns(pl.lit("a").alias("g")), split_column="g", domain_column="g")
    assert "two roles" in str(err.value) and err.value.fix


NAMES = st.one_of(st.sampled_from(list(INTERNAL_COLUMNS) + ["id", "label_name", "weight", "Source", "texts"]),
                  st.text(string.ascii_letters + "_", min_size=1, max_size=8))


@PROPS
@given(st.lists(NAMES, min_size=1, max_size=4, unique=True), st.booleans())
def test_random_column_names_are_kept_or_refused_by_name(tmp_path, names, as_text):
    names = [n for n in names if n not in ("cls", "f1", "f2", "body")]
    frame = _frame(n=30).with_columns(body=pl.lit("free words"))
    frame = frame.with_columns([pl.Series(n, [f"{n}-{i}" for i in range(30)]) for n in names])
    cfg = {"text_column": "body", "feature_columns": None} if as_text else {}
    # the only internal names a plain user column may carry: a free-text 'text' beside vector inputs
    clash = [n for n in names if n in INTERNAL_COLUMNS and not (n == "text" and not as_text)]
    try:
        df, meta = _build(tmp_path, frame, **cfg)
    except DataError as err:
        assert clash, f"refused without a clash: {err}"
        assert err.field in clash and "rename" in err.fix and "mine.parquet" in str(err)
        return
    assert not clash, f"{clash} were accepted and would be overwritten"
    assert meta["kind"] == ("text" if as_text else "vector")
    rows = _by_row(df)
    for n in names:  # every user column comes back unchanged under its own name
        assert rows.get_column(n).to_list() == frame.get_column(n).to_list()
    assert set(df.get_column("source")) == {"files"}


# ---- 2. the data kind comes from the config ----

def test_a_feature_table_with_a_text_column_stays_vector_data(tmp_path):
    frame = _frame().with_columns(text=pl.Series([f"note about row {i}" for i in range(60)]))
    df, meta = _build(tmp_path, frame)
    assert meta["kind"] == "vector" and meta["input_dim"] == 2 and meta["columns"]["text"] is None
    assert _by_row(df).get_column("text").to_list() == frame.get_column("text").to_list()  # kept as a field
    df2, meta2 = _build(tmp_path, frame, text_column="text", feature_columns=None)
    assert meta2["kind"] == "text" and "x" not in df2.columns and meta2["columns"]["text"] == "text"


def test_text_column_and_feature_columns_together_are_refused(tmp_path):
    frame = _frame().with_columns(body=pl.lit("w"))
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, frame, text_column="body")
    assert err.value.field == "data.feature_columns"


def test_a_text_column_that_is_not_text_is_refused(tmp_path):
    with pytest.raises(DataError) as err:
        _build(tmp_path, _frame(), text_column="f1", feature_columns=None)
    assert err.value.field == "f1" and "strings" in str(err.value)


# ---- 3. dense class indices ----

def test_sparse_integer_labels_map_to_dense_classes(tmp_path):
    labels = [0, 1, 10**9] * 20
    df, meta = _build(tmp_path, _frame(labels=labels))
    assert meta["num_classes"] == 3 and meta["classes"] == ["0", "1", "1000000000"]
    assert meta["label_dtype"] == "int"
    assert sorted(df.get_column("label").unique().to_list()) == [0, 1, 2]
    assert _user_labels(df, meta) == [str(v) for v in labels]


@PROPS
@given(st.lists(st.integers(-(2**62), 2**62), min_size=2, max_size=6, unique=True), st.randoms(use_true_random=False))
def test_random_integer_label_sets_round_trip_through_classes(tmp_path, values, rnd):
    labels = values + [rnd.choice(values) for _ in range(40 - len(values))]
    df, meta = _build(tmp_path, _frame(n=40, labels=labels))
    assert meta["classes"] == [str(v) for v in sorted(values)]  # numeric order, index 0..C-1
    assert meta["num_classes"] == len(values)
    assert df.get_column("label").min() >= 0 and df.get_column("label").max() == len(values) - 1
    assert _user_labels(df, meta) == [str(v) for v in labels]
    assert _user_labels(df, meta, "label") == [str(v) for v in labels]  # no noise asked: labels untouched


def test_configured_classes_fix_the_order_and_membership(tmp_path):
    labels = ["b", "a", "c"] * 20
    df, meta = _build(tmp_path, _frame(labels=labels), classes=["c", "a", "b"])
    assert meta["classes"] == ["c", "a", "b"] and meta["label_dtype"] == "str"
    assert _by_row(df).get_column("label").head(3).to_list() == [2, 1, 0]
    with pytest.raises(DataError) as err:
        _build(tmp_path, _frame(labels=labels), classes=["a", "b"])
    assert err.value.field == "cls" and "not among data.classes" in str(err.value)
    df, meta = _build(tmp_path, _frame(labels=[5, 7] * 30), classes=[7, 5, 9])  # integer values, listed
    assert meta["classes"] == ["7", "5", "9"] and meta["num_classes"] == 3


def test_num_classes_keeps_labels_as_indices(tmp_path):
    df, meta = _build(tmp_path, _frame(labels=[0, 2] * 30), num_classes=4)
    assert meta["classes"] == ["0", "1", "2", "3"] and set(df.get_column("label")) == {0, 2}


def test_non_integer_numeric_labels_are_refused_and_whole_floats_are_integers(tmp_path):
    with pytest.raises(DataError) as err:
        _build(tmp_path, _frame(labels=[0.5, 1.0] * 30))
    assert err.value.field == "cls" and "non-integer" in str(err.value)
    _, meta = _build(tmp_path, _frame(labels=[0.0, 3.0] * 30))
    assert meta["classes"] == ["0", "3"] and meta["label_dtype"] == "int"


@pytest.mark.parametrize("labels, needle", [([[1], [2]] * 30, "dtype List"), ([b"a", b"b"] * 30, "dtype Binary"),
                                            ([1e300, 0.0] * 30, "beyond 2**53")])
def test_labels_that_are_not_classes_are_refused_naming_the_column(tmp_path, labels, needle):
    with pytest.raises(DataError) as err:
        _build(tmp_path, _frame(labels=labels))
    assert err.value.field == "cls" and needle in str(err.value) and err.value.fix


def test_ids_do_not_depend_on_the_other_classes(tmp_path):
    frame = _frame(labels=["a", "b", "c"] * 20)
    a, _ = _build(tmp_path, frame)
    extra = pl.DataFrame({"f1": [9.0], "f2": [9.0], "cls": ["0_first"]})  # a new class sorts before the others
    b, meta = _build(tmp_path, pl.concat([frame, extra]))
    assert meta["classes"][0] == "0_first"
    assert set(a.get_column("example_id")) <= set(b.get_column("example_id"))


def test_a_column_named_id_is_a_plain_field_unless_mapped(tmp_path):
    frame = _frame().with_columns(id=pl.Series([f"r{i % 7}" for i in range(60)]))  # not unique: not an id
    df, meta = _build(tmp_path, frame)
    assert meta["columns"]["id"] is None and _by_row(df).get_column("id").to_list() == frame.get_column("id").to_list()
    frame = frame.with_columns(id=pl.Series([f"r{i}" for i in range(60)]))
    df, meta = _build(tmp_path, frame, id_column="id")
    assert meta["columns"]["id"] == "id" and _by_row(df).get_column("example_id")[3] == "files-r3"


# ---- 4. duplicates across splits ----

def test_duplicate_rows_across_splits_are_reported(tmp_path, caplog):
    base = _frame(n=40).with_columns(split=pl.lit("train"))
    test = base.head(5).with_columns(split=pl.lit("test"))  # the same input and label as 5 training rows
    relabelled = base.slice(5, 3).with_columns(split=pl.lit("val"), cls=(pl.col("cls") + 1) % 3)  # other label
    fresh = _frame(n=10, seed=9).with_columns(split=pl.lit("val"))
    frame = pl.concat([base, test, relabelled, fresh])
    with caplog.at_level(logging.WARNING):
        df, meta = _build(tmp_path, frame, split_column="split")
    assert meta["duplicates_across_splits"] == {"train/val": 0, "train/test": 5, "val/test": 0}
    assert "5 test rows also in train" in caplog.text
    assert df.height == frame.height  # reported, not removed
    _, clean = _build(tmp_path, _frame())
    assert not any(clean["duplicates_across_splits"].values())


# ---- 5. every schema-valid data config reaches a clear error ----

@pytest.mark.parametrize("splits, field", [({"val": 0}, "data.splits.val"), ({"test": 0}, "data.splits.test"),
                                           ({"val": 0.9, "test": 0.9}, "data.splits"),
                                           ({"val": 0.5, "test": 0.5}, "data.splits"),
                                           ({"val": 0.001}, "data.splits.val")])
def test_a_split_that_would_be_empty_is_refused(tmp_path, splits, field):
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, _frame(), splits=splits)
    assert err.value.field == field and err.value.fix and "Traceback" not in str(err.value)


def test_a_split_column_without_val_rows_and_val_zero_is_refused(tmp_path):
    frame = _frame(n=40).with_columns(part=pl.Series(["train", "test"] * 20))
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, frame, split_column="part", splits={"val": 0})
    assert err.value.field == "data.splits.val"
    _, meta = _build(tmp_path, frame, split_column="part")  # the default carves val out of train
    assert meta["sizes"]["val"] == 2 and meta["sizes"]["test"] == 20


def test_a_single_class_is_refused_naming_the_label_column(tmp_path):
    with pytest.raises(DataError) as err:
        _build(tmp_path, _frame(labels=[4] * 60))
    assert err.value.field == "cls" and "single class" in str(err.value)


def test_val_zero_fails_the_prepare_rule_with_a_short_message(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["data"]["splits"] = {"val": 0}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, check=False, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "data.splits.val" in text and "fix:" in text
    assert "Traceback" not in text and "reshape" not in text
    assert not (tmp_path / "results" / "examples" / "examples.parquet").exists()


# ---- 6. label noise only when asked ----

def test_the_schema_default_injects_no_noise():
    from snakemake.utils import validate

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["data"] = {"source": "files", "path": "mine.parquet"}  # a user's data section, no noise key
    validate(cfg, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    assert cfg["data"]["noise"]["fraction"] == 0.0


def test_a_user_file_without_a_noise_key_is_never_altered(tmp_path, caplog):
    frame = _frame(n=80, labels=["cat", "dog", "eel", "fox"] * 20)
    with caplog.at_level(logging.INFO):
        df, meta = _build(tmp_path, frame)
    assert meta["noisy"] == 0 and not df.get_column("is_noisy").any()
    assert _user_labels(df, meta, "label") == frame.get_column("cls").to_list()
    assert _user_labels(df, meta, "label_orig") == frame.get_column("cls").to_list()
    assert "INJECTED" not in caplog.text
    rows = _by_row(df)
    assert np.array(rows.get_column("x").to_list()).tolist() == np.array(
        frame.select("f1", "f2").to_numpy(), dtype=np.float32).tolist()


def test_injected_noise_is_recorded_and_announced(tmp_path, caplog):
    frame = _frame(n=100, labels=["cat", "dog"] * 50)
    with caplog.at_level(logging.WARNING):
        df, meta = _build(tmp_path, frame, noise={"fraction": 0.2, "seed": 0})
    flipped = df.filter(pl.col("is_noisy"))
    assert flipped.height == meta["noisy"] > 0
    assert (flipped.get_column("label") != flipped.get_column("label_orig")).all()
    assert _user_labels(df, meta, "label_orig") == frame.get_column("cls").to_list()  # the truth is kept
    warning = [r for r in caplog.records if "INJECTED" in r.getMessage()]
    assert warning and warning[0].levelno == logging.WARNING
    msg = warning[0].getMessage()
    assert f"{meta['noisy']} of {meta['sizes']['train']}" in msg and "set data.noise.fraction: 0" in msg


# ---- 7. the recording contract the export reads ----

def test_meta_and_table_record_the_users_columns_and_rows(tmp_path):
    a = _frame(n=30, labels=[10, 20, 30] * 10).rename({"cls": "target"}).with_columns(
        uid=pl.Series([f"a{i}" for i in range(30)]), grp=pl.lit("g1"))
    b = _frame(n=20, seed=1, labels=[10, 20] * 10).rename({"cls": "target"}).with_columns(
        uid=pl.Series([f"b{i}" for i in range(20)]), grp=pl.lit("g2"))
    a.write_parquet(tmp_path / "a.parquet")
    b.write_csv(tmp_path / "b.csv")
    cfg = {"source": "files", "path": [str(tmp_path / "a.parquet"), str(tmp_path / "b.csv")],
           "label_column": "target", "feature_columns": ["f1", "f2"], "id_column": "uid", "domain_column": "grp"}
    df, meta = build_examples(cfg)
    assert meta["columns"] == {"label": "target", "id": "uid", "text": None, "features": ["f1", "f2"],
                               "split": None, "domain": "grp"}
    assert meta["label_dtype"] == "int" and meta["classes"] == ["10", "20", "30"]
    assert df.schema["source_row"] == pl.Int64 and df.schema["label_orig"] == pl.Int64
    rows = _by_row(df)
    assert rows.get_column("source_row").to_list() == list(range(50))  # files concatenated in order
    assert rows.get_column("uid").to_list() == a["uid"].to_list() + b["uid"].to_list()
    assert _user_labels(df, meta) == [str(v) for v in a["target"].to_list() + b["target"].to_list()]
    json.dumps(meta)  # meta.json must be plain JSON
    out = write_table(df, tmp_path / "examples.parquet", "examples")
    assert SCHEMAS["examples"].validate(pl.read_parquet(out), out).schema["source_row"] == pl.Int64


def test_builtin_sources_record_generator_rows(tiny_examples):
    df, meta = tiny_examples
    assert meta["columns"]["label"] == "label" and meta["columns"]["features"] is None
    assert sorted(df.get_column("source_row").to_list()) == list(range(df.height))
    assert meta["label_dtype"] == "int" and meta["classes"] == [str(i) for i in range(10)]


def test_a_dataset_dict_split_is_not_recorded_as_a_user_column(tmp_path):
    import datasets

    rows = {"sentence": [f"s {i}" for i in range(40)], "label": ["pos", "neg"] * 20}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                               "validation": datasets.Dataset.from_dict(rows).select(range(10)),
                               "test": datasets.Dataset.from_dict(rows).select(range(10, 20))})
    dd.save_to_disk(str(tmp_path / "dd"))
    df, meta = build_examples({"source": "hf", "path": str(tmp_path / "dd"), "text_column": "sentence"})
    assert meta["sizes"] == {"train": 40, "val": 10, "test": 10}
    assert meta["columns"]["split"] is None and "_hf_split" not in df.columns
    assert meta["duplicates_across_splits"]["train/val"] == 10


def test_refusals_are_dataselerrors_with_a_fix(tmp_path):
    """A sweep of the refusals above: each one names a location and a fix and is short."""
    cases = [dict(splits={"val": 0}), dict(classes=["x", "y"]), dict(split_column="nope")]
    for extra in cases:
        with pytest.raises(DataselError) as err:
            _build(tmp_path, _frame(), **extra)
        assert err.value.fix and (err.value.field or err.value.file) and len(str(err.value)) < 600
