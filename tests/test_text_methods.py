"""Text data with a Hugging Face classifier through the methods beyond EL2N/GraNd: target alignment on proxy
gradient features, Alchemist, k-center selection and curricula (every method works on text), on a tiny
random-init BERT. Each test checks a property of the method, not only that it ran."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from conftest import snakemake, write_config
from text_fixtures import corpus, tiny_bert

LORA = {"r": 2, "alpha": 4, "target_modules": ["query", "value"]}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    return tiny_bert(folder, corpus().get_column("sentence").to_list())


@pytest.fixture(scope="module")
def text_examples(tmp_path_factory):
    from datasel.data.prepare import build_examples

    path = tmp_path_factory.mktemp("data") / "t.jsonl"
    corpus(20).write_ndjson(path)
    return build_examples({"source": "files", "path": str(path), "text_column": "sentence", "label_column": "topic",
                           "splits": {"val": 0.2, "test": 0.1}})


def _trained(examples, meta, bert, steps: int = 6):
    from datasel.runtime import seed_everything
    from datasel.tasks import make_task
    from datasel.training.classify import train_classifier

    task = make_task(examples, meta, {"name": "hf_classifier", "path": str(bert), "max_length": 12, "lora": LORA})
    seed_everything(3)
    model = task.build_model()
    tr = task.split("train")
    train_classifier(model, tr.inputs, tr.labels, {"batch_size": 8, "lr": 0.01, "budget": {"unit": "steps",
                                                                                          "value": steps}}, seed=3)
    return task, model.eval()


def test_penultimate_is_the_classifier_input_of_a_text_model(text_examples, bert):
    """Alchemist's `penultimate` block on text is BERT's pooled [CLS] vector, the input of the head."""
    from datasel.tasks.base import penultimate

    task, model = _trained(*text_examples, bert, steps=2)
    x = task.split("train").inputs
    got = penultimate(model, x, chunk_size=7)  # chunking must not change rows
    with torch.no_grad():
        pooled = model.hf.bert(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).pooler_output
    assert got.shape == (len(task.split("train")), 32)
    assert torch.allclose(got, pooled, atol=1e-5)


def test_alchemist_rates_text_examples_deterministically_and_keeps_the_backbone(text_examples, bert):
    from datasel.scoring.alchemist import alchemist_run

    task, model = _trained(*text_examples, bert)
    tr, va = task.split("train"), task.split("val")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = {"steps": 8, "warmup_steps": 2, "batch_size": 8, "val_batch_size": 4, "proxy_lr": 0.05,
           "rater_features": ["penultimate", "label", "grad", "loss"], "proj_dim": 8, "grad_params": "lora"}
    runs = [alchemist_run(model, tr.inputs, tr.labels, va.inputs, va.labels, task.num_classes, cfg, seed=1,
                          device="cpu") for _ in range(2)]
    (r1, hist, _), (r2, _, _) = runs
    assert r1.shape == (len(tr),) and torch.isfinite(r1).all() and r1.std() > 0
    assert torch.equal(r1, r2)  # CPU, same seed: the same ratings bit for bit
    assert hist.rows[-1]["step"] == 10 and np.isfinite(hist.rows[-1]["val_loss_theta"])
    # the bilevel proxies are copies: the scored checkpoint (and its frozen backbone) is left as it was
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def _lora_grad(model, task, split: str, i: int) -> torch.Tensor:
    """One example's loss gradient over the LoRA weights, by plain autograd (the reference for the feature store)."""
    from datasel.tasks import forward, take

    data = task.split(split)
    params = [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    loss = task.per_example_loss(forward(model, take(data.inputs, slice(i, i + 1))), data.labels[i : i + 1]).sum()
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


@pytest.mark.slow
def test_text_features_alignment_kcenter_alchemist_and_curriculum_workflow(tmp_path, bert):
    from datasel.features.index import unit_rows
    from datasel.features.store import FeatureSet
    from datasel.training.proxy import load_checkpoint

    corpus(20).write_ndjson(tmp_path / "topics.jsonl")
    model = {"name": "hf_classifier", "path": str(bert), "max_length": 12}
    cfg = {
        "stages": ["selection"],
        "data": {"source": "files", "path": "topics.jsonl", "text_column": "sentence", "label_column": "topic",
                 "splits": {"val": 0.2, "test": 0.1}},
        "proxy": {"seeds": 1, "model": {**model, "lora": LORA}, "epochs": 1, "checkpoints": [1], "batch_size": 8,
                  "lr": 0.01},
        # raw LoRA gradients (no projection), so the stored features can be checked against autograd
        "features": {"shards": 1, "sets": {"g": {"model": "proxy", "params": "lora", "projector": "none", "dim": 0,
                                                "splits": ["train", "val"], "chunk_size": 8}}},
        "scoring": {"el2n": {"method": "el2n", "epoch": 1},
                    "align": {"method": "target_alignment", "features": "g", "reduce": "max", "weights": "uniform"},
                    "alchemist": {"method": "alchemist", "epoch": 1, "steps": 6, "warmup_steps": 2, "batch_size": 8,
                                  "val_batch_size": 4, "rater_features": ["penultimate", "label", "loss"]}},
        "selection": {"fractions": [0.5], "policies": {
            "cover": {"policy": "kcenter", "features": "g"},
            # the global top half (class-stratified selection is the default, tested in test_balance.py)
            "alch_top": {"policy": "top", "score": "alchemist", "stratify": False},
            "el2n_cl": {"policy": "top", "score": "el2n",
                        "curriculum": {"order": "easy_to_hard", "score": "el2n", "pacing": "root"}}}},
        "training": {"model": {**model, "lora": LORA}, "seeds": [0], "budget": {"unit": "steps", "value": 6},
                     "batch_size": 8, "lr": 0.01},
    }
    write_config(tmp_path, cfg)
    res = tmp_path / "results"
    snakemake(tmp_path, *(f"results/selections/{p}_keep50.parquet" for p in ("cover", "alch_top", "el2n_cl")),
              "results/scores/align.parquet", "results/metrics/train/el2n_cl_keep50/seed0.parquet")
    examples = pl.read_parquet(res / "examples" / "examples.parquet")
    meta = json.loads((res / "examples" / "meta.json").read_text())
    train_ids = sorted(examples.filter(pl.col("split") == "train").get_column("example_id").to_list())
    n_keep = round(0.5 * len(train_ids))

    # target alignment = max over validation rows of cos(train gradient, val gradient), against autograd on 3 rows
    from datasel.tasks import make_task

    task = make_task(examples, meta, cfg["proxy"]["model"])
    proxy = load_checkpoint(res / "proxy" / "seed0" / "epoch1.pt", meta, cfg["proxy"]["model"]).eval()
    val = torch.stack([_lora_grad(proxy, task, "val", j) for j in range(len(task.split("val")))])
    val = val / val.norm(dim=1, keepdim=True)
    align = pl.read_parquet(res / "scores" / "align.parquet")
    got = dict(zip(align.get_column("example_id"), align.get_column("score")))
    assert sorted(got) == train_ids
    for i in (0, 7, len(train_ids) - 1):
        g = _lora_grad(proxy, task, "train", i)
        want = float((val @ (g / g.norm())).max())
        assert got[task.split("train").ids[i]] == pytest.approx(want, abs=3e-3)  # features are stored as float16

    # k-center: a valid subset of the right size, the farthest-first picks (from the first pool row) on the unit
    # gradient features of the text proxy, recomputed here with plain distances
    fs = FeatureSet.open(res / "features" / "g" / "seed0-epoch1-train" / "index.json")
    assert fs.ids() == train_ids
    feats = unit_rows(fs.load()).astype(np.float64)
    cover = pl.read_parquet(res / "selections" / "cover_keep50.parquet").filter(pl.col("selected"))
    assert cover.height == n_keep and set(cover.get_column("example_id")) <= set(train_ids)
    picks, dist = [0], np.full(len(feats), np.inf)
    while len(picks) < n_keep:
        dist = np.minimum(dist, ((feats - feats[picks[-1]]) ** 2).sum(axis=1))
        dist[picks] = -1.0
        picks.append(int(np.argmax(dist)))
    assert set(cover.get_column("example_id")) == {train_ids[r] for r in picks}

    # Alchemist on text: one finite rating per training example; top keeps the highest-rated half
    alch = pl.read_parquet(res / "scores" / "alchemist.parquet")
    assert sorted(alch.get_column("example_id")) == train_ids and alch.get_column("score").is_finite().all()
    top = set(pl.read_parquet(res / "selections" / "alch_top_keep50.parquet").filter(pl.col("selected"))
              .get_column("example_id"))
    assert top == set(alch.sort(["score", "example_id"], descending=[True, False]).head(n_keep)
                      .get_column("example_id"))

    # curriculum: positions follow EL2N from easy (low) to hard, and the paced run trained on text
    cl = pl.read_parquet(res / "selections" / "el2n_cl_keep50.parquet").filter(pl.col("selected"))
    el2n = pl.read_parquet(res / "scores" / "el2n.parquet").select("example_id", "score")
    ordered = cl.join(el2n, on="example_id").sort("position")
    assert ordered.get_column("position").to_list() == list(range(n_keep))
    assert (ordered.get_column("score").diff().drop_nulls() >= 0).all()
    metrics = pl.read_parquet(res / "metrics" / "train" / "el2n_cl_keep50" / "seed0.parquet")
    acc = metrics.filter((pl.col("split") == "test") & (pl.col("metric") == "accuracy")).get_column("value")
    assert acc.len() == 1 and 0.0 <= acc[0] <= 1.0



def test_cpu_forward_is_float32_without_autocast(text_examples, bert):
    """Mixed precision is for CUDA only: on CPU the text model's logits are plain float32, the same as a direct call."""
    import contextlib

    from datasel.tasks import forward
    from datasel.training.classify import autocast, logits_of

    assert isinstance(autocast(torch.device("cpu")), contextlib.nullcontext)
    task, model = _trained(*text_examples, bert, steps=1)
    x = task.split("val").inputs
    got = logits_of(model, x, batch_size=3)
    with torch.no_grad():
        want = forward(model, x)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)
