"""Build the ``examples`` table: load a source, validate it, assign stable ids, split, and inject label noise.

Labels become a dense class index ``0..C-1``; meta ``classes`` maps each index back to the user's value (as a
string) and ``label_dtype`` says whether that value was an integer. ``source_row`` is each row's 0-based position
in the data as read, so an export can hand a user's rows back in the user's terms (meta ``columns`` names the
user's label / id / text / feature / split / domain columns).

Label noise is a benchmark device, off unless ``data.noise.fraction`` asks for it. When injected, it is injected
into the training split only and recorded (``label_orig``, ``is_noisy``) so a method can be judged on whether it
finds the noise; validation and test labels stay clean.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from datasel.data.ids import ids_from_hashes, row_hashes, user_ids
from datasel.data.sources import INTERNAL_COLUMNS, SOURCE_KINDS, data_kind, load_source, user_columns
from datasel.errors import ConfigError, DataError
from datasel.runtime import rng_for

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Builtin sources are already scaled (MNIST-1D, digits); a user's table usually is not (breast-cancer features span
# 0.001..4000), so standardization is on by default only for user data.
def standardize_default(data_cfg: dict[str, Any]) -> bool:
    """``data.standardize`` if set, else on for a user's data and off for builtin sources (already scaled: MNIST-1D,
    digits; a user's table often is not). Builtin = registered with a fixed kind (``sources.SOURCE_KINDS``).

    (Here, not with the tensors that apply it, so the prepare step that records it never imports torch.)"""
    value = data_cfg.get("standardize")
    return bool(value) if value is not None else data_cfg.get("source") not in SOURCE_KINDS


def build_examples(cfg: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Return the examples table and its meta (kind, input_dim, num_classes, classes, split sizes, columns, …)."""
    where = str(cfg.get("path") or f"data source '{cfg.get('source')}'")
    raw = load_source(cfg)
    if raw.height == 0:
        raise DataError("the dataset has no rows", file=where, fix="point data.path at a non-empty dataset")
    kind = data_kind(cfg)
    # row order as read (files concatenated in order): the export's way back to the user's own rows
    raw = raw.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("source_row"))
    # the user's columns in the file's order: those kept as they are, and those a role renamed (label, text, split,
    # domain) under their new names, so an export puts the label back where the user had it
    roles = {"label"} | {role for role, key in (("text", "text_column"), ("split", "split_column"),
                                                ("domain", "domain_column")) if cfg.get(key)}
    fields = [c for c in raw.columns if c not in INTERNAL_COLUMNS or c in roles]
    raw, classes, label_dtype = _labels(raw, cfg, where)
    if kind == "vector":
        _check_vectors(raw, where, cfg.get("feature_columns"))
    source = str(cfg.get("name") or cfg["source"])
    values = pl.Series(classes, dtype=pl.String).gather(raw.get_column("label")).to_list()
    hashes = row_hashes(raw, kind, values, label_dtype == "int")
    ids = _ids(raw, cfg, source, hashes, where)
    df = raw.with_columns(pl.Series("example_id", ids), pl.lit(source).alias("source"))
    df = _splits(df, cfg, where)
    duplicates = _duplicates_across_splits(df.get_column("split").to_list(), hashes, where)
    df = _inject_noise(df, cfg.get("noise", {}), len(classes))
    ordered = ["example_id", "source", "split", "label", "label_orig", "is_noisy", "source_row"]
    df = df.select(ordered + [c for c in df.columns if c not in ordered])
    meta = {
        "kind": kind,
        "source": source,
        "num_classes": len(classes),
        "classes": classes,
        "label_dtype": label_dtype,
        "columns": _builtin_columns() if cfg.get("source") in SOURCE_KINDS else user_columns(cfg),
        "input_dim": int(df.get_column("x").list.len().max()) if kind == "vector" else None,
        "sizes": {s: int((df.get_column("split") == s).sum()) for s in SPLITS},
        "noisy": int(df.get_column("is_noisy").sum()),
        "duplicates_across_splits": duplicates,
        "fields": fields,
    }
    log.info("examples: %s, %d classes", meta["sizes"], meta["num_classes"])
    return df, meta


def _builtin_columns() -> dict[str, Any]:
    """A generated source has no user columns beyond its label."""
    return {"label": "label", "id": None, "text": None, "features": None, "split": None, "domain": None}


def _labels(df: pl.DataFrame, cfg: dict[str, Any], where: str) -> tuple[pl.DataFrame, list[str], str]:
    """Map labels to a dense index 0..C-1; return the frame, the classes (index → value as a string) and the dtype.

    Integer labels: the sorted distinct values (``{0, 1, 10**9}`` → 3 classes), or ``0..num_classes-1`` when
    ``data.num_classes`` is set. ``data.classes`` (the label values themselves) fixes the classes and their order.
    """
    column = cfg.get("label_column", "label")
    label = df.get_column("label")
    if label.null_count():
        row = int(label.is_null().arg_max())
        raise DataError(f"{label.null_count()} rows have no label (the first is row {row + 1})",
                        file=where, field=column, fix="drop unlabeled rows or fill the label")
    if not (label.dtype.is_numeric() or label.dtype in (pl.String, pl.Categorical, pl.Boolean)
            or isinstance(label.dtype, pl.Enum)):
        raise DataError(f"the label column has dtype {label.dtype}", file=where, field=column,
                        fix="give one integer or string class label per row")
    if label.dtype.is_float():
        # whole numbers (a CSV column with 1.0, 2.0 …) are integer classes; anything else is not a class label
        whole = label.is_finite() & (label == label.floor()) & (label.abs() < 2**53)
        if not whole.all():
            shown = label.filter(~whole).unique().sort().head(3).to_list()
            raise DataError(f"labels {shown} are not class labels (non-integer numbers, or beyond 2**53)",
                            file=where, field=column,
                            fix="datasel selects for classification: give integer or string class labels")
        label = label.cast(pl.Int64)
    dtype = "int" if label.dtype.is_integer() else "str"
    values = label.cast(pl.String)
    classes_cfg, n_cfg = cfg.get("classes"), cfg.get("num_classes")
    if classes_cfg is not None:
        classes = [str(c) for c in classes_cfg]
        if len(set(classes)) != len(classes):
            raise ConfigError(f"data.classes has repeated values {classes}", field="data.classes",
                              fix="list each class once")
        if n_cfg is not None and int(n_cfg) != len(classes):
            raise ConfigError(f"data.num_classes is {n_cfg} but data.classes lists {len(classes)}",
                              field="data.num_classes", fix="drop data.num_classes or make the two agree")
    elif n_cfg is not None and dtype == "int":
        classes = [str(i) for i in range(int(n_cfg))]  # labels are the class indices themselves
    else:
        found = label.unique().sort()  # numeric order for integers, lexical for strings
        classes = found.cast(pl.String).to_list()
        if n_cfg is not None and int(n_cfg) != len(classes):
            raise DataError(f"the labels have {len(classes)} classes but data.num_classes is {n_cfg}", file=where,
                            field=column, fix="set data.classes to name every class, or drop data.num_classes")
    unknown = values.filter(~values.is_in(classes))
    if unknown.len():
        shown = unknown.unique().sort().head(3).to_list()
        if classes_cfg is None:
            raise DataError(f"{unknown.len()} labels are outside the classes 0..{len(classes) - 1} (e.g. {shown})",
                            file=where, field=column, fix="fix those labels, or raise data.num_classes")
        raise DataError(f"{unknown.len()} labels (e.g. {shown}) are not among data.classes {classes}", file=where,
                        field=column, fix="add them to data.classes or fix the rows")
    index = {c: i for i, c in enumerate(classes)}
    df = df.with_columns(values.replace_strict(index, return_dtype=pl.Int64).alias("label"))
    if df.get_column("label").n_unique() < 2:
        raise DataError(f"the data has a single class ({values[0]!r}); a classifier needs at least two", file=where,
                        field=column, fix="check data.label_column and the source")
    if len(classes) > 100 and len(classes) > df.height // 2:
        log.warning("%d classes for %d rows: is '%s' (data.label_column) really the class?", len(classes),
                    df.height, column)
    return df, classes, dtype


def _check_vectors(df: pl.DataFrame, where: str, feature_columns: list[str] | None = None) -> None:
    lengths = df.get_column("x").list.len()
    if lengths.n_unique() != 1:
        raise DataError(f"input vectors have different lengths ({lengths.unique().sort().head(4).to_list()})",
                        file=where, field="x", fix="give every row the same number of features")
    bad = df.select(pl.col("x").list.eval(pl.element().is_nan() | pl.element().is_infinite() | pl.element().is_null())
                    .list.any().alias("bad")).get_column("bad")
    if bad.any():
        rows = bad.arg_true().head(3).to_list()
        problem = f"{int(bad.sum())} rows have NaN, inf or missing inputs (rows {rows})"
        columns = _nonfinite_columns(df, feature_columns or [])
        if not columns:  # the user's own `x` lists: there is no column name to give
            raise DataError(problem, file=where, field="x", fix="drop or impute those rows before selection")
        shown = ", ".join(f"'{c}' ({n} rows)" for c, n in columns.items())
        raise DataError(f"{problem}, in feature columns {shown}", file=where, field="data.feature_columns",
                        fix="drop or impute those rows, or take those columns out of data.feature_columns")


def _nonfinite_columns(df: pl.DataFrame, feature_columns: list[str]) -> dict[str, int]:
    """Per feature column, the rows whose value is null, NaN or infinite (the user's names, not `x`'s positions)."""
    counts = {}
    for c in feature_columns:
        values = df.get_column(c).cast(pl.Float64)
        n = int((values.is_null() | values.is_nan() | values.is_infinite()).fill_null(True).sum())
        if n:
            counts[c] = n
    return counts


def _ids(df: pl.DataFrame, cfg: dict[str, Any], source: str, hashes: list[str], where: str) -> list[str]:
    """``<source>-<user id>`` from ``data.id_column``, else ``<source>-<content hash>``."""
    column = cfg.get("id_column")
    if not column:
        return ids_from_hashes(source, hashes)
    return user_ids(df.get_column(column), source, where, "data.id_column")


def _duplicates_across_splits(splits: list[str], hashes: list[str], where: str) -> dict[str, int]:
    """Rows of a later split whose input and label equal a row of an earlier one (train < val < test).

    Such a pair makes a validation or test score measure memorisation; it is the user's data, so it is reported,
    not removed.
    """
    by_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    rows: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split, h in zip(splits, hashes):
        by_split[split].add(h)
        rows[split].append(h)
    counts = {}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            counts[f"{a}/{b}"] = sum(h in by_split[a] for h in rows[b])
    if any(counts.values()):
        shown = ", ".join(f"{n} {pair.split('/')[1]} rows also in {pair.split('/')[0]}"
                          for pair, n in counts.items() if n)
        log.warning("duplicate rows across splits (same input and label) in %s: %s; they are kept as given "
                    "(meta duplicates_across_splits) - drop them from the data if the splits must be disjoint",
                    where, shown)
    return counts


def _splits(df: pl.DataFrame, cfg: dict[str, Any], where: str) -> pl.DataFrame:
    """Use the source's split where given; carve the missing ones out of train by a seeded draw over sorted ids.

    Every split must end up with rows: proxy checkpoints, Alchemist and target alignment evaluate on ``val`` and
    the report compares selections on ``test``, so an empty one is refused here, naming the setting to change.
    """
    fr = cfg.get("splits", {})
    fracs = {"val": float(fr.get("val", 0.1)), "test": float(fr.get("test", 0.2))}
    seed = int(fr.get("seed", 0))
    column = cfg.get("split_column") or "split"
    if "split" in df.columns:
        df = df.with_columns(pl.col("split").cast(pl.String).replace({"validation": "val", "dev": "val"}))
        bad = df.filter(~pl.col("split").is_in(list(SPLITS)))
        if bad.height:
            raise DataError(f"split values {bad.get_column('split').unique().head(3).to_list()} are not train/val/test",
                            file=where, field=column, fix="use train, val (or validation) and test")
    else:
        df = df.with_columns(pl.lit("train").alias("split"))
    have = set(df.get_column("split").unique().to_list())
    carve = [(name, fracs[name]) for name in ("test", "val") if name not in have and fracs[name] > 0]
    if sum(f for _, f in carve) >= 1.0:
        raise ConfigError(f"data.splits takes {' + '.join(str(f) for _, f in carve)} of the training rows, "
                          "leaving none to train on", field="data.splits", fix="keep data.splits.val + test below 1")
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
    sizes = {s: int((df.get_column("split") == s).sum()) for s in SPLITS}
    for name in SPLITS:
        if sizes[name]:
            continue
        if name == "train":
            raise DataError("the training split is empty", file=where, field=column,
                            fix="give the data training rows, or lower data.splits.val / data.splits.test")
        why = ("proxy checkpoints and the validation-based scorers evaluate on it" if name == "val"
               else "the trained models are compared on it")
        if fracs[name] > 0:  # asked for, but a small training split rounds it to no rows
            fix = f"raise data.splits.{name} or add rows (the training split has {sizes['train']} rows)"
        else:
            fix = f"set data.splits.{name} above 0 (e.g. {0.1 if name == 'val' else 0.2}) to carve it from train"
        raise ConfigError(f"the {name} split is empty ({why})", file=where, field=f"data.splits.{name}", fix=fix)
    return df


def _inject_noise(df: pl.DataFrame, noise: dict[str, Any], num_classes: int) -> pl.DataFrame:
    """Flip a seeded share of the training labels (a benchmark device); ``label_orig`` keeps the user's label."""
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
    df = df.with_columns((pl.col("label") != pl.col("label_orig")).alias("is_noisy"))
    log.warning("label noise INJECTED: %d of %d training labels flipped (data.noise.fraction %s); the true label "
                "is in label_orig, flips are marked is_noisy. This is a benchmark device; set "
                "data.noise.fraction: 0 to keep your labels", int(df.get_column("is_noisy").sum()), len(train_ids),
                frac)
    return df
