"""The selection chain's proxy and target runs on causal-LM data (``data.source: instruct``): LoRA on the chain's
causal LM, through the one training loop (:mod:`datasel.training.loop`) with the causal-LM task's batches and
completion-only loss (:mod:`datasel.tasks.causal_lm`).

- The proxy is LESS's warm-up: LoRA on a random ``proxy.fraction`` of the pool for ``proxy.epochs`` epochs, a
  checkpoint after each epoch in ``proxy.checkpoints`` holding the adapters, the optimizer's moments (the feature
  store's Adam preconditioning) and the epoch's mean learning rate (LESS's checkpoint weight).
- A target run fine-tunes fresh adapters on one selection and measures, on the target (``val``) and ``test``
  splits, the loss per completion token and the exact match of greedy answers (the report's accuracy).

The optimizer and schedule are the config section's (the instruct template sets AdamW with a linear schedule and a
short warm-up, as LESS trains); gradients are clipped at norm 1.0 unless ``max_grad_norm`` says otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from datasel.errors import ConfigError, DataError
from datasel.runtime import pick_device, rng_for, seed_everything
from datasel.store import PathLike, read_table, save_checkpoint_file, write_table
from datasel.tasks.base import Split
from datasel.tasks.causal_lm import CausalLMTask, completion_loss, lm_batch, token_logprobs
from datasel.training.classify import steps_per_epoch, total_steps
from datasel.training.loop import LoopSettings, LoopState, lr_factor, model_device, train_loop

log = logging.getLogger(__name__)

LM_OPTIM = {"max_grad_norm": 1.0}


def lm_policy(model_cfg: dict[str, Any], seed: int, device: str, where: str, max_new_tokens: int = 32) -> Any:
    """The chain's LM with fresh LoRA adapters drawn from ``seed``, wrapped for generation."""
    from datasel.instruct.model import load_lm
    from datasel.models.lm import lm_settings, model_source

    settings = lm_settings(model_cfg)  # LoRA r 8, alpha 16 on the architecture's targets unless given
    seed_everything(seed)  # LoRA's A matrices are drawn at wrapping time
    return load_lm(model_source(settings, where), settings["lora"], pick_device(device),
                   str(settings.get("dtype") or "auto"), max_new_tokens, where=where)


def lm_rows(table: pl.DataFrame, meta: dict[str, Any], model_cfg: dict[str, Any], tokenizer: Any, where: str
            ) -> Split:
    """Rows of the examples table as the causal-LM task batches them, in the table's order."""
    return CausalLMTask(table, meta, model_cfg, where, tokenizer).rows(table)


def train_lora(model: nn.Module, data: Split, cfg: dict[str, Any], steps: int, seed: int,
               on_epoch: Callable[[int, float, torch.optim.Optimizer], None] | None = None,
               desc: str = "lora", where: str = "training") -> list[dict[str, float]]:
    """Train the trainable (LoRA) parameters of ``model`` on a causal-LM split for ``steps`` optimizer steps of
    ``cfg['batch_size']`` rows (epochs repeat until then); ``on_epoch(epoch, mean_lr, optimizer)`` runs after each
    epoch. Returns the per-epoch mean loss and learning rate."""
    device = model_device(model)
    n, bs = len(data), int(cfg["batch_size"])
    per_epoch = steps_per_epoch(n, bs)
    settings = LoopSettings.from_cfg(cfg, steps, where=where, **LM_OPTIM)

    def batches(_epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=gen)
        return iter([order[s:s + bs] for s in range(0, n, bs)])

    def loss(idx: torch.Tensor) -> torch.Tensor:
        inputs, labels = lm_batch(data.inputs, data.labels, idx, device)
        return completion_loss(model(**inputs), labels)

    history: list[dict[str, float]] = []

    def epoch_done(state: LoopState) -> None:
        if state.epoch == 0:
            return
        done = range(max(0, state.step - per_epoch), state.step)
        mean_lr = float(np.mean([settings.lr * lr_factor(s, settings) for s in done]))
        losses = [float(v) for v in state.losses[-per_epoch:]]
        history.append({"epoch": state.epoch, "loss": float(np.mean(losses)), "lr": mean_lr})
        log.info("%s epoch %d: loss %.4f, mean lr %.3g", desc, state.epoch, history[-1]["loss"], mean_lr)
        if on_epoch is not None:
            model.eval()
            on_epoch(state.epoch, mean_lr, state.optimizer)
            model.train()

    train_loop(model, loss, batches, settings, seed, desc=desc, on_epoch=epoch_done)
    return history


@torch.no_grad()
def evaluate(policy: Any, data: Split, prompts: list[str], completions: list[str], batch_size: int = 32
             ) -> dict[str, Any]:
    """Loss per completion token (summed NLL / tokens) and exact match of greedy completions (whitespace-stripped)."""
    model = policy.module
    model.eval()
    total, tokens = 0.0, 0
    for s in range(0, len(data), batch_size):
        inputs, labels = lm_batch(data.inputs, data.labels, torch.arange(s, min(s + batch_size, len(data))),
                                  policy.device)
        logp, mask = token_logprobs(model(**inputs).logits, labels)
        total -= float((logp * mask).sum())
        tokens += int(mask.sum())
    hits, outputs = 0, []
    for s in range(0, len(prompts), batch_size):
        got = policy.sample(prompts[s:s + batch_size], greedy=True).texts
        outputs.extend(got)
        hits += sum(g.strip() == c.strip() for g, c in zip(got, completions[s:s + batch_size]))
    return {"loss_per_token": total / max(1, tokens), "tokens": tokens, "exact_match": hits / max(1, len(prompts)),
            "examples": len(prompts), "outputs": outputs}


def run_lm_proxy(examples: PathLike, meta: PathLike, outputs: Sequence[PathLike], cfg: dict[str, Any], seed: int,
                 device: str = "auto") -> None:
    """LESS's warm-up as proxy ``seed``: LoRA on a random ``cfg['fraction']`` of the pool, a checkpoint after each
    epoch of ``cfg['checkpoints']`` (``outputs``: those checkpoints, then the table of the rows it trained on)."""
    from datasel.instruct.model import adapter_state

    seed = int(seed)
    meta_dict = json.loads(Path(meta).read_text())
    epochs = sorted(set(int(e) for e in cfg["checkpoints"]))
    if epochs[0] < 1 or epochs[-1] > int(cfg["epochs"]):
        raise ConfigError(f"checkpoints {epochs} must lie in 1..{cfg['epochs']} (the warm-up's epochs; a causal LM's "
                          "adapters at epoch 0 carry no gradient signal worth a feature)", field="proxy.checkpoints",
                          fix=f"use epochs between 1 and proxy.epochs ({cfg['epochs']})")
    table = read_table(examples, "examples")
    pool = table.filter(pl.col("split") == "train").sort("example_id")
    n = max(1, int(round(float(cfg.get("fraction", 1.0)) * pool.height)))
    pick = np.sort(rng_for(seed, "proxy:warmup").choice(pool.height, size=n, replace=False))
    picked = pool[pick]
    outdir = Path(outputs[0]).parent
    policy = lm_policy(cfg["model"], 1000 + seed, device, "proxy.model")
    data = lm_rows(picked, meta_dict, cfg["model"], policy.tok, "proxy.model")

    def save(epoch: int, mean_lr: float, opt: torch.optim.Optimizer) -> None:
        if epoch in epochs:
            save_checkpoint_file({"adapter": adapter_state(policy.module), "optimizer": opt.state_dict(), "epoch": epoch,
                                  "lr": mean_lr, "seed": seed, "model_cfg": cfg["model"]}, outdir / f"epoch{epoch}.pt")

    steps = int(cfg["epochs"]) * steps_per_epoch(n, int(cfg["batch_size"]))
    train_lora(policy.module, data, cfg, steps, 1000 + seed, on_epoch=save, desc=f"warm-up seed {seed}",
               where="proxy")
    write_table(picked.select("example_id", "split", "label", "label_orig", "is_noisy", "source",
                              "source_row").sort("example_id"), outdir / "sample.parquet", "examples")
    missing = [str(p) for p in outputs if not Path(p).exists()]
    if missing:
        raise DataError(f"checkpoints {missing} were not written", field="proxy.checkpoints",
                        fix="checkpoint epochs must not exceed proxy.epochs")


def load_lm_checkpoint(path: PathLike, model_cfg: dict[str, Any], device: str, where: str = "proxy.model") -> Any:
    """The chain's LM with a warm-up checkpoint's adapters; refuses a checkpoint of another model."""
    from datasel.instruct.model import load_adapter

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("model_cfg") != model_cfg:
        raise DataError(f"checkpoint was made by model {ckpt.get('model_cfg')}, the config asks for {model_cfg}",
                        file=path, field=where, fix="rerun the proxy step (delete results/proxy)")
    policy = lm_policy(model_cfg, 0, device, where)
    load_adapter(policy.module, ckpt["adapter"], path)
    return policy, ckpt


def train_lm(examples: PathLike, meta: PathLike, selection: pl.DataFrame, out: PathLike, cfg: dict[str, Any],
             seed: int, name: str, info: dict[str, Any], device: str = "auto") -> None:
    """Fine-tune fresh adapters on the selected rows (pool rows, or the target rows for the target-alone baseline)
    with seed ``seed``; write the metrics of the ``val`` (target) and ``test`` splits: ``accuracy`` (exact match of
    greedy answers) and ``loss`` (per completion token)."""
    meta_dict = json.loads(Path(meta).read_text())
    table = read_table(examples, "examples")
    chosen = selection.get_column("example_id")
    rows = table.filter(pl.col("example_id").is_in(chosen.implode())).sort("example_id")
    if rows.height != chosen.len():
        raise DataError(f"{chosen.len() - rows.height} selected ids are not in the examples table", field="example_id",
                        fix="the selection is stale: delete it and rerun the select step")
    policy = lm_policy(cfg["model"], seed, device, "training.model")
    data = lm_rows(rows, meta_dict, cfg["model"], policy.tok, "training.model")
    steps = total_steps(rows.height, cfg)
    train_lora(policy.module, data, cfg, steps, seed, desc=f"train {name} seed {seed}")
    gen = cfg.get("generation") or {}
    out_rows = []
    for split in ("val", "test"):
        part = table.filter(pl.col("split") == split).sort("example_id")
        if part.height == 0:
            continue
        comps = part.get_column("completion").to_list()
        longest = max(len(policy.tok(c, add_special_tokens=False)["input_ids"]) for c in comps) + 1
        policy.max_new_tokens = int(gen.get("max_new_tokens") or longest)
        m = evaluate(policy, lm_rows(part, meta_dict, cfg["model"], policy.tok, "training.model"),
                     part.get_column("prompt").to_list(), comps, int(gen.get("batch_size", 32)))
        out_rows += [{"split": split, "metric": "accuracy", "value": float(m["exact_match"])},
                     {"split": split, "metric": "loss", "value": float(m["loss_per_token"])}]
        log.info("%s seed %d, %s: exact match %.3f, loss/token %.4f", name, seed, split, m["exact_match"],
                 m["loss_per_token"])
    out_rows += [{"split": "train", "metric": "steps", "value": float(steps)},
                 {"split": "train", "metric": "examples", "value": float(rows.height)}]
    df = pl.DataFrame(out_rows).with_columns(
        pl.lit(name).alias("selection"), pl.lit(info["method"]).alias("method"),
        pl.lit(float(info["fraction"])).alias("fraction"), pl.lit(int(seed), dtype=pl.Int64).alias("seed"))
    write_table(df, out, "metrics")

