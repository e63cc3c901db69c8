"""A selection of instruction data (``data.source: instruct``) as rows to export: the selected pool rows exactly as
the user gave them.

The prepare step keeps the pool file as read beside the examples table (``examples/source_pool.parquet``), and each
example's ``source_row`` is its row in that file. The rows are the pool file's own, every column in its order,
nothing added (``internal`` adds the pipeline's ``example_id``, ``weight`` and ``position``, under a ``datasel_``
prefix where a name is taken).
"""

from __future__ import annotations

import polars as pl

from datasel.errors import DataError
from datasel.export.frame import HELPERS, PREFIX, resolve_order
from datasel.export.inputs import LM_POOL_SOURCE, Inputs


def instruct_frame(inputs: Inputs, order: str | None = None, internal: bool = False) -> tuple[pl.DataFrame, str]:
    """The kept pool rows of the selection (pool order, or curriculum order when the selection has one) and the
    order used."""
    sel = inputs.selection.filter(pl.col("selected"))
    sel = sel.select("example_id", *[pl.col(c).alias(HELPERS[c]) for c in ("weight", "position")])
    examples = inputs.examples.select("example_id", "split", "source_row")
    pool = examples.filter(pl.col("split") == "train").select("example_id", pl.col("source_row")
                                                              .alias(HELPERS["source_row"]))
    rows = sel.join(pool, on="example_id", how="inner")
    if rows.height == 0 and sel.height and sel.join(examples.filter(pl.col("split") == "val"), on="example_id",
                                                    how="semi").height == sel.height:
        raise DataError(f"selection {inputs.name} trains on the target rows (the target-alone baseline), not on pool "
                        "rows: there is no pool row to export", file=inputs.path, field="SELECTION",
                        fix="export a selection of the pool (e.g. less_top_keep5); the target rows are your "
                            "target file")
    if rows.height != sel.height:
        raise DataError(f"{sel.height - rows.height} selected ids are not pool rows of the examples table",
                        file=inputs.path, field="example_id", fix="the selection is stale: rerun the workflow")
    used = resolve_order(rows, order)
    by = [HELPERS["position"], HELPERS["source_row"]] if used == "curriculum" else [HELPERS["source_row"]]
    rows = rows.sort(by)
    source_path = inputs.results / "examples" / LM_POOL_SOURCE
    if not source_path.is_file():
        raise DataError("the pool file as read is missing", file=source_path,
                        fix="rerun the prepare step (snakemake --cores all results/examples/examples.parquet)")
    out = pl.read_parquet(source_path)[rows.get_column(HELPERS["source_row"]).to_list()]
    if internal:
        added = {"example_id": rows.get_column("example_id"), "weight": rows.get_column(HELPERS["weight"]),
                 "position": rows.get_column(HELPERS["position"])}
        out = out.with_columns(s.alias(PREFIX + c if c in out.columns else c) for c, s in added.items())
    return out, used
