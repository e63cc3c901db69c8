"""Target alignment (LESS-style, Xia et al. 2024): how well a training example's gradient points where the target
(validation) set's gradients point.

    score(z) = Σ_c w_c · reduce_{z' ∈ target} cos(f_c(z), f_c(z'))

with ``f_c`` the projected gradient features at checkpoint ``c``, ``w_c`` that checkpoint's learning rate (LESS
weights checkpoints by the learning rate of the epoch they end) and ``reduce`` the ``mean`` or the ``max`` over the
target set. A high score means "training on this example lowers the target loss the most", so it ranks first.

``mean`` is computed exactly as ``x̂ · mean(ŷ)`` (the mean of cosines is the cosine against the mean unit vector);
``max`` searches a faiss inner-product index over the unit target features (exact, or IVF for large target sets).
Features are read shard by shard, so memory holds one chunk of training features and the target set.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import ConfigError, DataError
from datasel.features.index import build_index, search, unit_rows
from datasel.features.store import FeatureSet, check_same_space
from datasel.scoring.base import SCORERS, Scorer, ScoreInputs

log = logging.getLogger(__name__)


def alignment(train: FeatureSet, target: np.ndarray, reduce: str, index_cfg: dict[str, Any] | None = None,
              seed: int = 0) -> np.ndarray:
    """``reduce`` over target rows of cos(train row, target row), for every training row (streamed)."""
    t = unit_rows(target)
    if reduce == "mean":
        center = t.mean(axis=0)
        return np.concatenate([unit_rows(c) @ center for c in train.iter_chunks()]).astype(np.float64)
    if reduce == "max":
        index = build_index(t, index_cfg, seed)
        return np.concatenate([search(index, unit_rows(c), 1)[0][:, 0] for c in train.iter_chunks()]).astype(
            np.float64)
    raise ConfigError(f"unknown reduce {reduce!r}", field="scoring.target_alignment.reduce", fix="use mean or max")


@SCORERS.register("target_alignment")
class TargetAlignment(Scorer):
    """cfg: ``reduce`` (mean|max), ``target_split`` (default val), ``weights`` (lr | uniform), ``index`` (faiss)."""

    needs = ("features",)

    def score(self, inputs: ScoreInputs) -> pl.DataFrame:
        reduce = self.cfg.get("reduce", "max")
        target_split = self.cfg.get("target_split", "val")
        weighting = self.cfg.get("weights", "lr")
        if not inputs.features:
            raise DataError("no gradient features were given", field="scoring.target_alignment",
                            fix="turn the 'features' stage on (stages: [..., features])")
        sets: dict[str, dict[str, tuple[Path, FeatureSet]]] = defaultdict(dict)
        for path in inputs.features:
            fs = FeatureSet.open(path)
            sets[str(fs.meta.get("checkpoint", ""))][str(fs.meta.get("split", ""))] = (Path(path), fs)
        total: np.ndarray | None = None
        ids: list[str] | None = None
        used = 0
        for ckpt in sorted(sets):
            pair = sets[ckpt]
            if "train" not in pair or target_split not in pair:
                raise DataError(f"checkpoint {ckpt!r} has features for splits {sorted(pair)}, needs train and "
                                f"{target_split}", file=next(iter(pair.values()))[0], field="features.splits",
                                fix=f"add '{target_split}' to features.splits")
            (tp, train), (_, target) = pair["train"], pair[target_split]
            check_same_space(train.meta, target.meta, tp)
            w = float(train.meta.get("lr") or 1.0) if weighting == "lr" else 1.0
            these = train.ids()
            if ids is None:
                ids = these
            elif these != ids:
                raise DataError("training features of two checkpoints list different examples", file=tp,
                                fix="recompute the features of every checkpoint from one examples table")
            a = w * alignment(train, target.load(), reduce, self.cfg.get("index"), inputs.seed)
            total = a if total is None else total + a
            used += 1
            log.info("target alignment: checkpoint %s (weight %.3g), %d train x %d target rows", ckpt, w, train.rows,
                     target.rows)
        assert total is not None and ids is not None
        return pl.DataFrame({"example_id": ids, "score": total, "checkpoints": [used] * len(ids)})
