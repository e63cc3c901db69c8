"""LESS (Xia et al. 2024) through the feature store, against a slow explicit computation.

The reference below is written from the paper and the official code's formulas, not from datasel's functions:
a per-example autograd loop; the Adam update ``m'/sqrt(v'+eps)`` built by hand from the optimizer state saved in
each checkpoint, applied to the *pool* gradients only (target gradients stay plain); cosine; the sum over
checkpoints weighted by the mean learning rate of the epoch each one ends; the mean over each target task's rows,
then the max over tasks.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from datasel.features.projectors import AdamPreconditioner
from datasel.features.steps import features_gather, features_shard
from datasel.scoring import SCORERS, ScoreInputs
from datasel.tasks import make_task
from datasel.training.proxy import save_checkpoint

os.environ.setdefault("DATASEL_PROGRESS", "0")

PROXY = {"model": {"name": "mlp", "hidden": [8]}, "lr": 0.01, "schedule": "cosine", "epochs": 4}
EPOCHS = (2, 4)
TASKS = ("alpha", "beta", "gamma")


def _examples(tiny_examples: tuple[pl.DataFrame, dict]) -> tuple[pl.DataFrame, dict]:
    """40 pool rows, 12 target rows in three tasks of unequal size (so task means differ from a plain mean)."""
    df, meta = tiny_examples
    train = df.filter(pl.col("split") == "train").sort("example_id").head(40)
    val = df.filter(pl.col("split") == "val").sort("example_id").head(12)
    task = [TASKS[0]] * 2 + [TASKS[1]] * 4 + [TASKS[2]] * 6
    small = pl.concat([train.with_columns(pl.lit(None, dtype=pl.Utf8).alias("task")),
                       val.with_columns(pl.Series("task", task))])
    return small, meta


def _train_and_checkpoint(tmp: Path, examples: pl.DataFrame, meta: dict) -> dict[int, Path]:
    """A few Adam steps per epoch; each checkpoint carries the optimizer moments, as the proxy step writes them."""
    task = make_task(examples, meta, PROXY["model"])
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=PROXY["lr"])
    tr = task.split("train")
    paths = {}
    for epoch in range(1, PROXY["epochs"] + 1):
        for s in range(0, 40, 10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(tr.inputs[s:s + 10]), tr.labels[s:s + 10]).backward()
            opt.step()
        if epoch in EPOCHS:
            paths[epoch] = tmp / f"proxy/seed0/epoch{epoch}.pt"
            paths[epoch].parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(paths[epoch], model, model_cfg=PROXY["model"], epoch=epoch, seed=0,
                            optimizer=opt.state_dict())
    return paths


def _run_features(tmp: Path, examples_path: Path, meta_path: Path, ckpts: dict[int, Path], fset: dict) -> list[Path]:
    indexes = []
    for epoch, ck in ckpts.items():
        for split, shards in (("train", 2), ("val", 1)):
            dirs = []
            for i in range(shards):
                out = tmp / f"features/g/seed0-epoch{epoch}-{split}/shard_{i}"
                features_shard(examples_path, meta_path, out, name="g", fset=fset, shards=shards, shard=i,
                               split=split, ckpt=f"seed0-epoch{epoch}", checkpoint=ck, proxy=PROXY, device="cpu")
                dirs.append(out)
            index = tmp / f"features/g/seed0-epoch{epoch}-{split}/index.json"
            features_gather(dirs, index, name="g", ckpt=f"seed0-epoch{epoch}", split=split)
            indexes.append(index)
    return indexes


def _loop_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
    return torch.stack(rows).double()


def _reference(examples: pl.DataFrame, meta: dict, ckpts: dict[int, Path]) -> np.ndarray:
    task = make_task(examples, meta, PROXY["model"])
    tr, va = task.split("train"), task.split("val")
    total = None
    for epoch, ck in ckpts.items():
        state = torch.load(ck, weights_only=False)
        model = task.build_model()
        model.load_state_dict(state["state_dict"])
        model.eval()
        opt = state["optimizer"]
        # torch numbers parameters 0..P-1 in model.parameters() order
        m = torch.cat([opt["state"][k]["exp_avg"].reshape(-1) for k in range(len(opt["state"]))]).double()
        v = torch.cat([opt["state"][k]["exp_avg_sq"].reshape(-1) for k in range(len(opt["state"]))]).double()
        b1, b2 = opt["param_groups"][0]["betas"]
        eps = opt["param_groups"][0]["eps"]
        g = _loop_grads(model, tr.inputs, tr.labels)
        pool = (b1 * m + (1 - b1) * g) / torch.sqrt(b2 * v + (1 - b2) * g * g + eps)
        target = _loop_grads(model, va.inputs, va.labels)  # plain: LESS never preconditions the target side
        cos = (pool / pool.norm(dim=1, keepdim=True)) @ (target / target.norm(dim=1, keepdim=True)).T
        # mean learning rate over the epoch ending at this checkpoint, by numerical integration of the cosine
        t = np.linspace(epoch - 1, epoch, 20001)
        lr = float(np.mean(PROXY["lr"] * 0.5 * (1 + np.cos(np.pi * t / PROXY["epochs"]))))
        total = lr * cos if total is None else total + lr * cos
    names = examples.filter(pl.col("split") == "val").sort("example_id").get_column("task").to_list()
    per_task = np.stack([total.numpy()[:, [i for i, n in enumerate(names) if n == t]].mean(1) for t in TASKS], 1)
    return per_task.max(1)


@pytest.fixture()
def less_run(tmp_path: Path, tiny_examples: tuple[pl.DataFrame, dict]) -> tuple[Path, pl.DataFrame, dict, dict]:
    examples, meta = _examples(tiny_examples)
    ex_path, meta_path = tmp_path / "examples.parquet", tmp_path / "meta.json"
    examples.write_parquet(ex_path)
    meta_path.write_text(json.dumps(meta))
    return tmp_path, examples, meta, _train_and_checkpoint(tmp_path, examples, meta)


def test_less_score_matches_explicit_reference(less_run: tuple[Path, pl.DataFrame, dict, dict]) -> None:
    tmp, examples, meta, ckpts = less_run
    fset = {"params": "all", "projector": "none", "dim": 0, "precondition": "adam", "chunk_size": 16,
            "mode": "auto"}
    indexes = _run_features(tmp, tmp / "examples.parquet", tmp / "meta.json", ckpts, fset)
    recorded = {json.loads(p.read_text())["split"]: json.loads((p.parent / "shard_0/meta.json").read_text())
                for p in indexes}
    assert recorded["train"]["precondition"] == "adam" and recorded["val"]["precondition"] == "none"
    scorer = SCORERS.get("target_alignment")({"reduce": "task_max", "weights": "lr"})
    got = scorer.score(ScoreInputs(examples=tmp / "examples.parquet", meta=meta, features=indexes))
    want = _reference(examples, meta, ckpts)
    assert got.get_column("example_id").to_list() == sorted(
        examples.filter(pl.col("split") == "train").get_column("example_id").to_list())
    # features are stored in float16: agreement to ~1e-3 of the cosine scale
    np.testing.assert_allclose(got.get_column("score").to_numpy(), want, atol=3e-3 * PROXY["lr"])
    assert set(got.get_column("best_task")) <= set(TASKS)


def test_reference_is_sensitive_to_each_less_ingredient(less_run: tuple[Path, pl.DataFrame, dict, dict]) -> None:
    """The test above would fail if preconditioning were skipped, applied to the target, or if eps sat outside."""
    tmp, examples, meta, ckpts = less_run
    want = _reference(examples, meta, ckpts)
    plain = {"params": "all", "projector": "none", "dim": 0, "precondition": "none", "chunk_size": 16}
    indexes = _run_features(tmp, tmp / "examples.parquet", tmp / "meta.json", ckpts, plain)
    got = SCORERS.get("target_alignment")({"reduce": "task_max"}).score(
        ScoreInputs(examples=tmp / "examples.parquet", meta=meta, features=indexes)).get_column("score").to_numpy()
    assert np.abs(got - want).max() > 10 * 3e-3 * PROXY["lr"]
    # eps inside the root: on a coordinate with v = 0 the update is g/sqrt((1-b2)g^2+eps), not g/(|g|sqrt(1-b2)+eps)
    pre = AdamPreconditioner(torch.zeros(1), torch.zeros(1), (0.9, 0.999), eps=1e-2)
    g = torch.tensor([[0.1]])
    assert math.isclose(pre(g).item(), 0.01 / math.sqrt(0.001 * 0.01 + 1e-2), rel_tol=1e-6)


def test_task_max_without_task_column_is_the_mean(tmp_path: Path) -> None:
    from datasel.features.store import ShardWriter, gather

    rng = np.random.default_rng(0)
    paths = []
    for split, n in (("train", 7), ("val", 5)):
        x = rng.standard_normal((n, 6)).astype(np.float32)
        w = ShardWriter(tmp_path / split / "shard_0", {"dim": 6, "seed": 0, "split": split, "checkpoint": "c"},
                        [f"{split}{i}" for i in range(n)], n)
        w.write(0, x)
        w.finalize()
        paths.append(gather([tmp_path / split / "shard_0"], tmp_path / split / "index.json"))
    inputs = ScoreInputs(examples=tmp_path / "none.parquet", meta={}, features=paths)
    a = SCORERS.get("target_alignment")({"reduce": "task_max"}).score(inputs).get_column("score").to_numpy()
    b = SCORERS.get("target_alignment")({"reduce": "mean"}).score(inputs).get_column("score").to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_task_column_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    from datasel.errors import DataError
    from datasel.scoring.target_alignment import target_groups

    ex = tmp_path / "examples.parquet"
    pl.DataFrame({"example_id": ["a", "b"], "split": ["val", "val"], "domain": ["x", "y"]}).write_parquet(ex)
    groups, tasks = target_groups(ex, ["b", "a"], None, "scoring.less")  # no `task`: falls back to `domain`
    assert tasks == ["x", "y"] and groups.tolist() == [1, 0]
    with pytest.raises(DataError) as exc:
        target_groups(ex, ["a"], "family", "scoring.less")
    assert "no column 'family'" in str(exc.value) and "scoring.less.task_column" in str(exc.value)
