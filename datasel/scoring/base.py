"""The scoring protocol: one class per method, registered by name, turning stage inputs into a score table.

A score table has one row per training example: ``example_id, method, score, rank`` (+ method-specific columns).
Higher score means "ranks first" (rank 1); each method documents what a high score means for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from datasel.registry import Registry


@dataclass
class ScoreInputs:
    """Everything a scorer may read; a rule fills in what the method's ``needs`` names."""

    examples: Path
    meta: dict[str, Any]
    checkpoints: list[Path] = field(default_factory=list)
    features: list[Path] = field(default_factory=list)
    extra: dict[str, Path] = field(default_factory=dict)
    epoch_tables: list[Path] = field(default_factory=list)  # proxy/seed<k>/epochs.parquet (needs "proxy_epochs")
    proxy_cfg: dict[str, Any] = field(default_factory=dict)  # the proxy section (scorers that train their own)
    model_cfg: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0


class Scorer(ABC):
    """A scoring method. ``needs`` lists the upstream products the workflow must build first."""

    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    @abstractmethod
    def score(self, inputs: ScoreInputs) -> pl.DataFrame:
        """Return ``example_id`` and ``score`` (float) for every training example, plus optional extra columns."""


class CheckpointMeanScorer(Scorer):
    """A per-example statistic of the proxy model, averaged over the K proxy runs at one checkpoint.

    Subclasses define :meth:`per_checkpoint`; the mean over runs is the score and the spread across runs is kept
    as ``score_std`` so a user can see how reproducible each example's score is.
    """

    needs = ("proxy",)

    @abstractmethod
    def per_checkpoint(self, model: Any, x: Any, y: Any, task: Any = None) -> Any:
        """Return a (N,) tensor for one proxy model on the training inputs ``x`` (as ``task`` batches them)."""

    def score(self, inputs: ScoreInputs) -> pl.DataFrame:
        import torch

        from datasel.errors import DataError
        from datasel.runtime import pick_device, progress
        from datasel.training.proxy import checkpoint_model_cfg, load_checkpoint, task_for_run

        if not inputs.checkpoints:
            raise DataError("no proxy checkpoints were given", field="scoring", fix="set proxy.seeds >= 1")
        task = task_for_run(inputs.examples, inputs.meta, inputs.model_cfg or checkpoint_model_cfg(inputs.checkpoints[0]))
        train = task.split("train")
        runs = []
        for path in progress(inputs.checkpoints, desc=f"{type(self).__name__} over proxy runs", unit="run"):
            model = load_checkpoint(path, inputs.meta, inputs.model_cfg or None).to(pick_device(inputs.device))
            runs.append(self.per_checkpoint(model, train.inputs, train.labels, task).detach().double().cpu())
        stack = torch.stack(runs)
        ids = train.ids
        return pl.DataFrame(
            {
                "example_id": ids,
                "score": stack.mean(0).numpy(),
                "score_std": (stack.std(0) if len(runs) > 1 else torch.zeros(len(ids))).numpy(),
            }
        )


SCORERS: Registry[type[Scorer]] = Registry("scoring method", "datasel.scoring")


def finalize_scores(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """Attach the method name and a deterministic rank (1 = highest score; ties broken by example_id)."""
    df = df.with_columns(pl.col("score").cast(pl.Float64)).sort(
        ["score", "example_id"], descending=[True, False], nulls_last=True
    )
    return df.with_columns(
        pl.lit(name).alias("method"), pl.int_range(1, df.height + 1, dtype=pl.Int64).alias("rank")
    ).select(["example_id", "method", "score", "rank", *[c for c in df.columns if c not in ("example_id", "score")]])
