"""Build the ``examples`` table: load a source, validate it, assign stable ids, split, and inject label noise.

Label noise is injected into the training split only and recorded (``label_orig``, ``is_noisy``) so a method can
be judged on whether it finds the noise; validation and test labels stay clean.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from datasel.data.ids import content_ids
from datasel.data.sources import load_source
from datasel.errors import ConfigError, DataError
from datasel.runtime import rng_for

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
RESERVED = {"example_id", "source", "split", "label", "label_orig", "is_noisy", "x", "text", "domain", "id"}


def build_examples(cfg: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Return the examples table and its meta (kind, input_dim, num_classes, classes, split sizes, fields)."""
    where = cfg.get("path") or f"data source '{cfg.get('source')}'"
    raw = load_source(cfg)
    if raw.height == 0:
        raise DataError("the dataset has no rows", file=str(where), fix="point data.path at a non-empty dataset")
    kind = "text" if "text" in raw.columns else "vector"
    fields = [c for c in raw.columns if c not in ("split", "id")]
    raw, classes = _labels(raw, cfg, str(where))
    if kind == "vector":
        _check_vectors(raw, str(where))
    source = str(cfg.get("name") or cfg["source"])
    ids = _ids(raw, source, kind, str(where))
    df = raw.with_columns(pl.Series("example_id", ids), pl.lit(source).alias("source"))
    df = _splits(df, cfg, str(where))
    df = _inject_noise(df, cfg.get("noise", {}), len(classes))
    ordered = ["example_id", "source", "split", "label", "label_orig", "is_noisy"]
    df = df.select(ordered + [c for c in df.columns if c not in ordered and c != "id"])
    meta = {
        "kind": kind,
        "source": source,
        "num_classes": len(classes),
        "classes": classes,
        "input_dim": int(df.get_column("x").list.len().max()) if kind == "vector" else None,
        "sizes": {s: int((df.get_column("split") == s).sum()) for s in SPLITS},
        "noisy": int(df.get_column("is_noisy").sum()),
        "fields": fields,
    }
    log.info("examples: %s, %d classes, noisy labels: %d", meta["sizes"], meta["num_classes"], meta["noisy"])
    return df, meta


def _labels(df: pl.DataFrame, cfg: dict[str, Any], where: str) -> tuple[pl.DataFrame, list[str]]:
    """Map labels to 0..C-1; integer labels are checked against ``num_classes``/``classes`` when configured."""
    label = df.get_column("label")
    if label.null_count():
        row = int(label.is_null().arg_max())
        raise DataError(f"{label.null_count()} rows have no label (first at row {row})", file=where, field="label",
                        fix="drop unlabeled rows or fill the label")
    classes_cfg = cfg.get("classes")
    if label.dtype.is_integer():
        n = int(cfg.get("num_classes") or (len(classes_cfg) if classes_cfg else label.max() + 1))
        bad = df.filter((pl.col("label") < 0) | (pl.col("label") >= n))
        if bad.height:
            raise DataError(
                f"{bad.height} labels are outside the classes 0..{n - 1} (e.g. {bad.get_column('label').head(3).to_list()})",
                file=where, field="label", fix="fix those labels, or raise data.num_classes",
            )
        classes = list(map(str, classes_cfg)) if classes_cfg else [str(i) for i in range(n)]
    else:
        values = label.cast(pl.String)
        classes = list(map(str, classes_cfg)) if classes_cfg else sorted(values.unique().to_list())
        unknown = values.filter(~values.is_in(classes))
        if unknown.len():
            raise DataError(f"labels {unknown.unique().head(3).to_list()} are not among data.classes {classes}",
                            file=where, field="label", fix="add them to data.classes or fix the rows")
        index = {c: i for i, c in enumerate(classes)}
        df = df.with_columns(values.replace_strict(index, return_dtype=pl.Int64).alias("label"))
    df = df.with_columns(pl.col("label").cast(pl.Int64))
    if df.get_column("label").n_unique() < 2:
        raise DataError("the data has a single class; a classifier needs at least two", file=where, field="label",
                        fix="check the label column and the source")
    return df, classes


def _check_vectors(df: pl.DataFrame, where: str) -> None:
    lengths = df.get_column("x").list.len()
    if lengths.n_unique() != 1:
        raise DataError(f"input vectors have different lengths ({lengths.unique().sort().head(4).to_list()})",
                        file=where, field="x", fix="give every row the same number of features")
    bad = df.select(pl.col("x").list.eval(pl.element().is_nan() | pl.element().is_infinite() | pl.element().is_null())
                    .list.any().alias("bad")).get_column("bad")
    if bad.any():
        rows = bad.arg_true().head(3).to_list()
        raise DataError(f"{int(bad.sum())} rows have NaN, inf or missing inputs (rows {rows})", file=where, field="x",
                        fix="drop or impute those rows before selection")


def _ids(df: pl.DataFrame, source: str, kind: str, where: str) -> list[str]:
    if "id" in df.columns:
        ids = df.get_column("id").cast(pl.String)
        dup = ids.filter(ids.is_duplicated())
        if dup.len():
            raise DataError(f"{dup.n_unique()} ids occur more than once (e.g. {dup.unique().head(3).to_list()})",
                            file=where, field="id", fix="make the id column unique, or drop data.id_column to derive ids")
        if ids.null_count():
            raise DataError("some ids are empty", file=where, field="id", fix="fill every id or drop data.id_column")
        return [f"{source}-{i}" for i in ids.to_list()]
    if kind == "vector":
        xs = np.asarray(df.get_column("x").to_list(), dtype=np.float32)
        payloads = (row.tobytes() + int(y).to_bytes(8, "little", signed=True)
                    for row, y in zip(xs, df.get_column("label").to_list()))
    else:
        payloads = (f"{t}\x00{y}".encode() for t, y in zip(df.get_column("text").to_list(), df.get_column("label").to_list()))
    return content_ids(source, payloads)


def _splits(df: pl.DataFrame, cfg: dict[str, Any], where: str) -> pl.DataFrame:
    """Use the source's split where given; carve the missing ones out of train by a seeded draw over sorted ids."""
    fr = cfg.get("splits", {})
    val_frac, test_frac, seed = float(fr.get("val", 0.1)), float(fr.get("test", 0.2)), int(fr.get("seed", 0))
    if "split" in df.columns:
        df = df.with_columns(pl.col("split").cast(pl.String).replace({"validation": "val", "dev": "val"}))
        bad = df.filter(~pl.col("split").is_in(list(SPLITS)))
        if bad.height:
            raise DataError(f"split values {bad.get_column('split').unique().head(3).to_list()} are not train/val/test",
                            file=where, field="split", fix="use train, val (or validation) and test")
    else:
        df = df.with_columns(pl.lit("train").alias("split"))
    have = set(df.get_column("split").unique().to_list())
    carve = [(name, f) for name, f in (("test", test_frac), ("val", val_frac)) if name not in have and f > 0]
    if carve:
        train_ids = np.array(sorted(df.filter(pl.col("split") == "train").get_column("example_id").to_list()))
        perm = rng_for(seed, "splits").permutation(len(train_ids))
        total = len(train_ids)
        start = 0
        assign: dict[str, str] = {}
        for name, f in carve:
            k = int(round(total * f))
            assign.update({i: name for i in train_ids[perm[start:start + k]]})
            start += k
        df = df.with_columns(pl.col("example_id").replace_strict(assign, default=pl.col("split")).alias("split"))
    if (df.get_column("split") == "train").sum() == 0:
        raise DataError("the training split is empty", file=where, field="split", fix="lower data.splits fractions")
    return df


def _inject_noise(df: pl.DataFrame, noise: dict[str, Any], num_classes: int) -> pl.DataFrame:
    frac = float(noise.get("fraction", 0.0))
    if not 0.0 <= frac < 1.0:
        raise ConfigError(f"noise fraction {frac} is outside [0, 1)", field="data.noise.fraction", fix="use e.g. 0.2")
    df = df.with_columns(pl.col("label").alias("label_orig"))
    if frac == 0.0:
        return df.with_columns(pl.lit(False).alias("is_noisy"))
    rng = rng_for(int(noise.get("seed", 0)), "noise")
    train_ids = sorted(df.filter(pl.col("split") == "train").get_column("example_id").to_list())
    chosen = rng.choice(len(train_ids), size=int(round(frac * len(train_ids))), replace=False)
    # a noisy label is drawn uniformly from the *other* classes, so every flipped example is really wrong
    offsets = rng.integers(1, num_classes, size=len(chosen))
    shift = {train_ids[i]: int(o) for i, o in zip(chosen, offsets)}
    df = df.with_columns(pl.col("example_id").replace_strict(shift, default=0, return_dtype=pl.Int64).alias("_shift"))
    df = df.with_columns(((pl.col("label") + pl.col("_shift")) % num_classes).alias("label")).drop("_shift")
    return df.with_columns((pl.col("label") != pl.col("label_orig")).alias("is_noisy"))
