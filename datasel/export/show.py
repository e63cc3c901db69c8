"""``datasel show``: a selection's kept (and dropped) rows with their scores, in the user's own columns.

A selection table does not name the score it was made from; the select job's inputs do (``rules/select.smk``
gives it ``results/scores/<policy's score>.parquet``). The score table is taken, in this order, from ``--scores``,
from Snakemake's record of the job that wrote the selection (``.snakemake/metadata``, its input list), or from the
longest score name the policy name starts with (``el2n_offset`` → ``el2n``); the output says which.
"""

from __future__ import annotations

import json
import os
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from datasel.errors import DataselError
from datasel.export.frame import HELPERS, PREFIX, joined, resolve_order, user_columns, user_view
from datasel.export.inputs import NAME_RE, Inputs, load_inputs
from datasel.store import read_table

SCORE_COLUMNS = ("score", "rank", "score_std")


@dataclass(frozen=True)
class Shown:
    """Every column of the kept and dropped rows; ``columns`` are the ones worth printing (the rest: ``others``)."""

    kept: pl.DataFrame
    dropped: pl.DataFrame
    scores: Path | None
    scores_from: str
    sorted_by: str
    columns: tuple[str, ...] = ()
    others: tuple[str, ...] = ()


def _unset_position(view: pl.DataFrame, column: str) -> bool:
    """The selection's position column when it has no curriculum: null on every row, so neither shown nor listed."""
    return column.removeprefix(PREFIX) == "position" and view.get_column(column).null_count() == view.height


def _main_columns(view: pl.DataFrame, meta: dict, score_columns: list[str]) -> list[str]:
    """The columns that tell why a row was kept, in this order: the row's key (the user's id, else its row number),
    its text, its label, the score columns, whether the label was noised, and the selection's weight and position.
    Every other user column (a table's 64 features) is listed by name instead of pushing these off the screen."""
    cols = user_columns(meta)
    added = [c for c in view.columns if c.removeprefix(PREFIX) in ("is_noisy", "weight", "position")
             and not _unset_position(view, c)]
    wanted = [view.columns[0], cols.text, cols.label, *score_columns, *added]
    out: list[str] = []
    for c in wanted:
        if c and c in view.columns and c not in out:
            out.append(c)
    return out


def _snakemake_record(results: Path, table: Path) -> list[str]:
    """The input files Snakemake recorded for the job that wrote ``table`` (empty when there is no record)."""
    workdir = results.resolve().parent
    try:
        rel = os.path.relpath(table.resolve(), workdir)
    except ValueError:
        return []
    # Snakemake's record path: the urlsafe base64 of the output path, cut into name-length pieces
    b64 = urlsafe_b64encode(rel.encode()).decode()
    pieces = [b64[i:i + 254] for i in range(0, len(b64), 254)]
    record = workdir / ".snakemake" / "metadata" / Path(*["@" + p for p in pieces[:-1]], pieces[-1])
    try:
        inputs = json.loads(record.read_text()).get("input") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [str(i) for i in inputs if isinstance(i, str)]


def find_scores(inputs: Inputs, name: str | None = None) -> tuple[Path | None, str]:
    """The score table the selection was made from, and how it was found."""
    folder = inputs.results / "scores"
    have = sorted(p.stem for p in folder.glob("*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []
    if name is not None:
        if not NAME_RE.fullmatch(name) or ".." in name or name not in have:
            raise DataselError(f"unknown score table '{name}'", file=folder, field="--scores",
                               fix=f"use one of: {', '.join(have)}" if have else "run the scoring step first")
        return folder / f"{name}.parquet", "given by --scores"
    for path in _snakemake_record(inputs.results, inputs.path):
        p = Path(path)
        if p.parent.name == "scores" and p.suffix == ".parquet" and p.stem in have:
            return folder / f"{p.stem}.parquet", "from the Snakemake record of the select job"
    policy = inputs.name.rsplit("_keep", 1)[0]
    matches = [s for s in have if policy == s or policy.startswith(s + "_")]
    if matches:
        return folder / f"{max(matches, key=len)}.parquet", "matched by the policy name; no Snakemake record found"
    return None, "no score table: the policy reads none, or none was found (pass --scores NAME)"


def show_rows(results: str | Path, selection: str, scores: str | None = None) -> Shown:
    """Every row of the selection in the user's columns, with its score, split into kept and dropped."""
    inputs = load_inputs(results, selection)
    rows = joined(inputs, kept_only=False)
    path, found = find_scores(inputs, scores)
    helpers = [HELPERS["selected"], HELPERS["position"], HELPERS["source_row"]]
    scored: dict[str, str] = {}
    if path is not None:
        table = read_table(path, "scores")
        scored = {f"__score_{c}": c for c in SCORE_COLUMNS if c in table.columns}
        rows = rows.join(table.select("example_id", *[pl.col(c).alias(k) for k, c in scored.items()]),
                         on="example_id", how="left")
    view = user_view(rows, inputs, keep=tuple(helpers + list(scored)))
    taken = set(view.columns)
    score_columns = [PREFIX + c if c in taken else c for c in scored.values()]
    view = view.rename(dict(zip(scored, score_columns)))
    if "__score_rank" in scored:
        rank = PREFIX + "rank" if "rank" in taken else "rank"
        view, by = view.sort(rank, HELPERS["source_row"], nulls_last=True), "score rank"
    else:
        used = resolve_order(rows.filter(pl.col(HELPERS["selected"])), None)
        key = [HELPERS["position"], HELPERS["source_row"]] if used == "curriculum" else [HELPERS["source_row"]]
        view, by = view.sort(key, nulls_last=True), f"{used} order"
    kept = pl.col(HELPERS["selected"])
    # a dropped row has no weight or position: those columns would only show 0.0 and null
    unset = [PREFIX + c if PREFIX + c in view.columns else c for c in ("weight", "position")]
    kept_rows, dropped_rows = view.filter(kept).drop(helpers), view.filter(~kept).drop(*helpers, *unset)
    main = _main_columns(kept_rows, inputs.meta, score_columns)
    return Shown(kept_rows, dropped_rows, path, found, by, tuple(main),
                 tuple(c for c in kept_rows.columns if c not in main and not _unset_position(kept_rows, c)))
