"""Steps of the instruction chain (rules/instruct.smk), each on typed arguments (paths, config slices, seeds) that
the scripts in ``workflow/scripts/instruct_*.py`` unpack from Snakemake; everything under ``results/instruct/``::

    base_model/                      the tiny GPT-2 (only with instruct.model.tiny)
    examples.parquet, truncation.json, source_<role>.parquet
    warmup/epoch<e>.pt               LoRA adapters + AdamW state + the epoch's mean lr;  warmup/sample.parquet
    features/epoch<e>-<split>/shard_<i>/, index.json     the feature store (train = pool, Adam; val = target, plain)
    scores/less.parquet              the LESS score (target_alignment, reduce task_max)
    selections/<policy>_keep<pct>.parquet
    metrics/<selection>.parquet      one row per fine-tuning seed: test loss per token, exact match
    report/summary.md, summary.csv   share of each selection from the target task(s), and the metrics
    export/<selection>/              the selected pool rows in their original columns (datasel.export's writer)
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from datasel.errors import ConfigError, DataError
from datasel.features.compute import featurize, fit_rows, shard_bounds
from datasel.features.projectors import AdamPreconditioner
from datasel.features.steps import PRECONDITIONED_SPLITS, fitted_basis, write_shard
from datasel.features.store import gather
from datasel.instruct.data import prepare_examples, read_instructions, render
from datasel.instruct.model import adapter_state, build_tiny_model, load_adapter, load_lm
from datasel.instruct.train import evaluate, train_lora
from datasel.runtime import pick_device, rng_for, seed_everything
from datasel.scoring.base import SCORERS, ScoreInputs, finalize_scores
from datasel.selection.make import make_selection
from datasel.store import atomic_path, read_table, save_checkpoint_file, write_table
from datasel.tasks.base import Split
from datasel.tasks.causal_lm import CausalLMTask, completion_loss

Paths = list[str] | tuple[str, ...]

log = logging.getLogger(__name__)


def _json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))


def _device(cfg: dict[str, Any]) -> torch.device:
    return pick_device(cfg.get("device", "auto"))


def _policy(cfg: dict[str, Any], model_dir: str, seed: int, max_new_tokens: int = 32) -> Any:
    seed_everything(seed)  # LoRA's A matrices are drawn at wrapping time
    return load_lm(model_dir, cfg["model"]["lora"], _device(cfg), cfg["model"]["dtype"], max_new_tokens)


def lm_split(table: pl.DataFrame, split: str, tokenizer: Any, cfg: dict[str, Any]) -> Split:
    """One split of the examples table as the causal-LM task batches it, in ``example_id`` order."""
    return CausalLMTask(table, {}, {"max_length": int(cfg["data"]["max_length"])}, "instruct.data",
                        tokenizer).split(split)


def generate_data(generate: dict[str, Any], pool: str, target: str, test: str) -> None:
    from datasel.instruct.families import write

    write(generate, {"pool": pool, "target": target, "test": test})


def build_model(cfg: dict[str, Any], out: str) -> None:
    """The tiny GPT-2 (``instruct.model.tiny``), its tokenizer trained on the pool and target texts."""
    texts = []
    for role in ("pool", "target"):
        _, rendered = render(read_instructions(cfg["data"][role], role), cfg["data"], None, cfg["data"][role])
        texts += ["".join(r.parts) for r in rendered]
    tiny = {**cfg["model"]["tiny"]}
    tiny["n_positions"] = max(int(tiny["n_positions"]), int(cfg["data"]["max_length"]))
    folder = Path(out)
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    build_tiny_model(texts, folder, tiny)


def prepare(cfg: dict[str, Any], model_dir: str, examples: str, truncation: str) -> None:
    tok = _tokenizer(model_dir)
    table, report = prepare_examples(cfg["data"], tok, Path(examples).parent)
    with atomic_path(examples) as tmp:
        table.write_parquet(tmp)
    _json(truncation, report)
    for role, rep in report.items():
        log.info("%s: %d rows, %d cut at max_length, %d left out (completion cut away)", role, rep["rows"],
                 rep["truncated"], rep["completion_removed"])


def _tokenizer(model_dir: str) -> Any:
    """The model's tokenizer (a GGUF model's from its cached conversion), chat template included."""
    from datasel.models.causal_lm import load_tokenizer

    return load_tokenizer(model_dir, "instruct.model")


def warmup(cfg: dict[str, Any], model_dir: str, examples: str, sample: str, checkpoints: Paths) -> None:
    """LESS's warm-up: LoRA on a random ``fraction`` of the pool, a checkpoint with optimizer state after each epoch
    (``checkpoints[e - 1]`` after epoch e)."""
    wcfg = cfg["warmup"]
    if len(checkpoints) != int(wcfg["epochs"]):
        raise ConfigError(f"{len(checkpoints)} checkpoint paths for {wcfg['epochs']} warm-up epochs",
                          field="instruct.warmup.epochs", fix="name one checkpoint path per warm-up epoch")
    table = pl.read_parquet(examples)
    pool = table.filter(pl.col("split") == "train").sort("example_id")
    n = max(1, int(round(wcfg["fraction"] * pool.height)))
    pick = np.sort(rng_for(int(wcfg["seed"]), "instruct:warmup").choice(pool.height, size=n, replace=False))
    picked = pool[pick]
    with atomic_path(sample) as tmp:
        picked.select("example_id", "task").write_parquet(tmp)
    policy = _policy(cfg, model_dir, int(wcfg["seed"]))
    data = lm_split(picked, "train", policy.tok, cfg)

    def save(epoch: int, mean_lr: float, opt: torch.optim.Optimizer) -> None:
        save_checkpoint_file({"adapter": adapter_state(policy.module), "optimizer": opt.state_dict(), "epoch": epoch,
                              "lr": mean_lr, "model_dir": str(model_dir)}, checkpoints[epoch - 1])

    train_lora(policy.module, data, wcfg, int(wcfg["seed"]), on_epoch=save, desc="warm-up")


def features_shard(cfg: dict[str, Any], model_dir: str, examples: str, checkpoint: str, out: str, split: str,
                   shard: int) -> None:
    """LoRA gradient features of one shard of the pool (Adam-preconditioned) or of the target set (plain)."""
    # dense unless asked: LESS's own projection (TRAK's Rademacher), which the chain's measured figures used
    fcfg = {"projection": "dense", **cfg["features"], "params": "lora", "projector": "rademacher"}
    shard, shards = int(shard), int(cfg["features"]["shards"])
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    policy = _policy(cfg, model_dir, 0)
    load_adapter(policy.module, ckpt["adapter"], checkpoint)
    table = pl.read_parquet(examples)
    data = lm_split(table, split, policy.tok, cfg)
    ids = data.ids
    lo, hi = shard_bounds(len(ids), shards, shard)
    pre = None
    if split in PRECONDITIONED_SPLITS:  # the pool; the target set stays plain gradients (LESS)
        chosen = [n for n, p in policy.module.named_parameters() if p.requires_grad]
        pre = AdamPreconditioner.from_optimizer_state(ckpt["optimizer"], policy.module, chosen)
        if pre is None:
            raise DataError("the warm-up checkpoint has no Adam moments for the LoRA parameters",
                            file=checkpoint, fix="rerun the instruct warm-up step")
    fcfg["precondition"] = "adam" if pre is not None else "none"
    identity = {"model": str(model_dir), "checkpoint": f"epoch{ckpt['epoch']}", "split": split,
                "lr": float(ckpt["lr"])}
    inputs = {k: v[lo:hi] for k, v in data.inputs.items()}
    fit = None
    if fitted_basis(fcfg):  # one basis for the pool and the target set: fitted on pool rows
        pool = lm_split(table, "train", policy.tok, cfg)
        rows = fit_rows(len(pool), int(fcfg.get("factor_fit_rows", 2048)))
        fit = ({k: v[rows] for k, v in pool.inputs.items()}, pool.labels[rows])
    settings = {"fset": fcfg, "identity": identity, "shards": shards, "rows": [lo, hi],
                "data": str(Path(examples).stat().st_mtime_ns)}
    write_shard(Path(out), settings, lambda work: featurize(policy.module, inputs, data.labels[lo:hi], work, fcfg,
                                                       ids=ids[lo:hi], loss_fn=completion_loss, identity=identity,
                                                       preconditioner=pre, device=policy.device, fit=fit))


def features_gather(shards: Paths, out: str, epoch: int, split: str) -> None:
    gather([Path(p) for p in shards], out, verify=True, extra={"checkpoint": f"epoch{epoch}", "split": split})


def score(cfg: dict[str, Any], examples: str, features: Paths, out: str) -> None:
    """The LESS score of every pool row (``cfg``: ``instruct.score``)."""
    scorer = SCORERS.get("target_alignment")({"reduce": cfg["reduce"], "weights": cfg["weights"],
                                              "task_column": "task"})
    inputs = ScoreInputs(examples=Path(examples), meta={}, features=[Path(p) for p in features])
    table = finalize_scores(scorer.score(inputs), "less")
    write_table(table, out, "scores")


def select(examples: str, scores: str | None, out: str, name: str, policy: dict[str, Any], fraction: float,
           seed: int) -> None:
    """Selection ``name`` (its ``policy`` entry) keeping ``fraction`` of the pool; ``scores`` None for a policy
    that reads no score."""
    # not stratified unless asked: the "label" of an instruction row is its task, and LESS's point is to pick
    # the tasks that match the target, not to keep the pool's task mix
    entry = {"stratify": False, **policy}
    table = pl.read_parquet(examples)
    score_table = read_table(scores, "scores") if scores else None
    sel = make_selection(table, score_table, name, entry, float(fraction), int(seed), score_source=scores or "scores")
    write_table(sel, out, "selections")


def finetune(cfg: dict[str, Any], model_dir: str, examples: str, selection: str, out: str, name: str) -> None:
    """LoRA fine-tuning from the base model on selection ``name``, one run per ``finetune.seeds`` seed, evaluated on
    the test split."""
    table = pl.read_parquet(examples)
    chosen = read_table(selection, "selections").filter(pl.col("selected")).get_column("example_id")
    train = table.filter(pl.col("example_id").is_in(chosen.implode()))
    test = table.filter(pl.col("split") == "test").sort("example_id")
    rows = []
    for seed in cfg["finetune"]["seeds"]:
        policy = _policy(cfg, model_dir, int(seed))
        data = lm_split(train, "train", policy.tok, cfg)
        hist = train_lora(policy.module, data, cfg["finetune"], int(seed), desc=f"fine-tune seed {seed}")
        test_data = lm_split(test, "test", policy.tok, cfg)
        comps = test.get_column("completion").to_list()
        longest = max(len(policy.tok(c, add_special_tokens=False)["input_ids"]) for c in comps) + 1
        policy.max_new_tokens = int(cfg["eval"].get("max_new_tokens") or longest)
        m = evaluate(policy, test_data, test.get_column("prompt").to_list(), comps, cfg["eval"])
        rows.append({"selection": name, "seed": int(seed), "train_examples": train.height,
                     "train_loss": hist[-1]["loss"], "loss_per_token": m["loss_per_token"],
                     "exact_match": m["exact_match"], "test_examples": m["examples"]})
        log.info("%s seed %s: test loss/token %.4f, exact match %.3f", name, seed,
                 m["loss_per_token"], m["exact_match"])
    with atomic_path(out) as tmp:
        pl.DataFrame(rows).write_parquet(tmp)


def task_shares(table: pl.DataFrame, kept: dict[str, list[str]]
                ) -> tuple[list[str] | None, float | None, dict[str, float | None]]:
    """The target task(s), the pool's share of rows from them (the base rate) and each selection's share.

    None throughout when the pool or the target file has no task column: a share is never computed from tasks
    that were not given.
    """
    pool = table.filter(pl.col("split") == "train")
    target = table.filter(pl.col("split") == "val")
    if pool.get_column("task").null_count() or target.get_column("task").null_count():
        return None, None, dict.fromkeys(kept)
    tasks = sorted(set(target.get_column("task")))
    hit = pool.select("example_id", pl.col("task").is_in(tasks).alias("hit"))
    shares = {}
    for name, ids in kept.items():
        part = hit.filter(pl.col("example_id").is_in(ids))
        if part.height != len(ids):
            raise DataError(f"{len(ids) - part.height} rows of selection {name} are not pool rows",
                            field="example_id", fix="the selection is stale: rerun the workflow")
        shares[name] = float(part.get_column("hit").mean()) if part.height else None
    return tasks, float(hit.get_column("hit").mean()), shares


def report(examples: str, truncation: str, selections: Paths, metrics: Paths, md: str, csv: str) -> None:
    """Share of each selection from the target task(s) against the pool's base rate, and the fine-tuned models'
    test metrics."""
    table = pl.read_parquet(examples)
    pool = table.filter(pl.col("split") == "train")
    measured = pl.concat([pl.read_parquet(p) for p in metrics])
    kept = {}
    for path in selections:
        sel = read_table(path, "selections")
        kept[sel.get_column("selection")[0]] = sel.filter(pl.col("selected")).get_column("example_id").to_list()
    tasks, base, shares = task_shares(table, kept)
    rows = []
    for name, ids in kept.items():
        m = measured.filter(pl.col("selection") == name)
        rows.append({"selection": name, "kept": len(ids), "target_share": shares[name], "base_rate": base,
                     "loss_mean": float(m.get_column("loss_per_token").mean()),
                     "loss_std": float(m.get_column("loss_per_token").std() or 0.0),
                     "em_mean": float(m.get_column("exact_match").mean()),
                     "em_std": float(m.get_column("exact_match").std() or 0.0), "seeds": m.height})
    schema = {"target_share": pl.Float64, "base_rate": pl.Float64}
    summary = pl.DataFrame(rows, schema_overrides=schema).sort("selection")
    trunc = json.loads(Path(truncation).read_text())
    lines = ["# Instruction-data selection (LESS)", ""]
    if tasks is None:
        lacking = [r for r in ("pool", "target") if trunc.get(r, {}).get("task_column") is False] or ["pool/target"]
        lines += [f"No task column ({' and '.join(lacking)} file): share from the target task cannot be computed. "
                  f"Pool {pool.height} rows.", "",
                  "| selection | kept | test loss/token (mean ± std) | exact match | seeds |",
                  "|---|---|---|---|---|"]
    else:
        lines += [f"Target task(s): {', '.join(tasks)}; pool {pool.height} rows, {base:.1%} of them from the target "
                  "task(s) (base rate).", "",
                  "| selection | kept | share from target task | test loss/token (mean ± std) | exact match "
                  "| seeds |",
                  "|---|---|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        share = "" if tasks is None else (" – |" if r["target_share"] is None else f" {r['target_share']:.1%} |")
        lines.append(f"| {r['selection']} | {r['kept']} |{share} {r['loss_mean']:.4f} ± {r['loss_std']:.4f} | "
                     f"{r['em_mean']:.3f} ± {r['em_std']:.3f} | {r['seeds']} |")
    lines += ["", "Truncation at max_length: " + "; ".join(
        f"{role} {t['truncated']}/{t['rows']} rows cut, {t['completion_removed']} left out" for role, t in trunc.items())]
    Path(md).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(csv) as tmp:
        summary.write_csv(tmp)


def export(examples: str, out: str, selection: str, fmt: str) -> None:
    """The selected pool rows as the user gave them, through the same writer as ``datasel export``."""
    from datasel.export import write_export
    from datasel.export.instruct import instruct_frame

    rows, order = instruct_frame(Path(examples).parent, selection)
    write_export(rows, fmt, selection, out, overwrite=False,
                 info={"order": order, "internal": False})
