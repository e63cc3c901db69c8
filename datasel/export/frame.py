"""The rows a trainer or a person gets: the user's own ids and column names, original labels, no internal columns.

The examples table speaks the pipeline's language (``example_id``, ``label`` as a class index that may carry
injected noise, ``x`` packing the feature columns). An export speaks the user's: the id column they gave (or
``source_row``, the 0-based row in their data as read, files concatenated in order), the label back under its own
name with its original value (never a flipped one: the pre-noise ``label_orig``), their text and feature columns,
plus ``weight`` and ``position`` from the selection and ``is_noisy`` when noise was injected. ``internal=True``
adds the pipeline's own columns back. A column the export adds never replaces one of the user's: it takes a
``datasel_`` prefix when the name is taken.

meta.json's ``columns`` (label/id/text/features), ``label_dtype`` and the examples' ``source_row`` are read when
present; results written before them still export (label named ``label``, row number from the table's order,
which ``prepare`` keeps as read).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from datasel.errors import DataError, DataselError
from datasel.export.inputs import Inputs

SPLITS = ("train", "val", "test")
DEFAULT_SPLITS = ("train",)  # what an export holds unless --splits asks for more: the selection itself
ORDERS = ("curriculum", "source")
# columns of the examples table that are the pipeline's, not the user's (`_hf_split` is the hf source's split column)
INTERNAL = ("example_id", "source", "split", "label", "label_orig", "is_noisy", "x", "text", "id", "source_row",
            "_hf_split")
PREFIX = "datasel_"
# the selection's columns and the source row number while rows are joined (names no user column has)
HELPERS = {"selected": "__ds_selected", "weight": "__ds_weight", "position": "__ds_position", "source_row": "__ds_row"}


@dataclass(frozen=True)
class UserColumns:
    """Where the user's columns went in the examples table (meta.json ``columns``)."""

    label: str
    id: str | None
    text: str | None
    features: tuple[str, ...]
    split: str | None = None  # the user's split column (its values as read: validation/dev become val)
    domain: str | None = None

    def name_of(self, column: str) -> str:
        """The user's name for an examples column that datasel renamed (label, text, domain, split)."""
        return {"label": self.label, "text": self.text, "domain": self.domain, "split": self.split}.get(column) or column


def user_columns(meta: dict[str, Any]) -> UserColumns:
    cols = meta.get("columns") or {}
    return UserColumns(label=cols.get("label") or "label", id=cols.get("id") or None, text=cols.get("text") or None,
                       features=tuple(cols.get("features") or ()), split=cols.get("split") or None,
                       domain=cols.get("domain") or None)


def _is_int_text(values: list[str]) -> bool:
    """True when every value is an integer written the canonical way (so ``"007"`` stays a string)."""
    try:
        return all(str(int(v)) == v for v in values)
    except ValueError:
        return False


def _label_expr(meta: dict[str, Any], source: str, name: str) -> pl.Expr:
    """The original label value (``classes[index]``), an int again when the user's labels were ints."""
    classes = [str(c) for c in meta.get("classes") or []]
    if not classes:
        return pl.col(source).alias(name)
    dtype = meta.get("label_dtype")
    as_int = dtype == "int" if dtype else _is_int_text(classes)  # older meta: infer from the class names
    if as_int:
        if not _is_int_text(classes):
            raise DataError(f"label_dtype is 'int' but the classes are {classes[:4]}", file="meta.json",
                            field="classes", fix="rerun the prepare step")
        return pl.col(source).replace_strict({i: int(c) for i, c in enumerate(classes)}, return_dtype=pl.Int64).alias(name)
    return pl.col(source).replace_strict(dict(enumerate(classes)), return_dtype=pl.String).alias(name)


def _id_expr(rows: pl.DataFrame, cols: UserColumns) -> pl.Expr:
    """The user's id: kept under its own name or as ``id``, else recovered from ``example_id = <source>-<id>``."""
    for have in (cols.id, "id"):
        if have in rows.columns:
            return pl.col(have).alias(cols.id)
    stripped = rows.get_column("example_id").str.strip_prefix(rows.get_column("source") + "-")
    if _is_int_text(stripped.drop_nulls().unique().to_list()):
        stripped = stripped.cast(pl.Int64)
    return pl.lit(stripped).alias(cols.id)


def _user_fields(rows: pl.DataFrame, meta: dict[str, Any], cols: UserColumns) -> list[str]:
    """The user's own columns in their order (meta ``fields``), then any others the table carries."""

    def is_user(c: str) -> bool:
        if c == cols.id:
            return False  # exported first, as the key
        if c in ("label", "text") or (c == "split" and cols.split):
            return True  # renamed back to the user's names
        if c == "x":
            return not cols.features  # x only packs the feature columns when the user named them
        return c not in INTERNAL and c not in HELPERS.values()

    listed = [str(f) for f in meta.get("fields") or []]
    return list(dict.fromkeys(c for c in listed + rows.columns if c in rows.columns and is_user(c)))


def _examples(inputs: Inputs) -> pl.DataFrame:
    """The examples with the row number under its HELPERS name (and the user's feature columns unpacked)."""
    ex = inputs.examples
    row = pl.col("source_row") if "source_row" in ex.columns else pl.int_range(pl.len())
    ex = ex.with_columns(row.cast(pl.Int64).alias(HELPERS["source_row"]))
    features = user_columns(inputs.meta).features
    if "x" in ex.columns and any(f not in ex.columns for f in features):
        # a table that kept only the packed vector: unpack the user's feature columns from it (as float32)
        ex = ex.with_columns(pl.col("x").list.get(i).alias(f) for i, f in enumerate(features) if f not in ex.columns)
    return ex


def joined(inputs: Inputs, kept_only: bool = True) -> pl.DataFrame:
    """Selection rows joined with their examples, the selection's columns and the row number under HELPERS names."""
    ex = _examples(inputs)
    sel = inputs.selection.filter(pl.col("selected")) if kept_only else inputs.selection
    sel = sel.select("example_id", *[pl.col(c).alias(HELPERS[c]) for c in ("selected", "weight", "position")])
    rows = sel.join(ex, on="example_id", how="inner")
    if rows.height != sel.height:
        raise DataError(f"{sel.height - rows.height} selected ids are not in the examples table", file=inputs.path,
                        field="example_id", fix="the selection is stale: rerun the workflow")
    return rows


def user_view(rows: pl.DataFrame, inputs: Inputs, internal: bool = False, keep: tuple[str, ...] = ()) -> pl.DataFrame:
    """Rename and restrict joined rows to the user's columns: the key (their id, else ``source_row``), their fields,
    then ``is_noisy``, ``weight``, ``position`` (and with ``internal`` the pipeline's columns); ``keep`` passes
    extra columns through as they are (e.g. a show's scores)."""
    meta, cols = inputs.meta, user_columns(inputs.meta)
    label_src = "label_orig" if "label_orig" in rows.columns else "label"
    fields = [c for c in _user_fields(rows, meta, cols) if c not in keep]
    user: dict[str, pl.Expr] = {}
    for c in fields:
        name = cols.name_of(c)
        if name in user or name == cols.id:
            raise DataError(f"two of the user's columns would both be named '{name}'", field="columns",
                            file=inputs.results / "examples" / "meta.json", fix="rerun the prepare step")
        user[name] = _label_expr(meta, label_src, name) if c == "label" else pl.col(c).alias(name)
    taken = set(user) | {cols.id}

    def free(c: str) -> str:  # an added column never takes a name the user's data already uses
        return PREFIX + c if c in taken else c

    key = _id_expr(rows, cols) if cols.id else pl.col(HELPERS["source_row"]).alias(free("source_row"))
    noisy = int(meta.get("noisy") or 0) > 0 or bool(inputs.examples.get_column("is_noisy").any())
    added = (["is_noisy"] if noisy else []) + ["weight", "position"]
    if internal:
        # the pipeline's columns, except those already exported unchanged (the label is exported transformed)
        done = (set(fields) - {"label"}) | set(added) | set(keep) | set(HELPERS.values())
        done |= {cols.id} if cols.id else {"source_row"}  # the key is already out
        added += [c for c in rows.columns if c not in done]
    extra = [pl.col(HELPERS.get(c, c)).alias(free(c)) for c in added]
    return rows.select(key, *user.values(), *extra, *[pl.col(k) for k in keep])


def resolve_order(rows: pl.DataFrame, order: str | None) -> str:
    """``curriculum`` when asked or by default when every row has a position, else ``source``."""
    if order is not None and order not in ORDERS:
        raise DataselError(f"unknown order '{order}'", field="--order", fix=f"use one of {ORDERS}")
    complete = rows.height > 0 and rows.get_column(HELPERS["position"]).null_count() == 0
    if order == "curriculum" and not complete:
        raise DataselError("this selection has no curriculum order (its position column is empty)", field="--order",
                           fix="use --order source, or give the policy a curriculum")
    return order or ("curriculum" if complete else "source")


def parse_splits(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--splits train,val``: the splits to export, in train, val, test order (default: train alone)."""
    if spec is None:
        return DEFAULT_SPLITS
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for name in names:
        if name not in SPLITS:
            close = difflib.get_close_matches(name, SPLITS, n=1)
            raise DataselError(f"unknown split '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                               field="--splits", fix=f"give some of {', '.join(SPLITS)}, comma-separated")
    if not names:
        raise DataselError("no split given", field="--splits", fix=f"give some of {', '.join(SPLITS)}")
    return tuple(s for s in SPLITS if s in names)


def export_frame(inputs: Inputs, order: str | None = None, internal: bool = False,
                 splits: Sequence[str] = DEFAULT_SPLITS) -> tuple[pl.DataFrame, str, dict[str, int]]:
    """The exported rows in the requested order, the order used, and the rows of each split.

    The training split holds the selection's kept rows (in curriculum or source order); a validation or test
    split, which no policy selects from, holds all its rows in source order, without weight or position. With
    more than the training split, a ``split`` column (``datasel_split`` when the user has a column of that name)
    says which row is which, unless the user's own split column is exported.
    """
    rows = joined(inputs)
    used = resolve_order(rows, order)
    by = [HELPERS["position"], HELPERS["source_row"]] if used == "curriculum" else [HELPERS["source_row"]]
    parts = [rows.sort(by)] if "train" in splits else []
    ex = _examples(inputs)
    for split in splits:
        if split != "train":
            part = ex.filter(pl.col("split") == split).sort(HELPERS["source_row"])
            empty = {c: pl.lit(None, dtype=rows.schema[HELPERS[c]]).alias(HELPERS[c]) for c in ("selected", "weight",
                                                                                                "position")}
            parts.append(part.with_columns(*empty.values()).select(rows.columns))
    both = pl.concat(parts) if parts else rows.clear()
    counts = {s: int((both.get_column("split") == s).sum()) for s in splits}
    view = user_view(both, inputs, internal)
    cols = user_columns(inputs.meta)
    if tuple(splits) != DEFAULT_SPLITS and not cols.split and not internal:
        name = "split" if "split" not in view.columns else PREFIX + "split"
        view = view.with_columns(both.get_column("split").alias(name))
    return view, used, counts
