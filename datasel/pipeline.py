"""Steps of the selection pipeline: from a rule's input paths and config slices to library functions.

Each takes typed arguments (paths, config slices, seed) and knows nothing of the runner: the scripts in
``workflow/scripts/`` unpack Snakemake's object into them, and tests and notebooks call them directly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from datasel.data.prepare import build_examples, standardize_default
from datasel.errors import DataError
from datasel.runtime import pick_device, seed_everything
from datasel.scoring.base import SCORERS, ScoreInputs, finalize_scores
from datasel.selection.draws import one_draw
from datasel.selection.make import make_selection
from datasel.store import PathLike, read_table, write_json, write_table

# torch (about 2 s of CPU per process) and DuckDB are imported inside the steps that use them: prepare and the
# 16+ select jobs of a run never touch torch, and every job imports this module (tests/test_pipeline_imports.py).

log = logging.getLogger(__name__)


def _write_json(path: str | Path, obj: Any) -> None:
    write_json(path, obj, indent=2, sort_keys=True)


def prepare(data: dict[str, Any], examples_out: PathLike, meta_out: PathLike, *, lm: str | None = None) -> None:
    """Build the examples table and its meta.json from the ``data`` config section; instruction data
    (``source: instruct``) is rendered and tokenized with the causal LM ``lm`` (a model folder or .gguf file)."""
    if data.get("source") == "instruct":
        from datasel.instruct.data import build_lm_examples
        from datasel.models.causal_lm import load_tokenizer

        if lm is None:  # a caller's slip: the rule always passes the model
            raise TypeError("prepare: instruction data needs lm=")
        df, meta = build_lm_examples(data["instruct"], load_tokenizer(lm, "training.model"), Path(examples_out).parent)
        write_table(df, examples_out, "examples")
        _write_json(meta_out, meta)
        return
    df, meta = build_examples(data)
    if meta.get("kind") == "vector":
        # recorded, not applied: tasks standardize in memory with the training split's statistics
        meta["standardize"] = standardize_default(data)
    write_table(df, examples_out, "examples")
    _write_json(meta_out, meta)


def score(name: str, cfg: dict[str, Any], examples: PathLike, meta: PathLike, out: PathLike, *,
          checkpoints: Sequence[PathLike] = (), features: Sequence[PathLike] = (),
          epoch_tables: Sequence[PathLike] = (), model_cfg: dict[str, Any] | None = None,
          proxy: dict[str, Any] | None = None, device: str = "auto") -> None:
    """Score the training examples with scoring entry ``name`` (its config ``cfg``) on ``device`` (``compute.device``:
    auto, cpu, cuda) and write its score table."""
    cfg = dict(cfg)
    scorer = SCORERS.get(cfg.get("method", name), where=f"scoring.{name}.method")(cfg)
    inputs = ScoreInputs(
        examples=Path(examples),
        meta=json.loads(Path(meta).read_text()),
        checkpoints=[Path(p) for p in checkpoints],
        features=[Path(p) for p in features],
        model_cfg=model_cfg or {},
        seed=int(cfg.get("seed", 0)),
        epoch_tables=[Path(p) for p in epoch_tables],
        proxy_cfg=dict(proxy or {}),
        device=device,
    )
    seed_everything(inputs.seed)
    table = finalize_scores(scorer.score(inputs), name)
    write_table(table, out, "scores")


def select(policy: str, cfg: dict[str, Any], fraction: float, seed: int, examples: PathLike, out: PathLike, *,
           scores: PathLike | None = None, order: PathLike | None = None,
           draws: Sequence[int] | None = None, meta: PathLike | None = None) -> None:
    """Apply selection policy entry ``policy`` (its config ``cfg``) at kept ``fraction``; write the selection.

    On causal-LM data a policy is not stratified by task unless its entry asks (LESS's point is to pick the tasks
    that match the target, not to keep the pool's task mix), and ``policy: target`` keeps the target rows
    themselves (the target-alone baseline, :mod:`datasel.instruct.target_only`)."""
    from datasel.instruct.target_only import is_target_policy, target_selection

    examples_df = read_table(examples, "examples")
    if is_target_policy(cfg):
        write_table(target_selection(examples_df, f"{policy}_keep0", str(examples)), out, "selections")
        return
    if meta is not None and json.loads(Path(meta).read_text()).get("kind") == "causal_lm":
        cfg = {"stratify": False, **cfg}
    scores_df = read_table(scores, "scores") if scores else None
    order_df = read_table(order, "scores") if order else None
    table = make_selection(examples_df, scores_df, policy, cfg, float(fraction), int(seed), order_scores=order_df,
                           score_source=str(scores) if scores else "scores", draws=draws)
    write_table(table, out, "selections")


def train(examples: PathLike, meta: PathLike, selection: PathLike, out: PathLike, cfg: dict[str, Any], seed: int,
          name: str, info: dict[str, Any], *, curriculum: dict[str, Any] | None = None, device: str = "auto",
          curves_out: PathLike | None = None) -> None:
    """Train the target model on one selection with one seed and write its test/val metrics (and, to
    ``curves_out``, its validation curve at ``training.curve_points`` steps)."""
    import torch

    from datasel.selection.curriculum import paced_batches
    from datasel.tasks import make_task
    from datasel.training.classify import evaluate, total_steps, train_classifier
    from datasel.training.curves import CurveRecorder, curve_points

    seed = int(seed)
    meta_dict = json.loads(Path(meta).read_text())
    examples_df = read_table(examples, "examples")
    # a stochastic policy's table holds one draw per training seed: this seed trains on its own
    sel = one_draw(read_table(selection, "selections"), seed, str(selection))
    sel = sel.filter(pl.col("selected"))
    if meta_dict.get("kind") == "causal_lm":  # LoRA fine-tuning, judged by greedy answers (datasel.training.lm)
        from datasel.training.curves import CurveRecorder
        from datasel.training.lm import train_lm

        train_lm(examples, meta, sel, out, cfg, seed, name, info, device)
        if curves_out is not None:  # no curve: each point would be a generation pass (training.curve_points: 0)
            write_table(CurveRecorder(None, None, 0).table(name, info["method"], float(info["fraction"]), seed),
                        curves_out, "curves")
        return
    task = make_task(examples_df, meta_dict, cfg["model"], where="training.model")
    train_split = task.split("train")
    row = {eid: i for i, eid in enumerate(train_split.ids)}
    sel = sel.sort("example_id")
    stale = [e for e in sel.get_column("example_id").to_list() if e not in row]
    if stale:  # a selection made from another examples table: refuse it rather than fail on a lookup
        raise DataError(f"{len(stale)} selected ids are not training examples (e.g. {stale[:3]})",
                        file=selection, field="example_id",
                        fix="the selection is stale: delete it and rerun the select step on the current examples")
    idx = torch.tensor([row[e] for e in sel.get_column("example_id").to_list()], dtype=torch.long)
    subset = train_split.subset(idx)
    # torch.tensor copies: polars hands out read-only NumPy buffers, which torch.from_numpy warns about
    weights = torch.tensor(sel.get_column("weight").to_list(), dtype=torch.float32)
    sampler = None
    if curriculum and sel.get_column("position").null_count() == 0:
        order = torch.tensor(sel.get_column("position").to_list()).argsort()
        sampler = paced_batches(order, int(cfg.get("batch_size", 128)), total_steps(len(idx), cfg), curriculum)
    val = task.split("val")
    curve = CurveRecorder(val.inputs, val.labels, curve_points(cfg), loss_fn=task.per_example_loss)
    seed_everything(seed)
    model = task.build_model("training.model").to(pick_device(device))
    train_classifier(model, subset.inputs, subset.labels, cfg, seed=seed,
                     weights=None if bool((weights == 1).all()) else weights, sampler=sampler,
                     desc=f"train {name} seed {seed}", loss_fn=task.per_example_loss,
                     on_step=curve if curve.points and len(val) else None)
    rows = []
    for split in ("val", "test"):
        part = task.split(split)
        if len(part):
            for metric, value in evaluate(model, part.inputs, part.labels, loss_fn=task.per_example_loss).items():
                rows.append({"split": split, "metric": metric, "value": value})
    rows.append({"split": "train", "metric": "steps", "value": float(total_steps(len(idx), cfg))})
    rows.append({"split": "train", "metric": "examples", "value": float(len(idx))})
    df = pl.DataFrame(rows).with_columns(
        pl.lit(name).alias("selection"),
        pl.lit(info["method"]).alias("method"),
        pl.lit(float(info["fraction"])).alias("fraction"),
        pl.lit(seed, dtype=pl.Int64).alias("seed"),
    )
    write_table(df, out, "metrics")
    if curves_out is not None:  # the rule's curves output (no rows without a validation split or curve_points: 0)
        write_table(curve.table(name, info["method"], float(info["fraction"]), seed), curves_out, "curves")


def catalog(out: PathLike) -> None:
    """Build the DuckDB catalog ``out`` over the tables of the results folder it lies in."""
    from datasel.store.catalog import build_catalog

    counts = build_catalog(Path(out).parent, out)
    log.info("catalog: %s", counts)
