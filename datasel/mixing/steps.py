"""Library side of the DGA rules (rules/dga.smk): build the domain data, train one run, score alignment, plot.

Each ``*_step`` takes typed arguments (paths, the rule's config slice, the seed) that the two-line scripts in
``workflow/scripts/dga_*.py`` unpack from ``snakemake``; the logic sits in the functions above them so the benchmark
and tests call the same code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import ConfigError
from datasel.mixing.basis import make_basis
from datasel.mixing.clusters import cluster_names, grad_embeddings, kmeans_labels, row_embeddings
from datasel.mixing.dga import MixtureResult, train_mixture
from datasel.mixing.task import MixingTask, build_task, row_encoder, split_roles, training_loss
from datasel.models.lm import text_encoder
from datasel.runtime import pick_device, seed_everything
from datasel.store import atomic_path, read_table, write_json, write_table
from datasel.training.proxy import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def prepare_task(examples: pl.DataFrame, meta: dict[str, Any], cfg: dict[str, Any], source: str = "examples",
                 seed: int = 0) -> MixingTask:
    """Domains from a column (``dga.domains.method: column``) or k-means clusters of the generic pool
    (``method: kmeans``, ``k``, ``on: inputs|grads``) — for data without domain labels or to split coarse ones."""
    task_cfg = dict(cfg.get("task") or {})
    encoder = text_encoder(cfg.get("model"), examples.get_column("text").to_list(), "dga.model") \
        if meta.get("kind") == "text" else None
    rows = row_encoder(examples, meta, encoder, cfg.get("model"))
    dom = {"method": "column", "k": 16, "on": "inputs", "niter": 25, **(cfg.get("domains") or {})}
    if dom["method"] == "column":
        return build_task(examples, meta, task_cfg, source, rows=rows)
    if dom["method"] != "kmeans":
        raise ConfigError(f"unknown domain method '{dom['method']}'", field="dga.domains.method",
                          fix="use column or kmeans")
    pool = split_roles(examples, meta, task_cfg, source, need_column=False)[0]
    if dom["on"] == "inputs":
        emb = row_embeddings(pool, meta, task_cfg, rows)
    elif dom["on"] == "grads":
        from datasel.models import build_model

        seed_everything(seed)
        model = build_model(dict(cfg.get("model") or {"name": "mlp"}), meta)
        x, y = rows(pool)
        emb = grad_embeddings(model, x, y, dom.get("params", "last_layer"))
    else:
        raise ConfigError(f"unknown k-means input '{dom['on']}'", field="dga.domains.on", fix="use inputs or grads")
    k = int(dom["k"])
    labels = cluster_names(kmeans_labels(emb, k, seed=seed, niter=int(dom["niter"])), k)
    log.info("k-means: %d clusters over %d pool rows (%d non-empty)", k, pool.height, len(set(labels)))
    return build_task(examples, meta, task_cfg, source, domain_labels=labels, rows=rows)


def task_basis(task: MixingTask, cfg: dict[str, Any], seed: int = 0) -> np.ndarray | None:
    """The basis for DGA (None = one arm per domain)."""
    bcfg = dict(cfg.get("basis") or {"kind": "identity"})
    if bcfg.get("kind", "identity") == "identity":
        return None
    centroids = None
    if task.embeddings is not None:
        centroids = np.stack([e.mean(0) for e in task.embeddings]).astype(np.float32)
    return make_basis(len(task.domains), bcfg, task.sizes, centroids, seed)


def run_strategy(examples: pl.DataFrame, meta: dict[str, Any], cfg: dict[str, Any], strategy: str, seed: int,
                 source: str = "examples") -> tuple[MixingTask, MixtureResult]:
    task = prepare_task(examples, meta, cfg, source, seed=int(cfg.get("domain_seed", 0)))
    basis = task_basis(task, cfg, seed) if strategy == "dga" else None
    return task, train_mixture(task, cfg, strategy, seed, basis)


def weights_frame(res: MixtureResult, run: str) -> pl.DataFrame:
    rows = [(run, step, d, float(w)) for step, alpha in res.weights for d, w in zip(res.domains, alpha)]
    return pl.DataFrame(rows, schema={"run": pl.String, "step": pl.Int64, "domain": pl.String, "weight": pl.Float64},
                        orient="row")


def metrics_frame(res: MixtureResult, seed: int) -> pl.DataFrame:
    best = min(c[1] for c in res.curve)
    vals = {"loss": res.final["loss"], "accuracy": res.final["accuracy"], "min_loss": best}
    return pl.DataFrame({"selection": f"dga_{res.strategy}", "method": res.strategy, "fraction": 1.0, "seed": seed,
                         "split": "specific_eval", "metric": list(vals), "value": list(vals.values())})


def curve_frame(res: MixtureResult, seed: int) -> pl.DataFrame:
    return pl.DataFrame([(res.strategy, seed, s, loss, a) for s, loss, a in res.curve],
                        schema={"strategy": pl.String, "seed": pl.Int64, "step": pl.Int64, "loss": pl.Float64,
                                "accuracy": pl.Float64}, orient="row")


# -------------------------------------------------------------------------------------------------- workflow steps

def _load(examples: str | Path, meta: str | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    return read_table(examples, "examples"), json.loads(Path(meta).read_text())


def data_step(cfg: dict[str, Any], examples_out: str | Path, meta_out: str | Path,
              examples: str | Path | None = None, meta: str | Path | None = None) -> None:
    """Build (``dga.data``) or take over (``source: examples``: the pipeline's ``examples`` and ``meta``) the
    multi-domain examples table and its meta."""
    if cfg.get("source") == "examples":
        if examples is None or meta is None:
            raise ConfigError("dga.data.source: examples needs the prepared examples table", field="dga.data.source",
                              fix="run the data stage (data section) or use a builtin dga.data.source")
        df, info = _load(examples, meta)
        info = {**info, "specific": cfg.get("specific", info.get("specific"))}
    else:
        from datasel.data.domains import build_domain_examples

        df, info = build_domain_examples(cfg)
    write_table(df, examples_out, "examples")
    write_json(meta_out, info, indent=1)


def train_step(cfg: dict[str, Any], strategy: str, seed: int, examples: str | Path, meta: str | Path,
               model_out: str | Path, weights_out: str | Path, metrics_out: str | Path, curve_out: str | Path) -> None:
    """One run (strategy × seed): model, domain_weights table, metrics table, specific-loss curve."""
    cfg = dict(cfg)
    df, info = _load(examples, meta)
    task, res = run_strategy(df, info, cfg, strategy, seed, str(examples))
    run = f"dga_{strategy}_seed{seed}"
    write_table(weights_frame(res, run), weights_out, "domain_weights")
    write_table(metrics_frame(res, seed), metrics_out, "metrics")
    with atomic_path(curve_out) as tmp:  # JSON, not Parquet: a by-product, not a catalog table
        curve_frame(res, seed).write_json(tmp)
    # a pretrained LM's checkpoint holds its trainable weights only (the base comes back from the model source)
    save_checkpoint(model_out, res.model, model_cfg=cfg.get("model") or {"name": "mlp"}, meta=info,
                    strategy=strategy, seed=seed, domains=res.domains)


def alignment_step(cfg: dict[str, Any], examples: str | Path, meta: str | Path, model: str | Path,
                   scores_out: str | Path) -> None:
    """Per-example alignment of the pool with the specific set under the trained DGA model -> scores table."""
    from datasel.mixing.alignment import alignment_table
    from datasel.scoring.base import finalize_scores

    cfg = dict(cfg)
    df, info = _load(examples, meta)
    task = prepare_task(df, info, cfg, str(examples), seed=int(cfg.get("domain_seed", 0)))
    net = load_checkpoint(model, info)
    device = pick_device(str(cfg.get("device", "auto")))
    table = alignment_table(net.to(device), task.to(device), dict(cfg.get("alignment") or {}),
                            training_loss(cfg.get("model")))
    write_table(finalize_scores(table, "dga_alignment"), scores_out, "scores")


def plots_step(weights: list[str], curves: list[str], weights_out: str | Path, loss_out: str | Path) -> None:
    from datasel.report.dga_plots import plot_loss_curves, plot_weight_trajectories

    plot_weight_trajectories(pl.concat([read_table(p, "domain_weights") for p in weights]), weights_out)
    plot_loss_curves(pl.concat([pl.read_json(p) for p in curves]), loss_out)
