"""Examples table → tensors, in ``example_id`` order so downstream row order never depends on file order."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch


def load_split(examples: pl.DataFrame, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Inputs (N, D) float32, labels (N,) long and ids for one split, sorted by ``example_id``."""
    part = examples.filter(pl.col("split") == split).sort("example_id")
    x = torch.from_numpy(np.asarray(part.get_column("x").to_list(), dtype=np.float32).reshape(part.height, -1))
    y = torch.from_numpy(part.get_column("label").to_numpy().astype(np.int64))
    return x, y, part.get_column("example_id").to_list()
