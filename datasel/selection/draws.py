"""One subset per training seed for policies that draw random numbers.

A stochastic policy (``random``, ``shift_gsampling``, ``ccs``, ``filter`` below the full set, ``kmeans_coverage``,
``kcenter`` with ``start: random``) gives a different subset for every seed. Training every seed on one draw
would make the seed spread cover training noise only, so its margin over random would ignore the luck of the draw.
Instead each training seed ``s`` trains on its own draw, made with the seed :func:`draw_seed` derives from
``selection.seed`` and ``s``; the selection table holds every draw, one block of rows per training seed, told
apart by its ``draw`` column (the training seed). Deterministic policies write one draw and no ``draw`` column.

Readers that want one subset (``datasel export``, ``datasel show``) take :func:`one_draw`: by default the draw of
the smallest training seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import DataError

DRAW = "draw"


def draw_seed(selection_seed: int, training_seed: int) -> int:
    """The policy seed of the draw that training seed ``training_seed`` trains on (below 2**31: faiss takes int32).

    SeedSequence mixes both numbers, so neighbouring seeds give unrelated draws and no draw equals another
    purpose's stream.
    """
    state = np.random.SeedSequence([int(selection_seed), int(training_seed)]).generate_state(1, dtype=np.uint32)
    return int(state[0] >> 1)


def policy_draws(entry: dict[str, Any], training_seeds: Sequence[int] | None) -> list[int] | None:
    """The training seeds a policy entry draws one subset each for, or None for a deterministic policy (or a run
    without training seeds): the select rule's ``draws`` parameter, so deterministic selections do not depend on
    ``training.seeds``."""
    from datasel.instruct.target_only import TARGET_POLICY
    from datasel.selection.base import POLICIES

    if not training_seeds or entry.get("policy") == TARGET_POLICY:  # the target rows: no draw
        return None
    policy = POLICIES.get(entry["policy"], where="selection.policies")({"name": "", **entry})
    return sorted({int(s) for s in training_seeds}) if policy.stochastic() else None


def one_draw(table: pl.DataFrame, draw: int | None = None, source: str = "selection") -> pl.DataFrame:
    """The rows of one draw (``draw`` column dropped): ``draw`` if given, else the smallest training seed's.

    A table without a ``draw`` column (a deterministic policy) has one subset for every seed: returned as it is.
    """
    if DRAW not in table.columns:
        return table
    draws = sorted(table.get_column(DRAW).unique().to_list())
    pick = draws[0] if draw is None else int(draw)
    if pick not in draws:
        raise DataError(f"the selection has no draw for training seed {pick} (it has {draws})", file=source,
                        field=DRAW, fix="rerun the select step with the current training.seeds")
    return table.filter(pl.col(DRAW) == pick).drop(DRAW)
