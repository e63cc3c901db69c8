"""The "target examples alone" baseline on causal-LM data: fine-tune on the target (validation) set itself.

LESS's comparison asks whether a selection from a large pool beats simply training on the few target examples one
already has. Those rows are not pool rows, so no pool policy (:mod:`datasel.selection`) can pick them: a policy
entry ``{policy: target}`` in ``selection.policies`` makes a selection table whose kept rows are the
target split's examples. It keeps none of the pool, hence its name ends in ``_keep0``; having trained on the
validation rows, it is reported but never chosen on them (:mod:`datasel.report.verdicts`).
"""

from __future__ import annotations

import polars as pl

from datasel.errors import DataError

TARGET_POLICY = "target"
TARGET_SPLIT = "val"


def is_target_policy(entry: dict) -> bool:
    return entry.get("policy") == TARGET_POLICY


def target_selection(examples: pl.DataFrame, selection: str, where: str = "examples.parquet") -> pl.DataFrame:
    """A selections table (schema ``selections``) keeping every target example with weight 1, in id order."""
    ids = examples.filter(pl.col("split") == TARGET_SPLIT).get_column("example_id").sort()
    if ids.len() == 0:
        raise DataError("the examples table has no target rows to train on", file=where, field="data.instruct.target",
                        fix="give a target file with at least one example that survives max_length")
    return pl.DataFrame({"selection": selection, "example_id": ids, "selected": True, "weight": 1.0,
                         "position": None},
                        schema={"selection": pl.String, "example_id": pl.String, "selected": pl.Boolean,
                                "weight": pl.Float64, "position": pl.Int64})
