"""The part of the summary that only causal-LM data has: what the accuracy means, and how much of each selection
comes from the target task(s) against the pool's base rate (LESS's own diagnostic).

The share needs a task column in the pool and the target files; without one the section says so, and no share or
base rate is computed from tasks that were not given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from datasel.errors import DataError
from datasel.report.summary import Doc
from datasel.selection.draws import one_draw


def task_shares(examples: pl.DataFrame, kept: Mapping[str, list[str]]
                ) -> tuple[list[str] | None, float | None, dict[str, float | None]]:
    """The target task(s), the pool's share of rows from them (the base rate) and each selection's share of rows
    from them (of pool rows, or of target rows for the target-alone baseline); None throughout when the pool or
    the target rows have no task."""
    pool = examples.filter(pl.col("split") == "train")
    target = examples.filter(pl.col("split") == "val")
    if pool.get_column("task").null_count() or target.get_column("task").null_count():
        return None, None, dict.fromkeys(kept)
    tasks = sorted(set(target.get_column("task")))
    hit = pl.concat([part.select("example_id", pl.col("task").is_in(tasks).alias("hit")) for part in (pool, target)])
    shares: dict[str, float | None] = {}
    for name, ids in kept.items():
        part = hit.filter(pl.col("example_id").is_in(ids))
        if part.height != len(ids):
            raise DataError(f"{len(ids) - part.height} rows of selection {name} are neither pool nor target rows",
                            field="example_id", fix="the selection is stale: rerun the workflow")
        shares[name] = float(part.get_column("hit").mean()) if part.height else None
    return tasks, float(pool.get_column("task").is_in(tasks).mean()), shares


def kept_ids(selections: pl.DataFrame) -> dict[str, list[str]]:
    """Each selection's kept ids (a stochastic policy's first draw, as the export takes)."""
    out = {}
    for name in sorted(selections.get_column("selection").unique().to_list()):
        sel = selections.filter(pl.col("selection") == name)
        if "draw" in sel.columns and sel.get_column("draw").null_count() == sel.height:
            sel = sel.drop("draw")  # a deterministic policy's table, stacked beside stochastic ones
        sel = one_draw(sel, None, name)
        out[name] = sel.filter(pl.col("selected")).get_column("example_id").to_list()
    return out


def lm_section(doc: Doc, examples: pl.DataFrame, selections: pl.DataFrame, meta: Mapping[str, Any]) -> pl.DataFrame:
    """Add the instruction-data section to ``doc``; returns the target-share table (``selection``, ``kept``,
    ``target_share``, ``base_rate``) for summary.csv."""
    kept = kept_ids(selections)
    tasks, base, shares = task_shares(examples, kept)
    doc.heading("Instruction data")
    sizes = meta.get("sizes", {})
    doc.para(f"Accuracy is the exact match of the fine-tuned model's greedy answer with the reference completion "
             f"(whitespace-stripped), on the target set (validation, {sizes.get('val', '?')} rows: what the best "
             f"selection is chosen on) and the test set ({sizes.get('test', '?')} rows). The pool has "
             f"{sizes.get('train', '?')} rows.")
    if any(n.endswith("_keep0") for n in kept):
        doc.para("A `_keep0` selection trains on the target rows alone (no pool row): it is reported, never chosen, "
                 "since the target rows are the validation split it would be chosen on.")
    table = pl.DataFrame({"selection": list(kept), "kept": [len(v) for v in kept.values()],
                          "target_share": [shares[n] for n in kept], "base_rate": [base] * len(kept)},
                         schema={"selection": pl.String, "kept": pl.Int64, "target_share": pl.Float64,
                                 "base_rate": pl.Float64})
    if tasks is None:
        lacking = [r for r, has in (meta.get("task_column") or {}).items() if not has and r != "test"]
        doc.para(f"No task column ({' and '.join(lacking) or 'pool/target'} file): the share of each selection from "
                 "the target task cannot be computed (name it in data.instruct.task_column).")
        return table
    doc.para(f"Target task(s): {', '.join(tasks)}; {base:.1%} of the pool's rows are from them (the base rate).")
    doc.table(["selection", "kept rows", "share from the target task(s)"],
              [[f"`{r['selection']}`", str(r["kept"]), "–" if r["target_share"] is None else f"{r['target_share']:.1%}"]
               for r in table.iter_rows(named=True)])
    return table
