"""Data sources: each returns a raw frame (``x`` or ``text``, ``label``, optional ``split``/``domain``/``id``, plus
any original fields) and the name of the source. Registered by name so ``data.source`` in config picks one.

Builtin sources generate data locally (MNIST-1D from a seed, scikit-learn digits); ``files`` reads parquet/jsonl/csv;
``hf`` reads a Hugging Face dataset saved with ``save_to_disk`` or loadable by ``datasets.load_dataset``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Loader = Callable[[dict[str, Any]], pl.DataFrame]
SOURCES: dict[str, Loader] = {}


def register_source(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        SOURCES[name] = fn
        return fn

    return deco


def load_source(cfg: dict[str, Any]) -> pl.DataFrame:
    name = cfg.get("source")
    if name not in SOURCES:
        raise ConfigError(f"unknown data source '{name}'", field="data.source", fix=f"use one of: {sorted(SOURCES)}")
    return SOURCES[name](cfg)


def _vector_frame(x: np.ndarray, y: np.ndarray, split: list[str] | None = None) -> pl.DataFrame:
    cols: dict[str, Any] = {
        "x": pl.Series("x", x.astype(np.float32)).cast(pl.List(pl.Float32)),
        "label": y.astype(np.int64),
    }
    if split is not None:
        cols["split"] = split
    return pl.DataFrame(cols)


@register_source("mnist1d")
def mnist1d_source(cfg: dict[str, Any]) -> pl.DataFrame:
    """MNIST-1D generated from its seed (Greydanus 2020); generator knobs pass through ``data.mnist1d``."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    overrides = dict(cfg.get("mnist1d", {}))
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise ConfigError(f"unknown MNIST-1D generator setting '{key}'", field=f"data.mnist1d.{key}",
                              fix=f"use one of: {sorted(get_dataset_args(as_dict=True))}")
        setattr(args, key, value)
    log.info("generating MNIST-1D: %d samples, seed %d", args.num_samples, args.seed)
    ds = make_dataset(args)
    x = np.concatenate([ds["x"], ds["x_test"]])
    y = np.concatenate([ds["y"], ds["y_test"]])
    split = ["train"] * len(ds["y"]) + ["test"] * len(ds["y_test"])
    return _vector_frame(x, y, split)


@register_source("digits")
def digits_source(cfg: dict[str, Any]) -> pl.DataFrame:
    """scikit-learn's bundled 8×8 digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _vector_frame(d.data / 16.0, d.target)


def _read_file(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    readers = {".parquet": pl.read_parquet, ".jsonl": pl.read_ndjson, ".json": pl.read_ndjson, ".csv": pl.read_csv}
    if suffix not in readers:
        raise DataError(f"unsupported file type '{suffix}'", file=path, fix="use .parquet, .jsonl or .csv")
    try:
        return readers[suffix](path)
    except Exception as exc:
        raise DataError(
            f"cannot read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
            file=path,
            fix=f"check that the file is valid {suffix[1:]} (not truncated)",
        ) from None


def _standardize(df: pl.DataFrame, cfg: dict[str, Any], where: str) -> pl.DataFrame:
    """Map a user's columns onto ``x``/``text``, ``label``, ``split``, ``domain``, ``id``; keep the rest as-is."""
    label_col = cfg.get("label_column", "label")
    if label_col not in df.columns:
        raise DataError(f"no label column '{label_col}' (columns: {df.columns})", file=where, field=label_col,
                        fix="set data.label_column to the column holding the class")
    renames = {label_col: "label"}
    for key, target in (("split_column", "split"), ("domain_column", "domain"), ("id_column", "id")):
        col = cfg.get(key)
        if col:
            if col not in df.columns:
                raise DataError(f"no column '{col}' (columns: {df.columns})", file=where, field=col,
                                fix=f"fix data.{key} or remove it")
            renames[col] = target
    text_col = cfg.get("text_column")
    feature_cols = cfg.get("feature_columns")
    if text_col:
        if text_col not in df.columns:
            raise DataError(f"no text column '{text_col}'", file=where, field=text_col, fix="fix data.text_column")
        renames[text_col] = "text"
    df = df.rename(renames)
    if not text_col:
        if feature_cols:
            missing = [c for c in feature_cols if c not in df.columns]
            if missing:
                raise DataError(f"feature columns {missing} are missing", file=where, field=missing[0],
                                fix="fix data.feature_columns")
            bad = [c for c in feature_cols if not df.schema[c].is_numeric()]
            if bad:
                raise DataError(f"feature column '{bad[0]}' has dtype {df.schema[bad[0]]}, expected a number",
                                file=where, field=bad[0], fix="convert it to a numeric type or drop it")
            df = df.with_columns(pl.concat_list([pl.col(c).cast(pl.Float32) for c in feature_cols]).alias("x"))
        elif "x" in df.columns:
            if not isinstance(df.schema["x"], (pl.List, pl.Array)):
                raise DataError(f"column 'x' has dtype {df.schema['x']}, expected a list of numbers", file=where,
                                field="x", fix="store x as a list of floats, or name scalar columns in data.feature_columns")
            df = df.with_columns(pl.col("x").cast(pl.List(pl.Float32)))
        else:
            raise DataError("no inputs: neither 'x', data.feature_columns nor data.text_column", file=where,
                            field="x", fix="name the input columns in data.feature_columns or data.text_column")
    return df


@register_source("files")
def files_source(cfg: dict[str, Any]) -> pl.DataFrame:
    """Local parquet/jsonl/csv files; several files are concatenated (same columns)."""
    paths = cfg.get("path")
    if not paths:
        raise ConfigError("source 'files' needs a path", field="data.path", fix="set data.path to a file or a list")
    paths = [paths] if isinstance(paths, str) else list(paths)
    frames = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError("data file not found", file=p, field="data.path", fix="check the path (relative to the working directory)")
        frames.append(_standardize(_read_file(p), cfg, str(p)))
    try:
        return pl.concat(frames, how="diagonal_relaxed")
    except Exception as exc:
        raise DataError(f"the files' columns do not agree ({exc})", file=paths[0], fix="give all files the same columns") from None


@register_source("hf")
def hf_source(cfg: dict[str, Any]) -> pl.DataFrame:
    """A Hugging Face dataset: a ``save_to_disk`` folder, local files through a builder, or a hub name."""
    import datasets

    name = cfg.get("path")
    if not name:
        raise ConfigError("source 'hf' needs a path or dataset name", field="data.path")
    split = cfg.get("hf_split")
    try:
        if Path(name).is_dir() and (Path(name) / "dataset_dict.json").exists() or (Path(name) / "dataset_info.json").exists():
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, data_files=cfg.get("data_files"), split=split)
    except Exception as exc:
        raise DataError(f"cannot load the dataset ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                        file=name, field="data.path",
                        fix="give a save_to_disk folder, a builder name with data.data_files, or a reachable hub name") from None
    if isinstance(ds, datasets.DatasetDict):
        parts = []
        for split_name, part in ds.items():
            frame = pl.from_arrow(part.data.table)
            parts.append(frame.with_columns(pl.lit({"validation": "val"}.get(split_name, split_name)).alias("_hf_split")))
        df = pl.concat(parts, how="diagonal_relaxed")
        cfg = {"split_column": "_hf_split", **cfg}
    else:
        df = pl.from_arrow(ds.data.table)
    return _standardize(df, cfg, str(name))
