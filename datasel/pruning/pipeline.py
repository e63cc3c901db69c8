"""GAPrune end to end: triplets → gradient statistics → prune (DAI or a baseline) → evaluate → retrain → evaluate.

Library functions used by the benchmark, plus the step functions (``step_*``) that the short scripts in
``workflow/scripts/gaprune_*.py`` call with the rule's paths, config slice and wildcards. The triplets are a task
kind (:class:`datasel.tasks.triplets.TripletTask`): the model, the splits and the loss come from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasel.data.triplets import Triplets, build_triplets, read_triplets, write_triplets
from datasel.eval.retrieval import corpus_from_triplets, evaluate_retrieval
from datasel.models.embedding import EmbeddingModel, save_embedding_model
from datasel.pruning.dai import dai_scores, tensor_cosine
from datasel.pruning.masks import apply_masks, candidate_params, masks_from_scores, sparsity_of
from datasel.pruning.methods import score_weights
from datasel.pruning.stats import GradStats, gradient_statistics
from datasel.runtime import seed_everything
from datasel.store.atomic import atomic_path
from datasel.tasks.triplets import TripletTask, embedding_model_cfg
from datasel.training.embedding import train_embedding

log = logging.getLogger(__name__)

SPLITS = ("domain", "general")


def triplet_task(cfg: dict[str, Any], triplets: Triplets) -> TripletTask:
    """The triplets task of a ``gaprune`` config slice (model, max_seq_len, device; InfoNCE's ``scale``)."""
    scale = cfg.get("scale", cfg.get("fisher", {}).get("scale", 20.0))
    return TripletTask(triplets, {"kind": "triplets", "scale": scale}, embedding_model_cfg(cfg))


def load_model(cfg: dict[str, Any], triplets: Triplets | None = None) -> EmbeddingModel:
    """The configured embedding model in eval mode, built by the triplets task (checked on two of ``triplets``)."""
    task = triplet_task(cfg, triplets if triplets is not None else Triplets([], [], []))
    return task.build_model("gaprune.model").eval()


def run_name(method: str, sparsity: float) -> str:
    return f"{method}_s{int(round(sparsity * 100)):02d}"


def evaluate(model: EmbeddingModel, triplets: Triplets, k: int = 10, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Retrieval metrics on the held-out eval split of each set (domain, general)."""
    out = {}
    for set_ in SPLITS:
        part = triplets.where(set_, "eval")
        if len(part) == 0:
            continue
        q, corpus, rel = corpus_from_triplets(part.query, part.positive, part.negative)
        out[set_] = evaluate_retrieval(model, q, corpus, rel, k, batch_size)
    return out


def metric_rows(results: dict[str, dict[str, float]], method: str, sparsity: float, stage: str,
                seed: int) -> list[dict[str, Any]]:
    """Rows of the ``metrics`` table: selection = <method>_s<pct>_<stage>, fraction = sparsity."""
    sel = f"{run_name(method, sparsity)}_{stage}"
    return [{"selection": sel, "method": method, "fraction": float(sparsity), "seed": int(seed), "split": split,
             "metric": m, "value": float(v)} for split, ms in results.items() for m, v in ms.items()]


def compute_stats(model: EmbeddingModel, triplets: Triplets, cfg: dict[str, Any], seed: int) -> GradStats:
    params = candidate_params(model, cfg.get("prune", {}).get("candidates", "mlp"))
    return gradient_statistics(model, triplets.where("domain", "train"), triplets.where("general", "train"), params,
                               {**cfg.get("fisher", {}), "max_seq_len": cfg.get("max_seq_len")}, seed)


def prune(model: EmbeddingModel, method: str, sparsity: float, stats: GradStats | None, cfg: dict[str, Any],
          seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Score the candidate weights with ``method``, build masks at ``sparsity`` and zero the pruned weights."""
    pcfg = cfg.get("prune", {})
    params = candidate_params(model, pcfg.get("candidates", "mlp"))
    scores = score_weights(method, params, stats, cfg.get("dai", {}), seed)
    masks = masks_from_scores(scores, sparsity, pcfg.get("budget", "global"), float(pcfg.get("rho_min", 0.05)),
                              float(pcfg.get("rho_max", 0.95)))
    apply_masks(model, masks)
    return masks, scores


def param_score_rows(model: EmbeddingModel, method: str, sparsity: float, masks: dict[str, torch.Tensor],
                     stats: GradStats | None, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``param_scores``: per candidate tensor, the realized sparsity and GAPrune's diagnostics."""
    params = {n: p for n, p in model.named_parameters() if n in masks}
    realized = sparsity_of(model, list(masks))
    dai = dai_scores(params, stats, cfg.get("dai", {})) if stats is not None else {}
    rows = []
    for n in sorted(masks):
        rows.append({
            "method": method, "tensor": n, "numel": int(masks[n].numel()), "sparsity": realized[n],
            "target_sparsity": float(sparsity),
            "mean_dai": float(dai[n].mean()) if dai else float("nan"),
            "cos_general_domain": tensor_cosine(stats.grad_general[n], stats.grad_domain[n]) if stats else float("nan"),
            "batch_cos_mean": float(stats.batch_cos_mean[n]) if stats else float("nan"),
            "conflict_rate": float(stats.conflict_rate[n]) if stats else float("nan"),
        })
    return rows


def retrain_data(triplets: Triplets, cfg: dict[str, Any]) -> Triplets:
    which = cfg.get("retrain", {}).get("data", "domain")
    return triplets.where(None if which == "both" else which, "train")


def run_one(cfg: dict[str, Any], triplets: Triplets, stats: GradStats | None, method: str, sparsity: float,
            seed: int, save_dir: str | Path | None = None) -> dict[str, Any]:
    """Prune a fresh copy of the model, evaluate one-shot, retrain with the mask fixed, evaluate again.

    ``method='dense'`` skips pruning (sparsity 0): the reference, retrained the same way for a fair comparison.
    Returns {'metrics': rows, 'param_scores': rows, 'losses': retraining losses}.
    """
    seed_everything(seed)
    model = load_model(cfg, triplets)
    k = int(cfg.get("eval", {}).get("k", 10))
    bs = int(cfg.get("eval", {}).get("batch_size", 64))
    masks: dict[str, torch.Tensor] = {}
    ps_rows: list[dict[str, Any]] = []
    if method != "dense":
        masks, _ = prune(model, method, sparsity, stats, cfg, seed)
        ps_rows = param_score_rows(model, method, sparsity, masks, stats, cfg)
    rows = metric_rows(evaluate(model, triplets, k, bs), method, sparsity, "oneshot", seed)
    rcfg = {**cfg.get("retrain", {}), "max_seq_len": cfg.get("max_seq_len")}
    losses: list[float] = []
    if int(rcfg.get("steps", 100)) > 0:
        losses = train_embedding(model, retrain_data(triplets, cfg), rcfg, seed, masks)
        rows += metric_rows(evaluate(model, triplets, k, bs), method, sparsity, "retrained", seed)
        if masks:
            after = sparsity_of(model, list(masks))
            before = {r["tensor"]: r["sparsity"] for r in ps_rows}
            # the mask is held fixed: retraining must not revive a pruned weight
            assert all(after[n] >= before[n] - 1e-9 for n in masks), "retraining changed the sparsity pattern"
    if save_dir is not None:
        # the run folder appears whole or not at all: a job killed while saving the model leaves no folder that
        # step_gather would read as a finished run
        with atomic_path(save_dir, folder=True) as tmp:
            if masks:
                packed = {n: np.packbits(m.numpy().reshape(-1)) for n, m in masks.items()}
                np.savez_compressed(tmp / "mask.npz", **packed)
            if method in cfg.get("save_models", ["dai"]):
                save_embedding_model(model, tmp / "model")
            (tmp / "run.json").write_text(json.dumps({"method": method, "sparsity": sparsity, "seed": seed,
                                                      "retrain_losses": losses}, indent=1))
    return {"metrics": rows, "param_scores": ps_rows, "losses": losses}


# ---------------------------------------------------------------------------------------------------------------
# Workflow steps: typed arguments (the rule's paths, config slice and wildcards); workflow/scripts/gaprune_*.py
# unpack ``snakemake`` into them


def step_triplets(cfg: dict[str, Any], out: str | Path) -> None:
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    triplets = build_triplets(cfg.get("data", {}), load_model(cfg), seed)
    write_triplets(triplets, out)


def step_stats(cfg: dict[str, Any], triplets: str | Path, out: str | Path) -> None:
    data = read_triplets(triplets)
    stats = compute_stats(load_model(cfg, data), data, cfg, int(cfg.get("seed", 0)))
    stats.save(out)


def step_run(cfg: dict[str, Any], triplets: str | Path, stats: str | Path, method: str, pct: int,
             metrics_out: str | Path, run_dir: str | Path) -> None:
    """One (method, sparsity) run: its metrics table and its run folder (mask, model, retraining losses)."""
    import polars as pl

    from datasel.store import write_table

    loaded = GradStats.load(stats) if method != "dense" else None  # param_scores diagnostics use it too
    out = run_one(cfg, read_triplets(triplets), loaded, method, int(pct) / 100.0, int(cfg.get("seed", 0)), run_dir)
    write_table(pl.DataFrame(out["metrics"]), metrics_out, "metrics")


def step_gather(cfg: dict[str, Any], metrics: list[str], run_dirs: list[str], stats: str | Path,
                metrics_out: str | Path, param_scores_out: str | Path, plot_out: str | Path) -> None:
    import polars as pl

    from datasel.report.gaprune_plots import plot_gaprune
    from datasel.store import read_table, write_table

    table = pl.concat([read_table(p, "metrics") for p in metrics], how="vertical_relaxed")
    write_table(table.sort(["selection", "split", "metric"]), metrics_out, "metrics")
    model = load_model(cfg)
    loaded = GradStats.load(stats)
    rows = []
    for run_dir in run_dirs:
        info = json.loads((Path(run_dir) / "run.json").read_text())
        mask_file = Path(run_dir) / "mask.npz"
        if not mask_file.exists():
            continue
        params = dict(model.named_parameters())
        with np.load(mask_file) as z:
            masks = {n: torch.from_numpy(np.unpackbits(z[n])[: params[n].numel()].astype(bool)).reshape(params[n].shape)
                     for n in z.files}
        fresh = {n: params[n].detach().clone() for n in masks}
        apply_masks(model, masks)
        rows += param_score_rows(model, info["method"], info["sparsity"], masks, loaded, cfg)
        with torch.no_grad():
            for n, t in fresh.items():
                params[n].copy_(t)
    write_table(pl.DataFrame(rows), param_scores_out, "param_scores")
    plot_gaprune(table, plot_out, metric=cfg.get("plot_metric", "ndcg@10"))


def step_example_scores(cfg: dict[str, Any], triplets: str | Path, stats: str | Path, out: str | Path) -> None:
    """The per-example extension (ours) as a ``scores`` table over the chosen set's training triplets."""
    from datasel.scoring.base import SCORERS, ScoreInputs, finalize_scores
    from datasel.store import write_table

    scorer = SCORERS.get("gaprune_example", where="gaprune.example_scores")(cfg)
    inputs = ScoreInputs(examples=Path(triplets), meta={}, device=cfg.get("device", "auto"),
                         seed=int(cfg.get("seed", 0)), extra={"triplets": Path(triplets), "stats": Path(stats)})
    write_table(finalize_scores(scorer.score(inputs), "gaprune_example"), out, "scores")
