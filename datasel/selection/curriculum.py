"""Curricula: an order over the kept examples (``position``) and a pacing function that the trainer follows.

Order: ``easy_to_hard`` (ascending score), ``hard_to_easy`` (descending) or ``random``. Pacing g(t) gives the
fraction of the ordered subset available at training progress t ∈ [0, 1] (Hacohen & Weinshall 2019):
linear, root (√), step; starting at ``start`` and reaching 1 at ``end`` of training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import polars as pl

from datasel.errors import ConfigError
from datasel.runtime import rng_for

if TYPE_CHECKING:  # imported in paced_batches only: a select job orders positions without torch (seconds a job)
    import torch

ORDERS = ("easy_to_hard", "hard_to_easy", "random")
PACINGS = ("linear", "root", "step", "none")


def order_positions(chosen: pl.DataFrame, scores: pl.DataFrame | None, cfg: dict[str, Any], seed: int) -> pl.DataFrame:
    """``example_id, position`` (0 = first) for the kept rows."""
    order = cfg.get("order", "easy_to_hard")
    if order not in ORDERS:
        raise ConfigError(f"unknown curriculum order '{order}'", field="curriculum.order", fix=f"use one of {ORDERS}")
    ids = chosen.select("example_id").sort("example_id")
    if order == "random":
        perm = rng_for(seed, "curriculum:random").permutation(ids.height)
        ranked = ids[perm]
    else:
        if scores is None:
            raise ConfigError("a curriculum ordered by score needs curriculum.score", field="curriculum.score",
                              fix="name a scoring entry, or use order: random")
        ranked = ids.join(scores.select("example_id", "score"), on="example_id", how="left").sort(
            ["score", "example_id"], descending=[order == "hard_to_easy", False]
        )
    return ranked.select("example_id").with_columns(pl.int_range(0, ranked.height, dtype=pl.Int64).alias("position"))


def pacing_fraction(t: float, cfg: dict[str, Any]) -> float:
    """Share of the ordered subset available at progress ``t``."""
    kind, start, end = cfg.get("pacing", "linear"), float(cfg.get("start", 0.2)), float(cfg.get("end", 0.8))
    if kind not in PACINGS:
        raise ConfigError(f"unknown pacing '{kind}'", field="curriculum.pacing", fix=f"use one of {PACINGS}")
    if kind == "none" or t >= end:
        return 1.0
    u = t / end
    if kind == "linear":
        g = start + (1 - start) * u
    elif kind == "root":
        g = math.sqrt(start**2 + (1 - start**2) * u)
    else:
        steps = int(cfg.get("steps", 4))
        g = start + (1 - start) * math.floor(u * steps) / steps
    return min(1.0, max(start, g))


def paced_batches(position_order: torch.Tensor, batch_size: int, total_steps: int, cfg: dict[str, Any]):
    """A trainer batch sampler: at step s, draw a batch uniformly from the first g(s / total) of the ordered rows.

    ``position_order[i]`` is the row index (into the training tensors) of the example at curriculum position i.
    """
    import torch

    n = position_order.shape[0]
    state = {"step": 0}

    def sample(epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        for _ in range(max(1, math.ceil(n / batch_size))):
            avail = max(1, min(n, math.ceil(pacing_fraction(state["step"] / max(1, total_steps), cfg) * n)))
            state["step"] += 1
            yield position_order[torch.randint(0, avail, (min(batch_size, avail),), generator=gen)]

    return sample
