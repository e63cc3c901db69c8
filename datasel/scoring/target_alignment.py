"""Target alignment (LESS-style, Xia et al. 2024): how well a training example's gradient points where the target
(validation) set's gradients point.

    score(z) = Σ_c w_c · reduce_{z' ∈ target} cos(f_c(z), f_c(z'))

with ``f_c`` the projected gradient features at checkpoint ``c``, ``w_c`` that checkpoint's learning rate (LESS
weights checkpoints by the learning rate of the epoch they end) and ``reduce`` over the target set:

- ``task_max`` (LESS, ``matching.py``): the checkpoint-weighted cosine matrix is averaged over each target task's
  examples, then the maximum over tasks is taken — ``max_t Σ_c w_c mean_{z' ∈ t} cos(...)``. Tasks come from the
  target rows' ``task_column`` (``task``, else ``domain``) of the examples table; without one it is one task (mean);
- ``mean``: over all target rows; ``max``: over single target rows, per checkpoint (not LESS: a nearest-neighbour
  match, kept for earlier configs).

LESS itself is this score on Adam-preconditioned pool features (``features.sets.<set>.precondition: adam``, which
leaves the target split plain); on plain gradients it is a gradient-cosine baseline. A high score means "training
on this example lowers the target loss the most", so it ranks first.

``mean`` is computed exactly as ``x̂ · mean(ŷ)`` (the mean of cosines is the cosine against the mean unit vector),
and ``task_max`` as ``x̂ · mean_t(ŷ)`` per task — linear in the features, so the checkpoint sum of the per-task
means equals the per-task mean of the checkpoint sum and the max is taken once, after the sum, as LESS does;
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
from datasel.scoring.base import SCORERS, ScoreInputs, Scorer

log = logging.getLogger(__name__)


REDUCES = ("task_max", "mean", "max")


def task_means(train: FeatureSet, target: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N, T): mean cosine of every training row to the target rows of each task (``groups`` = task index per row)."""
    t = unit_rows(target)
    n_tasks = int(groups.max()) + 1 if len(groups) else 0
    centers = np.zeros((n_tasks, t.shape[1]), np.float64)
    np.add.at(centers, groups, t.astype(np.float64))
    centers /= np.bincount(groups, minlength=n_tasks)[:, None]
    return np.concatenate([unit_rows(c).astype(np.float64) @ centers.T for c in train.iter_chunks()])


def alignment(train: FeatureSet, target: np.ndarray, reduce: str, index_cfg: dict[str, Any] | None = None,
              seed: int = 0) -> np.ndarray:
    """``reduce`` (mean|max) over target rows of cos(train row, target row), for every training row (streamed)."""
    t = unit_rows(target)
    if reduce == "mean":
        center = t.mean(axis=0)
        return np.concatenate([unit_rows(c) @ center for c in train.iter_chunks()]).astype(np.float64)
    if reduce == "max":
        index = build_index(t, index_cfg, seed)
        return np.concatenate([search(index, unit_rows(c), 1)[0][:, 0] for c in train.iter_chunks()]).astype(
            np.float64)
    raise ConfigError(f"unknown reduce {reduce!r}", field="scoring.target_alignment.reduce",
                      fix=f"use one of {', '.join(REDUCES)}")


def target_groups(examples: Path, ids: list[str], column: str | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Task index of each target row (in ``ids`` order) and the task names, from the examples table.

    ``column`` None: ``task`` if the table has it, else ``domain``, else one task. A named column must exist.
    """
    table = pl.read_parquet(examples) if examples.is_file() else None
    if column is None:
        column = next((c for c in ("task", "domain") if table is not None and c in table.columns), None)
        if column is None:
            return np.zeros(len(ids), np.int64), ["all"]
    if table is None or column not in table.columns:
        raise DataError(f"the examples table has no column '{column}' to group the target set by",
                        file=examples, field=f"{where}.task_column",
                        fix="map your task column onto it (data.domain_column) or drop task_column (one task)")
    by_id = dict(zip(table.get_column("example_id").cast(pl.Utf8).to_list(),
                     table.get_column(column).cast(pl.Utf8).to_list()))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{len(missing)} target rows are not in the examples table (e.g. {missing[:2]})",
                        file=examples, field="example_id", fix="recompute the features from this examples table")
    names = [by_id[i] if by_id[i] is not None else "" for i in ids]
    tasks = sorted(set(names))
    pos = {t: k for k, t in enumerate(tasks)}
    return np.array([pos[n] for n in names], np.int64), tasks


@SCORERS.register("target_alignment")
class TargetAlignment(Scorer):
    """cfg: ``reduce`` (task_max|mean|max; default max for earlier configs), ``task_column`` (task_max's grouping),
    ``target_split`` (default val), ``weights`` (lr | uniform), ``index`` (faiss)."""

    needs = ("features",)

    def score(self, inputs: ScoreInputs) -> pl.DataFrame:
        reduce = self.cfg.get("reduce", "max")
        if reduce not in REDUCES:
            raise ConfigError(f"unknown reduce {reduce!r}", field="scoring.target_alignment.reduce",
                              fix=f"use one of {', '.join(REDUCES)}")
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
            if reduce == "task_max":
                groups, tasks = target_groups(Path(inputs.examples), target.ids(), self.cfg.get("task_column"),
                                              "scoring.target_alignment")
                a = w * task_means(train, target.load(), groups)  # (N, T); the max comes after the checkpoint sum
            else:
                a = w * alignment(train, target.load(), reduce, self.cfg.get("index"), inputs.seed)
            total = a if total is None else total + a
            used += 1
            log.info("target alignment: checkpoint %s (weight %.3g), %d train x %d target rows", ckpt, w, train.rows,
                     target.rows)
        assert total is not None and ids is not None
        if reduce == "task_max":
            best = total.argmax(axis=1)
            return pl.DataFrame({"example_id": ids, "score": total.max(axis=1), "checkpoints": [used] * len(ids),
                                 "best_task": [tasks[k] for k in best]})
        return pl.DataFrame({"example_id": ids, "score": total, "checkpoints": [used] * len(ids)})
