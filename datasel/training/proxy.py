"""Proxy runs: K models that differ in initialization and data order, checkpointed at the configured epochs.

Scores are means over these runs (Paul et al. 2021): one run's score is noisy, the mean over K is not.
Everything data-specific (inputs, model, loss) comes from the task (:mod:`datasel.tasks`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasel.errors import ConfigError, DataError
from datasel.models import build_model
from datasel.runtime import pick_device, seed_everything
from datasel.store import read_table, save_checkpoint_file
from datasel.tasks import Task, make_task
from datasel.training.classify import evaluate, train_classifier
from datasel.training.dynamics import EpochRecorder

log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, model: nn.Module, **info: Any) -> None:
    """Write the model's state (only ``checkpoint_keys()`` when the model names them: frozen pretrained weights are
    restored from their folder) with ``info``, atomically."""
    state = model.state_dict()
    keys = getattr(model, "checkpoint_keys", None)
    partial = keys is not None
    if partial:
        wanted = keys()
        state = {k: v for k, v in state.items() if k in wanted}
    state = {k: v.detach().cpu() for k, v in state.items()}
    save_checkpoint_file({"state_dict": state, "partial": partial, **info}, path)  # verified before the rename


def checkpoint_model_cfg(path: str | Path) -> dict[str, Any]:
    return dict(_read(path).get("model_cfg") or {})


def _read(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(f"cannot load checkpoint ({type(exc).__name__})", file=path,
                        fix="delete it and rerun the proxy step") from None


def load_checkpoint(path: str | Path, meta: dict[str, Any], model_cfg: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the checkpoint's model and load it; with ``model_cfg``, refuse a checkpoint of another model."""
    ckpt = _read(path)
    if model_cfg is not None and ckpt.get("model_cfg") != model_cfg:
        raise DataError(f"checkpoint was made by model {ckpt.get('model_cfg')}, config asks for {model_cfg}",
                        file=path, field="proxy.model", fix="rerun the proxy step (delete results/proxy)")
    model = build_model(ckpt["model_cfg"], meta, where="proxy.model")
    try:
        if ckpt.get("partial"):
            missing = set(ckpt["state_dict"]) - set(model.state_dict())
            wanted = model.checkpoint_keys() if hasattr(model, "checkpoint_keys") else set()
            lacking = wanted - set(ckpt["state_dict"])
            if missing or lacking:
                raise RuntimeError(f"keys {sorted(missing or lacking)[:3]} do not match")
            model.load_state_dict(ckpt["state_dict"], strict=False)
        else:
            model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise DataError(f"checkpoint does not fit the model ({str(exc).splitlines()[0][:160]})", file=path,
                        fix="rerun the proxy step") from None
    model.eval()
    return model


def task_for_run(examples_path: str | Path, meta: dict[str, Any], model_cfg: dict[str, Any],
                 where: str = "proxy.model") -> Task:
    return make_task(read_table(examples_path, "examples"), meta, model_cfg, where)


def run_proxy(examples: str | Path, meta: str | Path, outputs: Sequence[str | Path], cfg: dict[str, Any], seed: int,
              device: str = "auto") -> None:
    """Train proxy ``seed`` with recipe ``cfg`` and write one checkpoint per configured epoch and the per-epoch
    table, into the folder of ``outputs`` (the checkpoints and ``epochs.parquet``, all checked for at the end)."""
    seed = int(seed)
    meta_dict = json.loads(Path(meta).read_text())
    if meta_dict.get("kind") == "causal_lm":  # LESS's LoRA warm-up (datasel.training.lm)
        from datasel.training.lm import run_lm_proxy

        return run_lm_proxy(examples, meta, outputs, cfg, seed, device)
    if float(cfg.get("fraction", 1.0)) < 1.0:
        raise ConfigError(f"proxy.fraction {cfg['fraction']} applies to causal-LM data only (LESS's warm-up); a "
                          "classifier's proxies train on the whole training split, which their per-example scores "
                          "need", field="proxy.fraction", fix="remove proxy.fraction")
    epochs = tuple(sorted(set(int(e) for e in cfg["checkpoints"])))
    if epochs and epochs[-1] > int(cfg["epochs"]):
        raise ConfigError(f"checkpoint epoch {epochs[-1]} is after the last epoch ({cfg['epochs']})",
                          field="proxy.checkpoints", fix="raise proxy.epochs or drop that checkpoint")
    task = task_for_run(examples, meta_dict, cfg["model"])
    train, val = task.split("train"), task.split("val")
    seed_everything(1000 + seed)
    model = task.build_model("proxy.model").to(pick_device(device))
    train_cfg = {**cfg, "budget": {"unit": "epochs", "value": int(cfg["epochs"])}}
    outdir = Path(outputs[0]).parent

    def on_checkpoint(epoch: int, m: nn.Module, opt: torch.optim.Optimizer) -> None:
        stats = evaluate(m, val.inputs, val.labels, loss_fn=task.per_example_loss)
        log.info("proxy seed %d epoch %d: val accuracy %.4f", seed, epoch, stats["accuracy"])
        # the optimizer moments let the feature store precondition gradients as LESS does (features precondition)
        save_checkpoint(outdir / f"epoch{epoch}.pt", m, model_cfg=cfg["model"], epoch=epoch, seed=seed, val=stats,
                        optimizer=opt.state_dict())
        m.train()

    recorder = EpochRecorder(len(train), int(cfg["epochs"]))  # per-epoch dynamics: forgetting events and AUM
    train_classifier(model, train.inputs, train.labels, train_cfg, seed=1000 + seed, checkpoint_epochs=epochs,
                     on_checkpoint=on_checkpoint, desc=f"proxy seed {seed}", loss_fn=task.per_example_loss,
                     on_batch=recorder)
    recorder.write(outdir / "epochs.parquet", list(train.ids), seed)
    missing = [str(p) for p in outputs if not Path(p).exists()]
    if missing:
        raise DataError(f"checkpoints {missing} were not written", field="proxy.checkpoints",
                        fix="checkpoint epochs must not exceed proxy.epochs")
