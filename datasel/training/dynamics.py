"""Training dynamics of the proxy runs: per example and epoch, whether its training-time prediction was correct and
its margin (assigned-class logit minus the largest other logit).

Forgetting events (Toneva et al. 2019) and AUM (Pleiss et al. 2020) are both defined on what the model outputs
when an example is *presented* in a training batch, before that batch's update — not on checkpoints — so the proxy
trainer hands each batch's logits to an :class:`EpochRecorder` and the run writes one compact table
(``proxy/seed<k>/epochs.parquet``, schema ``proxy_epochs``): one row per example per epoch, no checkpoint per epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from datasel.store import write_table


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Assigned-class logit minus the largest other logit, per row (Pleiss et al.'s margin)."""
    lg = logits.float()
    assigned = lg.gather(1, y[:, None]).squeeze(1)
    others = lg.scatter(1, y[:, None], float("-inf")).max(1).values
    return assigned - others


class EpochRecorder:
    """``on_batch`` hook of :func:`datasel.training.classify.train_classifier` for ``n`` training rows over at
    most ``epochs`` epochs; a row presented twice in one epoch (a custom sampler) keeps its last presentation."""

    def __init__(self, n: int, epochs: int) -> None:
        self.correct = np.zeros((epochs, n), dtype=bool)
        self.margin = np.zeros((epochs, n), dtype=np.float32)
        self.seen = np.zeros((epochs, n), dtype=bool)

    def __call__(self, epoch: int, idx: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        if epoch >= self.seen.shape[0]:
            return
        rows = idx.cpu().numpy()
        lg, yc = logits.float().cpu(), y.cpu()
        self.correct[epoch, rows] = (lg.argmax(1) == yc).numpy()
        self.margin[epoch, rows] = margins(lg, yc).numpy()
        self.seen[epoch, rows] = True

    def table(self, ids: list[str], seed: int) -> pl.DataFrame:
        """``example_id, seed, epoch`` (1 = the first epoch of training) ``, correct, margin`` of every presentation."""
        e, i = np.nonzero(self.seen)
        return pl.DataFrame({
            "example_id": np.asarray(ids, dtype=object)[i].tolist(),
            "seed": np.full(len(i), seed, dtype=np.int64),
            "epoch": (e + 1).astype(np.int64),
            "correct": self.correct[e, i],
            "margin": self.margin[e, i],
        }).sort("example_id", "epoch")

    def write(self, path: str | Path, ids: list[str], seed: int) -> Path:
        return write_table(self.table(ids, seed), path, "proxy_epochs")
