"""Tasks: one per data kind (vector, text, triplets, causal_lm), the seam every trainer and scorer goes through (see ``base``)."""

from __future__ import annotations

from typing import Any

import polars as pl

from datasel.errors import ConfigError
from datasel.tasks.base import Inputs, Split, Task, batch_len, chunks, forward, take, to_device

__all__ = ["Inputs", "Split", "Task", "batch_len", "chunks", "forward", "make_task", "take", "to_device"]


def make_task(examples: pl.DataFrame, meta: dict[str, Any], model_cfg: dict[str, Any],
              where: str = "model") -> Task:
    """The task of ``meta['kind']`` for ``model_cfg``; refuses a model that does not take this kind of data."""
    from datasel.models.registry import check_model_kind

    check_model_kind(model_cfg, meta, where)
    kind = meta.get("kind") or ("text" if "text" in examples.columns else
                                "triplets" if {"query", "positive"} <= set(examples.columns) else "vector")
    if kind == "vector":
        from datasel.tasks.vector import VectorTask

        return VectorTask(examples, meta, model_cfg)
    if kind == "causal_lm":
        from datasel.tasks.causal_lm import CausalLMTask

        return CausalLMTask(examples, meta, model_cfg, where)
    if kind == "text":
        from datasel.tasks.text import TextTask

        return TextTask(examples, meta, model_cfg, where)
    if kind == "triplets":
        from datasel.tasks.triplets import TripletTask

        return TripletTask(examples, meta, model_cfg)
    raise ConfigError(f"data kind '{kind}' has no task", field="data",
                      fix="use vector (x / feature_columns), text (text_column), triplets (query, positive, negative) "
                          "or causal_lm (prompt, completion) data")
