"""Data sources: each returns a raw frame (``x`` or ``text``, ``label``, optional ``split``/``domain``/``id``, plus
any original fields) and the name of the source. Registered by name so ``data.source`` in config picks one.

Builtin sources generate data locally (MNIST-1D from a seed, scikit-learn digits); ``files`` reads parquet/jsonl/csv;
``hf`` reads a Hugging Face dataset saved with ``save_to_disk`` or loadable by ``datasets.load_dataset``.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Loader = Callable[[dict[str, Any]], pl.DataFrame]
SOURCES: dict[str, Loader] = {}
# The data kind a builtin source always produces; sources absent here read a user's data, whose kind the config
# decides (``data.text_column`` set → text, else vector), never the presence of a column.
SOURCE_KINDS: dict[str, str] = {}

# Columns of the examples table that datasel writes itself. A user's column may carry one of these names only when
# it is mapped onto exactly that role (``label_column: label``, ``split_column: split``, ``x`` as the inputs …);
# otherwise it would be silently overwritten, so it is refused (see ``_check_reserved``).
INTERNAL_COLUMNS = ("example_id", "source", "split", "label", "label_orig", "is_noisy", "x", "text", "domain",
                    "source_row")
_HF_SPLIT = "_hf_split"  # the split a DatasetDict's keys give, before it is mapped onto ``split``


def register_source(name: str, kind: str | None = None) -> Callable[[Loader], Loader]:
    """Register a loader under ``data.source: name``; ``kind`` fixes the data kind of a builtin generator."""

    def deco(fn: Loader) -> Loader:
        SOURCES[name] = fn
        if kind is not None:
            SOURCE_KINDS[name] = kind
        return fn

    return deco


def load_source(cfg: dict[str, Any]) -> pl.DataFrame:
    name = cfg.get("source")
    if name not in SOURCES:
        raise ConfigError(f"unknown data source '{name}'", field="data.source", fix=f"use one of: {sorted(SOURCES)}")
    return SOURCES[name](cfg)


def data_kind(cfg: dict[str, Any]) -> str:
    """``text`` or ``vector``: fixed by a builtin source, else by whether ``data.text_column`` is set."""
    return SOURCE_KINDS.get(str(cfg.get("source")), "text" if cfg.get("text_column") else "vector")


def user_columns(cfg: dict[str, Any]) -> dict[str, Any]:
    """Which of the user's columns became which role (meta ``columns``); ``None`` where no user column did."""
    return {
        "label": cfg.get("label_column", "label"),
        "id": cfg.get("id_column"),
        "text": cfg.get("text_column"),
        "features": list(cfg["feature_columns"]) if cfg.get("feature_columns") else None,
        "split": cfg.get("split_column"),
        "domain": cfg.get("domain_column"),
    }


def _vector_frame(x: np.ndarray, y: np.ndarray, split: list[str] | None = None) -> pl.DataFrame:
    cols: dict[str, Any] = {
        "x": pl.Series("x", x.astype(np.float32)).cast(pl.List(pl.Float32)),
        "label": y.astype(np.int64),
    }
    if split is not None:
        cols["split"] = split
    return pl.DataFrame(cols)


@register_source("mnist1d", kind="vector")
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


@register_source("digits", kind="vector")
def digits_source(cfg: dict[str, Any]) -> pl.DataFrame:
    """scikit-learn's bundled 8×8 digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _vector_frame(d.data / 16.0, d.target)


@register_source("docstring_topics", kind="text")
def docstring_topics_source(cfg: dict[str, Any]) -> pl.DataFrame:
    """Docstrings of installed packages labelled by package (:mod:`datasel.data.docstring_topics`), mined on the
    spot from ``data.docstring_topics`` (``packages``, ``per_class``, ``seed``, ``min_chars``, ``max_chars``).

    The miner's ``id`` (``package/module:name:line``) stays as a plain field, so an export names each docstring's
    origin; example ids are content hashes like every builtin source's.
    """
    from datasel.data.docstring_topics import PACKAGES, docstring_topics, package_root

    opts = dict(cfg.get("docstring_topics") or {})
    packages = list(opts.get("packages", PACKAGES))
    # a package that is not installed would silently drop a class and change what the experiment measures
    missing = [p for p in packages if package_root(p) is None]
    if missing:
        raise ConfigError(f"packages {missing} are not installed (or are single modules, not packages)",
                          field="data.docstring_topics.packages",
                          fix=f"install them or list only installed packages (the default is {list(PACKAGES)})")
    log.info("mining docstrings of %s (%s per class)", packages, opts.get("per_class", 900))
    df = docstring_topics(packages, per_class=int(opts.get("per_class", 900)), seed=int(opts.get("seed", 0)),
                          min_chars=int(opts.get("min_chars", 30)), max_chars=int(opts.get("max_chars", 400)))
    return df.rename({"id": "origin"})


def read_data_file(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    readers = {".parquet": pl.read_parquet, ".jsonl": pl.read_ndjson, ".json": pl.read_ndjson, ".csv": pl.read_csv}
    if suffix not in readers:
        raise DataError(f"unsupported file type '{suffix}'", file=path, fix="use .parquet, .jsonl or .csv")
    if suffix == ".csv":
        # polars pads a short row with nulls and shifts the fields after a missing one into the wrong columns:
        # the resulting columns name neither the line nor the fault, so the lines are checked first
        check_csv_lines(path)
    try:
        return readers[suffix](path)
    except Exception as exc:
        if suffix in (".jsonl", ".json"):
            _check_jsonl_lines(path)  # names the first line that is not a JSON object, when one is the cause
        raise DataError(
            f"cannot read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
            file=path,
            fix=f"check that the file is valid {suffix[1:]} (not truncated)",
        ) from None


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, its fields) for every record of a CSV file, the header first; lines are counted
    from 1 as an editor counts them, so a quoted value spanning lines moves the next record's line on."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)  # polars' dialect: comma, double quote, "" escapes a quote
        start = 1
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1


def check_csv_lines(path: Path) -> None:
    """Refuse the first line whose number of fields differs from the header's, naming the line and both counts."""
    records = _csv_records(path)
    header = next(records, None)
    if header is None:
        return
    n = len(header[1])
    for line, fields in records:
        if len(fields) == n or (n == 1 and not fields):  # one column: a blank line is an empty value
            continue
        if not fields:
            raise DataError(f"line {line} is blank; the header (line 1) names {n} fields", file=path,
                            fix=f"delete line {line}: a blank line would be read as a row with every field empty")
        few = len(fields) < n
        raise DataError(
            f"too {'few' if few else 'many'} fields on line {line}: {len(fields)}, expected {n} as in the header "
            f"(line 1)", file=path,
            fix=(f"give line {line} all {n} fields in the header's order (an empty value is an empty field, a,,c)"
                 if few else f"remove the extra fields from line {line}, or quote a value that holds a comma "
                             '("1,5")'))


def _check_jsonl_lines(path: Path) -> None:
    """Refuse the first line of a JSON-lines file that is not one JSON object (blank lines are skipped)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))  # so a column past the end is this line's, not the next
            except json.JSONDecodeError as exc:
                raise DataError(f"line {line_no} is not valid JSON ({exc.msg} at column {exc.colno})", file=path,
                                fix=f"fix line {line_no}: each line holds one JSON object, {{\"field\": value, ...}}"
                                ) from None
            if not isinstance(value, dict):
                raise DataError(f"line {line_no} holds a JSON {_json_kind(value)}, not an object", file=path,
                                fix=f"make line {line_no} one JSON object, {{\"field\": value, ...}}")


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def row_place(where: str, row: int) -> str:
    """Where row ``row`` (counted from 0 in the order read) of a data file is, as its user finds it: ``line N`` of a
    CSV (the header is line 1; quoted values may span lines) or JSON-lines file, else ``row N`` counted from 1."""
    path = Path(where)
    suffix = path.suffix.lower()
    if suffix == ".csv" and path.is_file():
        for i, (line, _) in enumerate(_csv_records(path)):
            if i == row + 1:
                return f"line {line}"
    if suffix in (".jsonl", ".json") and path.is_file():
        with open(path, encoding="utf-8", errors="replace") as fh:
            rows = (n for n, text in enumerate(fh, start=1) if text.strip())
            for i, line in enumerate(rows):
                if i == row:
                    return f"line {line}"
    return f"row {row + 1}"


def _no_column(col: str, columns: list[str], key: str, where: str, what: str = "column") -> DataError:
    """A config key naming a column the file lacks: the field is the key to edit, the closest column the likely fix."""
    close = difflib.get_close_matches(col, columns, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    fix = f"replace '{col}' in {key}" if key == "data.feature_columns" else f"set {key}"
    return DataError(f"no {what} '{col}'{hint}; the file's columns: {', '.join(columns)}", file=where, field=key,
                     fix=f"{fix} by one of the file's columns" + (f", e.g. '{close[0]}'" if close else ""))


def _check_roles(cfg: dict[str, Any]) -> None:
    """One user column per role: the same column cannot be both, say, the label and the split."""
    roles = [("data.label_column", cfg.get("label_column", "label"))]
    roles += [(f"data.{k}", cfg.get(k)) for k in ("text_column", "split_column", "domain_column", "id_column")]
    seen: dict[str, str] = {}
    for key, col in roles:
        if col and seen.setdefault(col, key) != key:
            raise ConfigError(f"column '{col}' is given two roles ({seen[col]} and {key})", field=key,
                              fix="map each role to a different column")
    if cfg.get("text_column") and cfg.get("feature_columns"):
        raise ConfigError("both data.text_column and data.feature_columns are set", field="data.feature_columns",
                          fix="choose the inputs: a text column or numeric feature columns, not both")


def _check_reserved(df: pl.DataFrame, cfg: dict[str, Any], kind: str, where: str) -> None:
    """Refuse a user column that carries an internal column's name without being mapped onto that role.

    Renaming it silently would change the user's columns on export, and keeping it would let datasel overwrite it
    (the examples table would hold datasel's ``source`` or ``is_noisy`` under the user's name), so it is refused.
    """
    renamed = {cfg.get("label_column", "label"), cfg.get("text_column"), cfg.get("split_column"),
               cfg.get("domain_column")} - {None}
    x_is_input = kind == "vector" and not cfg.get("feature_columns")
    for col in df.columns:
        if col in renamed or col not in INTERNAL_COLUMNS:
            continue
        if (col == "x" and x_is_input) or (col == "text" and kind == "vector"):
            continue  # x as the inputs is its role; a free-text column beside vector inputs is a plain field
        role = {"split": "split_column", "domain": "domain_column", "label": "label_column",
                "text": "text_column"}.get(col)
        how = f"set data.{role}: {col} if it is the {col}, or rename it" if role else "rename it"
        if col == "x":
            how = "rename it (the inputs are data.feature_columns / data.text_column), or drop those to use x"
        raise DataError(f"column '{col}' has the name of a column datasel writes, which would overwrite it",
                        file=where, field=col, fix=f"{how}; reserved names: {', '.join(INTERNAL_COLUMNS)}")


def _standardize(df: pl.DataFrame, cfg: dict[str, Any], where: str) -> pl.DataFrame:
    """Map a user's columns onto ``x``/``text``, ``label``, ``split``, ``domain``; keep the rest under their names.

    The id column (``data.id_column``) and the feature columns stay as they are (prepare reads them); a user's
    column is never implicitly taken for a role (a column named ``split`` is the split only with
    ``split_column: split``, a ``text`` column makes text data only with ``text_column``).
    """
    _check_roles(cfg)
    kind = data_kind(cfg)
    columns = df.columns  # the user's names, for messages after the renames below
    label_col = cfg.get("label_column", "label")
    if label_col not in df.columns:
        raise _no_column(label_col, df.columns, "data.label_column", where, "label column")
    missing = df.get_column(label_col).null_count()
    if missing:  # here, where the file is known, so the message can name its line
        row = int(df.get_column(label_col).is_null().arg_max())
        raise DataError(f"{missing} rows have no label (the first on {row_place(where, row)})", file=where,
                        field=label_col, fix="drop unlabeled rows or fill the label")
    renames = {label_col: "label"}
    for key, target in (("split_column", "split"), ("domain_column", "domain"), ("id_column", None)):
        col = cfg.get(key)
        if col:
            if col not in df.columns:
                raise _no_column(col, df.columns, f"data.{key}", where)
            if target:
                renames[col] = target
    _check_reserved(df, cfg, kind, where)
    text_col = cfg.get("text_column")
    feature_cols = cfg.get("feature_columns")
    if text_col:
        if text_col not in df.columns:
            raise _no_column(text_col, df.columns, "data.text_column", where, "text column")
        if df.schema[text_col] != pl.String:
            raise DataError(f"text column '{text_col}' has dtype {df.schema[text_col]}, expected strings",
                            file=where, field=text_col, fix="point data.text_column at a column of strings")
        if df.get_column(text_col).null_count():
            row = int(df.get_column(text_col).is_null().arg_max())
            raise DataError(f"{df.get_column(text_col).null_count()} rows have no text (the first on "
                            f"{row_place(where, row)})", file=where, field=text_col, fix="drop those rows or fill the text")
        renames[text_col] = "text"
    elif "text" in df.columns and df.schema["text"] != pl.String:
        raise DataError(f"column 'text' has dtype {df.schema['text']}; datasel keeps a 'text' column as strings",
                        file=where, field="text", fix="rename it, or store it as strings")
    df = df.rename(renames)
    if "domain" in renames.values():
        df = df.with_columns(pl.col("domain").cast(pl.String))
    if kind == "vector":
        if feature_cols:
            missing = [c for c in feature_cols if c not in df.columns]
            if missing:
                err = _no_column(missing[0], columns, "data.feature_columns", where, "feature column")
                if len(missing) > 1:
                    err.problem += f"; also missing: {', '.join(missing[1:])}"
                raise err
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
        frames.append(_standardize(read_data_file(p), cfg, str(p)))
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
        if cfg.get("split_column"):  # the user's own split column wins over the dict's keys
            df = df.drop(_HF_SPLIT)
        else:
            cfg = {**cfg, "split_column": _HF_SPLIT}
    else:
        df = pl.from_arrow(ds.data.table)
    return _standardize(df, cfg, str(name))
