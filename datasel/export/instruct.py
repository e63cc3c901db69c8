"""An instruct run's selection as rows to export: the selected pool rows exactly as the user gave them.

The instruct chain (rules/instruct.smk) keeps its own folder, ``results/instruct/``: ``selections/``,
``examples.parquet`` (whose ``source_row`` is the row in the pool file) and ``source_pool.parquet`` (the pool file
as read). The rows are the pool file's own, every column in its order, nothing added (``internal`` adds the
pipeline's ``example_id``, ``weight`` and ``position``, under a ``datasel_`` prefix where a name is taken).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from datasel.errors import DataError
from datasel.export.frame import HELPERS, PREFIX, resolve_order
from datasel.export.inputs import INSTRUCT_SOURCE, selection_path
from datasel.store import read_table


def instruct_frame(folder: str | Path, name: str, order: str | None = None, internal: bool = False
                   ) -> tuple[pl.DataFrame, str]:
    """The kept pool rows of selection ``name`` (pool order, or curriculum order when the selection has one) and
    the order used."""
    folder = Path(folder)
    path = selection_path(folder, name)
    sel = read_table(path, "selections").filter(pl.col("selected"))
    sel = sel.select("example_id", *[pl.col(c).alias(HELPERS[c]) for c in ("weight", "position")])
    examples = pl.read_parquet(folder / "examples.parquet", columns=["example_id", "split", "source_row"])
    pool = examples.filter(pl.col("split") == "train").select("example_id", pl.col("source_row")
                                                              .alias(HELPERS["source_row"]))
    rows = sel.join(pool, on="example_id", how="inner")
    if rows.height == 0 and sel.height and sel.join(examples.filter(pl.col("split") == "val"), on="example_id",
                                                    how="semi").height == sel.height:
        raise DataError(f"selection {name} trains on the target rows (the target-alone baseline), not on pool rows: "
                        "there is no pool row to export", file=path, field="SELECTION",
                        fix="export a selection of the pool (e.g. less_top_keep5); the target rows are your "
                            "target file")
    if rows.height != sel.height:
        raise DataError(f"{sel.height - rows.height} selected ids are not pool rows of the examples table",
                        file=path, field="example_id", fix="the selection is stale: rerun the workflow")
    used = resolve_order(rows, order)
    by = [HELPERS["position"], HELPERS["source_row"]] if used == "curriculum" else [HELPERS["source_row"]]
    rows = rows.sort(by)
    source = pl.read_parquet(folder / INSTRUCT_SOURCE)
    out = source[rows.get_column(HELPERS["source_row"]).to_list()]
    if internal:
        added = {"example_id": rows.get_column("example_id"), "weight": rows.get_column(HELPERS["weight"]),
                 "position": rows.get_column(HELPERS["position"])}
        out = out.with_columns(s.alias(PREFIX + c if c in out.columns else c) for c, s in added.items())
    return out, used
