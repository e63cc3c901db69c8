"""Training curves: the held-out accuracy and loss of a target model at a few evenly spaced steps of its training.

A final accuracy alone cannot say whether the budget was long enough: a model still improving at its last step
would rank subsets differently with more training. :class:`CurveRecorder` is the ``on_step`` hook of
:func:`datasel.training.classify.train_classifier`; it evaluates on the validation split (never test: the report
acts on these numbers) at ``training.curve_points`` evenly spaced steps, the last one the final step, and returns
the rows of the ``curves`` table (:data:`datasel.store.tables.SCHEMAS`). The report reads them for the "still
rising" warning (:mod:`datasel.report.curves`).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.tasks.base import Inputs, per_example_cross_entropy
from datasel.training.classify import PerExampleLoss, evaluate

CURVE_METRICS = ("accuracy", "loss")


def curve_points(cfg: dict[str, Any]) -> int:
    """``training.curve_points`` (default 5; 0: no curve), checked."""
    points = cfg.get("curve_points", 5)
    if isinstance(points, bool) or not isinstance(points, int) or points < 0:
        raise ConfigError(f"training.curve_points is {points!r}", field="training.curve_points",
                          fix="give a whole number of evaluation points, e.g. 5 (0 turns the curve off)")
    return points


def curve_steps(total: int, points: int) -> list[int]:
    """``points`` steps evenly spaced over ``1..total``, the last one ``total`` (fewer when ``total`` is smaller).

    Step ``ceil(k * total / points)`` for k = 1..points: equal intervals, so the last interval, the one the "still
    rising" rule looks at, is as long as every other.
    """
    if total <= 0 or points <= 0:
        return []
    return sorted({-(-k * total // points) for k in range(1, points + 1)})


class CurveRecorder:
    """``on_step`` hook: evaluate ``model`` on ``(x, y)`` at :func:`curve_steps` and keep one row per metric."""

    def __init__(self, x: Inputs, y: torch.Tensor, points: int, split: str = "val",
                 loss_fn: PerExampleLoss = per_example_cross_entropy) -> None:
        self.x, self.y, self.points, self.split, self.loss_fn = x, y, points, split, loss_fn
        self._steps: set[int] | None = None
        self.rows: list[dict[str, Any]] = []

    def __call__(self, step: int, total: int, model: nn.Module) -> None:
        if self._steps is None:
            self._steps = set(curve_steps(total, self.points))
        if step not in self._steps or len(self.y) == 0:
            return
        was_training = model.training
        # eval mode and no_grad draw nothing from the global RNG, so the training after this is unchanged
        result = evaluate(model, self.x, self.y, loss_fn=self.loss_fn)
        model.train(was_training)
        for metric in CURVE_METRICS:
            self.rows.append({"step": step, "steps": total, "split": self.split, "metric": metric,
                              "value": float(result[metric])})

    def table(self, selection: str, method: str, fraction: float, seed: int) -> pl.DataFrame:
        """The ``curves`` rows of this run (empty, with the table's columns, when nothing was recorded)."""
        base = pl.DataFrame(self.rows, schema={"step": pl.Int64, "steps": pl.Int64, "split": pl.String,
                                               "metric": pl.String, "value": pl.Float64})
        return base.with_columns(pl.lit(selection).alias("selection"), pl.lit(method).alias("method"),
                                 pl.lit(float(fraction)).alias("fraction"), pl.lit(seed, dtype=pl.Int64).alias("seed"))
