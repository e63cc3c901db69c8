"""Vector data (``x``: a fixed-length list of numbers per example): dense ``(N, D)`` float32 batches.

When the meta says ``standardize`` (``data.standardize``; see :func:`datasel.data.tensors.standardize_default`),
every split is standardized with the training split's per-feature mean and std, in memory only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl
import torch

from datasel.data.tensors import Standardizer, _matrix
from datasel.tasks.base import Task


class VectorTask(Task):
    kind: ClassVar[str] = "vector"
    call_contract: ClassVar[str] = "model(x) with x a float32 tensor (batch, input_dim)"

    def __init__(self, examples: pl.DataFrame, meta: dict[str, Any], model_cfg: dict[str, Any]) -> None:
        super().__init__(examples, meta, model_cfg)
        self.standardizer: Standardizer | None = None
        if meta.get("standardize"):
            train = examples.filter(pl.col("split") == "train")
            self.standardizer = Standardizer.fit(torch.from_numpy(_matrix(train)))

    def _load(self, part: pl.DataFrame) -> torch.Tensor:
        x = torch.from_numpy(_matrix(part))
        return self.standardizer(x) if self.standardizer is not None else x
