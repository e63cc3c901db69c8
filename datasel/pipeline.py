"""Snakemake steps of the selection pipeline: thin adapters from a rule's inputs/params to library functions."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from datasel.data.prepare import build_examples, standardize_default
from datasel.errors import DataError
from datasel.runtime import seed_everything
from datasel.scoring.base import SCORERS, ScoreInputs, finalize_scores
from datasel.selection.draws import one_draw
from datasel.selection.make import make_selection
from datasel.store import read_table, write_json, write_table

# torch (about 2 s of CPU per process) and DuckDB are imported inside the steps that use them: prepare and the
# 16+ select jobs of a run never touch torch, and every job imports this module (tests/test_pipeline_imports.py).

log = logging.getLogger(__name__)


def _write_json(path: str | Path, obj: Any) -> None:
    write_json(path, obj, indent=2, sort_keys=True)


def prepare(smk: Any) -> None:
    df, meta = build_examples(smk.params.data)
    if meta.get("kind") == "vector":
        # recorded, not applied: tasks standardize in memory with the training split's statistics
        meta["standardize"] = standardize_default(smk.params.data)
    write_table(df, smk.output.examples, "examples")
    _write_json(smk.output.meta, meta)


def score(smk: Any) -> None:
    cfg = dict(smk.params.scoring)
    name = smk.wildcards.method
    scorer = SCORERS.get(cfg.get("method", name), where=f"scoring.{name}.method")(cfg)
    inputs = ScoreInputs(
        examples=Path(smk.input.examples),
        meta=json.loads(Path(smk.input.meta).read_text()),
        checkpoints=[Path(p) for p in smk.input.get("checkpoints", [])],
        features=[Path(p) for p in smk.input.get("features", [])],
        model_cfg=smk.params.model_cfg or {},
        seed=int(cfg.get("seed", 0)),
        epoch_tables=[Path(p) for p in smk.input.get("epoch_tables", [])],
        proxy_cfg=dict(smk.params.get("proxy") or {}),
    )
    seed_everything(inputs.seed)
    table = finalize_scores(scorer.score(inputs), name)
    write_table(table, smk.output[0], "scores")


def select(smk: Any) -> None:
    cfg = smk.params.policy
    examples = read_table(smk.input.examples, "examples")
    scores = read_table(smk.input.scores, "scores") if smk.input.get("scores") else None
    order = read_table(smk.input.order, "scores") if smk.input.get("order") else None
    table = make_selection(examples, scores, smk.wildcards.policy, cfg, float(smk.params.fraction),
                           int(smk.params.seed), order_scores=order,
                           score_source=smk.input.get("scores") or "scores", draws=smk.params.get("draws"))
    write_table(table, smk.output[0], "selections")


def train(smk: Any) -> None:
    """Train the target model on one selection with one seed and write its test/val metrics."""
    import torch

    from datasel.selection.curriculum import paced_batches
    from datasel.tasks import make_task
    from datasel.training.classify import evaluate, total_steps, train_classifier
    from datasel.training.curves import CurveRecorder, curve_points
    from datasel.training.proxy import step_device

    cfg, seed = smk.params.training, int(smk.wildcards.seed)
    meta = json.loads(Path(smk.input.meta).read_text())
    examples = read_table(smk.input.examples, "examples")
    # a stochastic policy's table holds one draw per training seed: this seed trains on its own
    sel = one_draw(read_table(smk.input.selection, "selections"), seed, smk.input.selection)
    sel = sel.filter(pl.col("selected"))
    task = make_task(examples, meta, cfg["model"], where="training.model")
    train_split = task.split("train")
    row = {eid: i for i, eid in enumerate(train_split.ids)}
    sel = sel.sort("example_id")
    stale = [e for e in sel.get_column("example_id").to_list() if e not in row]
    if stale:  # a selection made from another examples table: refuse it rather than fail on a lookup
        raise DataError(f"{len(stale)} selected ids are not training examples (e.g. {stale[:3]})",
                        file=smk.input.selection, field="example_id",
                        fix="the selection is stale: delete it and rerun the select step on the current examples")
    idx = torch.tensor([row[e] for e in sel.get_column("example_id").to_list()], dtype=torch.long)
    subset = train_split.subset(idx)
    # torch.tensor copies: polars hands out read-only NumPy buffers, which torch.from_numpy warns about
    weights = torch.tensor(sel.get_column("weight").to_list(), dtype=torch.float32)
    sampler = None
    pacing = smk.params.curriculum
    if pacing and sel.get_column("position").null_count() == 0:
        order = torch.tensor(sel.get_column("position").to_list()).argsort()
        sampler = paced_batches(order, int(cfg.get("batch_size", 128)), total_steps(len(idx), cfg), pacing)
    val = task.split("val")
    curve = CurveRecorder(val.inputs, val.labels, curve_points(cfg), loss_fn=task.per_example_loss)
    seed_everything(seed)
    model = task.build_model("training.model").to(step_device(smk))
    train_classifier(model, subset.inputs, subset.labels, cfg, seed=seed,
                     weights=None if bool((weights == 1).all()) else weights, sampler=sampler,
                     desc=f"train {smk.wildcards.selection} seed {seed}", loss_fn=task.per_example_loss,
                     on_step=curve if curve.points and len(val) else None)
    rows = []
    for split in ("val", "test"):
        part = task.split(split)
        if len(part):
            for metric, value in evaluate(model, part.inputs, part.labels, loss_fn=task.per_example_loss).items():
                rows.append({"split": split, "metric": metric, "value": value})
    rows.append({"split": "train", "metric": "steps", "value": float(total_steps(len(idx), cfg))})
    rows.append({"split": "train", "metric": "examples", "value": float(len(idx))})
    info = smk.params.info
    df = pl.DataFrame(rows).with_columns(
        pl.lit(smk.wildcards.selection).alias("selection"),
        pl.lit(info["method"]).alias("method"),
        pl.lit(float(info["fraction"])).alias("fraction"),
        pl.lit(seed, dtype=pl.Int64).alias("seed"),
    )
    write_table(df, smk.output[0], "metrics")
    if len(smk.output) > 1:  # the rule's curves output (no rows without a validation split or curve_points: 0)
        write_table(curve.table(smk.wildcards.selection, info["method"], float(info["fraction"]), seed),
                    smk.output[1], "curves")


def catalog(smk: Any) -> None:
    from datasel.store.catalog import build_catalog

    counts = build_catalog(Path(smk.output[0]).parent, smk.output[0])
    log.info("catalog: %s", counts)
