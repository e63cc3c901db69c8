"""Examples table → tensors, in ``example_id`` order so downstream row order never depends on file order.

Standardization of numeric inputs is fit on the training split and applied when a task loads a split; the examples
table (the user's data) always keeps the raw values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from datasel.data.prepare import standardize_default  # noqa: F401  (decided at prepare time)


def _matrix(part: pl.DataFrame) -> np.ndarray:
    # np.array (not asarray) so the buffer is ours and writable: torch warns on read-only NumPy memory.
    return np.array(part.get_column("x").to_list(), dtype=np.float32).reshape(part.height, -1)


def load_split(examples: pl.DataFrame, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Raw inputs (N, D) float32, labels (N,) long and ids for one split, sorted by ``example_id``."""
    part = examples.filter(pl.col("split") == split).sort("example_id")
    x = torch.from_numpy(_matrix(part))
    y = torch.from_numpy(part.get_column("label").to_numpy().astype(np.int64))
    return x, y, part.get_column("example_id").to_list()


@dataclass(frozen=True)
class Standardizer:
    """Per-feature ``(x - mean) / std`` with the training split's statistics.

    A feature whose training std is below ``floor`` (relative to its scale) is treated as constant: it is centred
    but not divided, so a value that only varies outside the training split cannot blow up.
    """

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, floor: float = 1e-6) -> Standardizer:
        xd = x.double()
        mean = xd.mean(0)
        std = xd.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
        constant = std <= floor * (1.0 + mean.abs())
        std = torch.where(constant, torch.ones_like(std), std)
        return cls(mean.float(), std.float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
