"""Representation features (``kind: representation``, LESS's RDS baseline) on instruction data: the stored vectors
are the final layer's hidden state at each row's last real token, checked against one unpadded forward per row
written here; the RDS score is the mean cosine to the target rows' states (uniform over checkpoints), checked
against numpy; gradient and representation sets never mix; the kind is refused on classification data."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from lm_chain import CONFIG, run_chain

from datasel.errors import ConfigError, DataError
from datasel.features.steps import features_shard
from datasel.features.store import FeatureSet, check_same_space
from datasel.tasks.causal_lm import CausalLMTask
from datasel.training.lm import load_lm_checkpoint

os.environ.setdefault("DATASEL_PROGRESS", "0")

RDS_CONFIG = copy.deepcopy(CONFIG)
RDS_CONFIG["features"]["sets"]["rds"] = {"kind": "representation", "splits": ["train", "val"], "chunk_size": 5}
RDS_CONFIG["scoring"]["rds"] = {"method": "target_alignment", "features": "rds", "reduce": "task_max",
                                "weights": "uniform"}
RDS_CONFIG["selection"]["policies"]["rds_top"] = {"policy": "top", "score": "rds"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("rds")
    here = Path.cwd()
    os.chdir(folder)
    try:
        out = run_chain(folder, RDS_CONFIG, train_too=False)
    finally:
        os.chdir(here)
    return out | {"folder": folder}


def _states_one_by_one(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The reference: each row alone, without padding, its last position's final hidden state."""
    out = []
    with torch.no_grad():
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
            real = ids[mask.bool()].unsqueeze(0)
            out.append(model(input_ids=real, output_hidden_states=True).hidden_states[-1][0, -1].float().numpy())
    return np.stack(out)


def test_stored_states_are_each_rows_last_token_state(chain: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cfg = chain["folder"], chain["cfg"]
    monkeypatch.chdir(folder)  # the chain's model path is the workflow's relative one
    proxy = {k: v for k, v in cfg["proxy"].items() if k != "seeds"}
    examples = pl.read_parquet(folder / chain["examples"])
    meta = json.loads((folder / chain["meta"]).read_text())
    for ckpt, index in zip(chain["checkpoints"], [p for p in chain["feature_sets"]["rds"] if "-train" in str(p)]):
        policy, _ = load_lm_checkpoint(folder / ckpt, proxy["model"], "cpu")
        data = CausalLMTask(examples, meta, proxy["model"], "proxy.model", policy.tok).split("train")
        # rows of several lengths: padding that leaked into a state would show here
        assert len(set(data.inputs["attention_mask"].sum(1).tolist())) > 1
        want = _states_one_by_one(policy.module, data.inputs)
        fs = FeatureSet.open(folder / index)
        assert fs.ids() == list(data.ids) and fs.dim == want.shape[1]
        got = fs.load()
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)  # stored as float16
        assert fs.meta["projection"] == "representation" and fs.meta["precondition"] == "none"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_last_token_states_of_a_lora_model_match_each_row_alone(tmp_path: Path, arch: str) -> None:
    """Both architectures, LoRA-wrapped (B drawn non-zero so the adapters change the states), right-padded."""
    from lm_models import save_tiny_gpt2, save_tiny_llama

    from datasel.models.causal_lm import add_lora, load_causal_lm
    from datasel.tasks.causal_lm import encode

    folder = (save_tiny_llama if arch == "llama" else save_tiny_gpt2)(tmp_path / arch)
    model, tok = load_causal_lm(folder, "cpu", "float32")
    torch.manual_seed(0)
    model = add_lora(model, {"r": 4, "alpha": 8}, "lora")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    parts = [["What is 2 + 3?\n", "5"], ["Spell cat backwards.\n", "tac"], ["Hi\n", "Hello there, friend"]]
    enc = encode(tok, parts, [[False, True]] * 3, 64)[0]
    assert len(set(enc.attention_mask.sum(1).tolist())) == 3
    got = CausalLMTask.last_token_states(model.eval(), enc.inputs()).detach().numpy()
    np.testing.assert_allclose(got, _states_one_by_one(model, enc.inputs()), rtol=1e-4, atol=1e-5)


def test_rds_score_is_the_mean_cosine_to_the_target_states(chain: dict) -> None:
    folder = chain["folder"]
    total = None
    for ckpt in ("seed0-epoch1", "seed0-epoch2"):
        base = folder / "results/features/rds"
        train = FeatureSet.open(base / f"{ckpt}-train/index.json")
        target = FeatureSet.open(base / f"{ckpt}-val/index.json").load().astype(np.float64)
        x = train.load().astype(np.float64)
        cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (target / np.linalg.norm(target, axis=1,
                                                                                        keepdims=True)).T
        s = cos.mean(axis=1)  # one target task (arith): task_max is the mean over its rows; uniform weights
        total = s if total is None else total + s
        ids = train.ids()
    scores = pl.read_parquet(folder / chain["score_tables"]["rds"])
    got = dict(zip(scores.get_column("example_id").to_list(), scores.get_column("score").to_list()))
    np.testing.assert_allclose([got[i] for i in ids], total, rtol=1e-6, atol=1e-6)
    assert set(scores.get_column("checkpoints")) == {2}
    sel = pl.read_parquet(folder / chain["selections"]["rds_top_keep25"]).filter(pl.col("selected"))
    top = scores.sort("rank").head(sel.height).get_column("example_id").to_list()
    assert sorted(sel.get_column("example_id").to_list()) == sorted(top)


def test_gradient_and_representation_features_never_mix(chain: dict) -> None:
    folder = chain["folder"]
    less = FeatureSet.open(folder / "results/features/less/seed0-epoch1-val/index.json")
    rds = FeatureSet.open(folder / "results/features/rds/seed0-epoch1-val/index.json")
    with pytest.raises(DataError, match="projected differently"):
        check_same_space(less.meta, rds.meta, "f")


def test_representation_kind_is_refused_on_classification_data(chain: dict, tmp_path: Path) -> None:
    folder = chain["folder"]
    meta = json.loads((folder / chain["meta"]).read_text()) | {"kind": "vector"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="kind: representation takes a causal LM"):
        features_shard(folder / chain["examples"], tmp_path / "meta.json", tmp_path / "f/x/seed0-epoch1-train/shard_0",
                       name="rds", fset={"kind": "representation"}, shards=1, shard=0, split="train",
                       ckpt="seed0-epoch1", checkpoint=folder / chain["checkpoints"][0], proxy={}, device="cpu")


def test_an_empty_shard_records_the_state_size(chain: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cfg = chain["folder"], chain["cfg"]
    monkeypatch.chdir(folder)
    proxy = {k: v for k, v in cfg["proxy"].items() if k != "seeds"}
    out = tmp_path / "f/rds/seed0-epoch1-val/shard_0"
    features_shard(chain["examples"], chain["meta"], out, name="rds",
                   fset={"kind": "representation", "chunk_size": 4}, shards=50, shard=0, split="val",
                   ckpt="seed0-epoch1", checkpoint=chain["checkpoints"][0], proxy=proxy, device="cpu")
    meta = json.loads((out / "meta.json").read_text())
    full = FeatureSet.open(folder / "results/features/rds/seed0-epoch1-val/index.json")
    assert meta["rows"] == 0 and meta["dim"] == full.dim
