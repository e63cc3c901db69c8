"""Alchemist (Ding et al. 2025; METHODS.md §3): a rater trained by meta-gradients, then used to rate every example.

Per proxy run (a checkpoint of the proxy model):

1. build each training example's rater input from the checkpoint: its penultimate activations (``penultimate``),
   a seeded random projection (:mod:`datasel.features.projectors`) of its last-layer loss gradient (``grad``), its
   one-hot label (``label``) and/or its loss (``loss``) — ``rater_features`` picks and concatenates them, each block
   z-scored on the training set;
2. meta-train the rater with the penalty-based bilevel loop of :mod:`datasel.meta.bilevel` (train split = training
   data, val split = the validation set);
3. rate every training example once: the rater's raw instance score.

The score is the mean over runs of the per-run ratings, each z-scored first (raters of different runs have different
scales). High score = the rater gives the example more weight: it helps the validation loss. Label noise and
validation-conflicting examples sink to the bottom; Shift-Gsampling (``shift_gsampling`` policy) then samples around
the middle of this ranking.

Label information matters: penultimate activations alone cannot tell a mislabeled example from a clean one of the
same class, so the default features pair them with the label (and the label-aware gradient).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from datasel.errors import ConfigError, DataError
from datasel.features.compute import cross_entropy
from datasel.features.grads import per_sample_grads
from datasel.features.projectors import make_projector
from datasel.meta.bilevel import BilevelConfig, MetaHistory, cross_entropy_per_sample, train_rater
from datasel.meta.rater import Rater, rate
from datasel.runtime import pick_device, seed_everything
from datasel.scoring.base import SCORERS, ScoreInputs, Scorer
from datasel.tasks.base import Inputs, chunks, forward, penultimate, to_device

log = logging.getLogger(__name__)

FEATURE_KINDS = ("penultimate", "grad", "label", "loss")
WHERE = "scoring.alchemist"


def _zscore(block: torch.Tensor) -> torch.Tensor:
    mu, sd = block.mean(0, keepdim=True), block.std(0, keepdim=True)
    return (block - mu) / sd.clamp_min(1e-6)


def rater_features(
    model: nn.Module,
    x: Inputs,
    y: torch.Tensor,
    num_classes: int,
    kinds: list[str],
    proj_dim: int = 64,
    grad_params: str | list[str] = "last_layer",
    seed: int = 0,
    projector: str = "rademacher",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """The rater's input for every example of (x, y): the chosen blocks, each z-scored, concatenated.

    ``x`` is a task's inputs (a tensor, or token ids and masks); every block reads it through the task helpers, so
    vector and text data take the same path.
    """
    unknown = [k for k in kinds if k not in FEATURE_KINDS]
    if not kinds or unknown:
        raise ConfigError(
            f"unknown or empty rater feature kinds {unknown or kinds}",
            field=f"{WHERE}.rater_features",
            fix=f"use a non-empty list of: {', '.join(FEATURE_KINDS)}",
        )
    model.eval()
    blocks = []
    for kind in kinds:
        if kind == "penultimate":
            block = penultimate(model, x, chunk_size)
        elif kind == "grad":
            g = per_sample_grads(model, x, y, cross_entropy, params=grad_params, chunk_size=chunk_size)
            # the shared seeded projector (JL: inner products kept in expectation); widths <= proj_dim pass as is
            dim = int(proj_dim) if g.shape[1] > int(proj_dim) else 0
            proj = make_projector({"projector": projector, "dim": dim, "seed": seed}, g.shape[1], g.device)
            block = proj.project(g)
        elif kind == "label":
            block = F.one_hot(y, num_classes).float()
        else:
            with torch.no_grad():
                block = torch.cat([cross_entropy_per_sample(forward(model, xc).float(), yc).unsqueeze(1)
                                   for xc, yc in zip(chunks(x, chunk_size), y.split(chunk_size))])
        blocks.append(_zscore(block.detach().float()))
    return torch.cat(blocks, dim=1)


def build_rater(in_dim: int, cfg: dict[str, Any]) -> Rater:
    return Rater(in_dim, hidden=list(cfg.get("hidden", [64])), group=bool(cfg.get("group", True)),
                 group_hidden=list(cfg.get("group_hidden", [32])))


def alchemist_run(
    model: nn.Module,
    x: Inputs,
    y: torch.Tensor,
    x_val: Inputs,
    y_val: torch.Tensor,
    num_classes: int,
    cfg: dict[str, Any],
    seed: int,
    device: str = "auto",
) -> tuple[torch.Tensor, MetaHistory, dict[str, float]]:
    """One proxy run: features → meta-trained rater → a rating per training example (plus timings in seconds)."""
    bcfg = BilevelConfig.from_cfg(cfg, WHERE)
    seed_everything(seed)
    dev = pick_device(device)
    t0 = time.perf_counter()
    kinds = list(cfg.get("rater_features", ["penultimate", "label", "grad"]))
    feats = rater_features(
        model.to(dev), to_device(x, dev), y.to(dev), num_classes, kinds,
        proj_dim=int(cfg.get("proj_dim", 64)), grad_params=cfg.get("grad_params", "last_layer"), seed=seed,
        projector=str(cfg.get("projector", "rademacher")),
    )
    t1 = time.perf_counter()
    rater = build_rater(feats.shape[1], cfg)
    rater, hist = train_rater(model, feats, x, y, x_val, y_val, bcfg, rater, seed=seed, device=device)
    t2 = time.perf_counter()
    ratings = rate(rater, feats.to(next(rater.parameters()).device)).cpu().double()
    t3 = time.perf_counter()
    timings = {"features_s": t1 - t0, "meta_train_s": t2 - t1, "rate_s": t3 - t2}
    log.info("alchemist run (seed %d): %s", seed, {k: round(v, 3) for k, v in timings.items()})
    return ratings, hist, timings


@SCORERS.register("alchemist")
class Alchemist(Scorer):
    """Meta-gradient rater scores (higher = more useful for the validation loss). See the module docstring."""

    needs = ("proxy",)

    def score(self, inputs: ScoreInputs) -> pl.DataFrame:
        from datasel.training.proxy import checkpoint_model_cfg, load_checkpoint, task_for_run

        if not inputs.checkpoints:
            raise DataError("no proxy checkpoints were given", field=WHERE, fix="set proxy.seeds >= 1")
        runs = int(self.cfg.get("runs", 1))
        if runs < 1:
            raise ConfigError(f"runs must be >= 1, got {runs}", field=f"{WHERE}.runs", fix="use 1 or more")
        task = task_for_run(inputs.examples, inputs.meta,
                            inputs.model_cfg or checkpoint_model_cfg(inputs.checkpoints[0]))
        train, val = task.split("train"), task.split("val")
        x, y, ids, xv, yv = train.inputs, train.labels, train.ids, val.inputs, val.labels
        if len(val) < 2:
            raise DataError("Alchemist needs a validation split (it is the meta-objective)", file=inputs.examples,
                            field="split", fix="set data.splits.val > 0")
        num_classes = int(inputs.meta["num_classes"])
        ratings = []
        for k, path in enumerate(inputs.checkpoints[:runs]):
            model = load_checkpoint(path, inputs.meta, inputs.model_cfg or None)
            r, _, _ = alchemist_run(model, x, y, xv, yv, num_classes, self.cfg, seed=inputs.seed + k,
                                    device=str(self.cfg.get("device", inputs.device)))
            ratings.append((r - r.mean()) / r.std().clamp_min(1e-12))
        stack = torch.stack(ratings)
        return pl.DataFrame(
            {
                "example_id": ids,
                "score": stack.mean(0).numpy(),
                "score_std": (stack.std(0) if len(ratings) > 1 else torch.zeros(len(ids))).numpy(),
            }
        )
