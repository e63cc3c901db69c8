"""Proxy runs: K models that differ in initialization and data order, checkpointed at the configured epochs.

Scores are means over these runs (Paul et al. 2021): one run's score is noisy, the mean over K is not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn

from datasel.data.tensors import load_split
from datasel.errors import ConfigError, DataError
from datasel.models import build_model
from datasel.runtime import seed_everything
from datasel.store import read_table, save_checkpoint_file
from datasel.training.classify import evaluate, train_classifier

log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, model: nn.Module, **info: Any) -> None:
    save_checkpoint_file({"state_dict": model.state_dict(), **info}, path)  # verified complete before the rename


def load_checkpoint(path: str | Path, meta: dict[str, Any], model_cfg: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the checkpoint's model and load it; with ``model_cfg``, refuse a checkpoint of another model."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(f"cannot load checkpoint ({type(exc).__name__})", file=path,
                        fix="delete it and rerun the proxy step") from None
    if model_cfg is not None and ckpt.get("model_cfg") != model_cfg:
        raise DataError(f"checkpoint was made by model {ckpt.get('model_cfg')}, config asks for {model_cfg}",
                        file=path, field="proxy.model", fix="rerun the proxy step (delete results/proxy)")
    model = build_model(ckpt["model_cfg"], meta)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise DataError(f"checkpoint does not fit the model ({str(exc).splitlines()[0][:160]})", file=path,
                        fix="rerun the proxy step") from None
    model.eval()
    return model


def run_proxy(smk: Any) -> None:
    """Snakemake step: train proxy seed ``wildcards.seed`` and write one checkpoint per configured epoch."""
    cfg = smk.params.proxy
    seed = int(smk.wildcards.seed)
    meta = json.loads(Path(smk.input.meta).read_text())
    examples = read_table(smk.input.examples, "examples")
    x, y, _ = load_split(examples, "train")
    xv, yv, _ = load_split(examples, "val")
    seed_everything(1000 + seed)
    model = build_model(cfg["model"], meta)
    epochs = tuple(sorted(set(int(e) for e in cfg["checkpoints"])))
    if epochs and epochs[-1] > int(cfg["epochs"]):
        raise ConfigError(f"checkpoint epoch {epochs[-1]} is after the last epoch ({cfg['epochs']})",
                          field="proxy.checkpoints", fix="raise proxy.epochs or drop that checkpoint")
    train_cfg = {**cfg, "budget": {"unit": "epochs", "value": int(cfg["epochs"])}}
    outdir = Path(smk.output[0]).parent

    def on_checkpoint(epoch: int, m: nn.Module, opt: torch.optim.Optimizer) -> None:
        stats = evaluate(m, xv, yv)
        log.info("proxy seed %d epoch %d: val accuracy %.4f", seed, epoch, stats["accuracy"])
        # the optimizer moments let the feature store precondition gradients as LESS does (features precondition)
        save_checkpoint(outdir / f"epoch{epoch}.pt", m, model_cfg=cfg["model"], epoch=epoch, seed=seed, val=stats,
                        optimizer=opt.state_dict())

    train_classifier(model, x, y, train_cfg, seed=1000 + seed, checkpoint_epochs=epochs, on_checkpoint=on_checkpoint,
                     desc=f"proxy seed {seed}")
    missing = [str(p) for p in smk.output if not Path(p).exists()]
    if missing:
        raise DataError(f"checkpoints {missing} were not written", field="proxy.checkpoints",
                        fix="checkpoint epochs must not exceed proxy.epochs")
