"""Per-sample gradients: vmap and the loop against the definition, chunking, parameter sets, LoRA, shard bounds;
a shard step resumed against a retrained checkpoint."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import per_example_reference

from datasel.errors import ConfigError
from datasel.features.compute import cross_entropy, shard_bounds
from datasel.features.grads import PerSampleGrads, per_sample_grad_norms, per_sample_grads, select_params
from datasel.models import build_model

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)
META = {"input_dim": 40, "num_classes": 10}


def _data(n: int = 24, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 40, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
def test_vmap_matches_loop_float64(name: str) -> None:
    torch.manual_seed(0)
    model = build_model({"name": name}, META).double().eval()
    x, y = _data()
    names = list(select_params(model, "all"))
    ref = per_example_reference(model, x, y, names)
    for mode in ("vmap", "loop"):
        got = per_sample_grads(model, x, y, cross_entropy, "all", chunk_size=7, mode=mode)
        rel = ((got - ref).norm() / ref.norm()).item()
        assert rel < 1e-4, (mode, rel)
    # the gradients are real: they differ between examples and are not all zero
    assert ref.norm(dim=1).min() > 0 and (ref[0] - ref[1]).abs().max() > 1e-6


def test_chunking_does_not_change_results() -> None:
    torch.manual_seed(1)
    model = build_model({"name": "mlp"}, META).double().eval()
    x, y = _data(30)
    a = per_sample_grads(model, x, y, cross_entropy, "all", chunk_size=30, mode="vmap")
    b = per_sample_grads(model, x, y, cross_entropy, "all", chunk_size=4, mode="vmap")
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_norms_match_flattened_grads() -> None:
    torch.manual_seed(2)
    model = build_model({"name": "mlp"}, META).double().eval()
    x, y = _data(10)
    g = per_sample_grads(model, x, y, cross_entropy, "last_layer", 3)
    n = per_sample_grad_norms(model, x, y, cross_entropy, "last_layer", 3)
    assert torch.allclose(g.norm(dim=1), n)
    # last layer of the MLP: head.weight (10x100) + head.bias (10)
    assert g.shape == (10, 1010)


def test_parameter_sets_and_patterns() -> None:
    model = build_model({"name": "mlp", "hidden": [8]}, META)
    assert list(select_params(model, "last_layer")) == ["head.weight", "head.bias"]
    assert list(select_params(model, ["body.*.bias"])) == ["body.0.bias"]
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        select_params(model, "lora")
    with pytest.raises(ConfigError):
        PerSampleGrads(model, cross_entropy, "all", mode="fast")


def test_lora_parameters_with_peft() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(4)
    base = build_model({"name": "mlp", "hidden": [16]}, META).double()
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["body.0"], lora_dropout=0.0))
    model.eval()
    params = select_params(model, "lora")
    assert params and all("lora_" in n for n in params)
    x, y = _data(8)
    a = per_sample_grads(model, x, y, cross_entropy, "lora", 3, mode="vmap")
    b = per_sample_grads(model, x, y, cross_entropy, "lora", 3, mode="loop")
    assert ((a - b).norm() / b.norm()).item() < 1e-4
    assert a.shape[1] == sum(p.numel() for p in params.values())


def test_shard_bounds_cover_rows_once() -> None:
    for rows, shards in [(10, 3), (7, 7), (100, 4), (5, 8)]:
        covered = [r for i in range(shards) for r in range(*shard_bounds(rows, shards, i))]
        assert covered == list(range(rows))


PROXY = {"model": {"name": "mlp", "hidden": [8]}, "lr": 0.1, "epochs": 1}
FSET = {"params": "all", "projection": "dense", "dim": 16, "seed": 3, "chunk_size": 8}


def _shard_step(root: Path, checkpoint: Path, featurize_hook=None):
    """One run of the features_shard step over the train split; returns the shard folder."""
    from datasel.features import steps

    out = root / "features/g/seed0-epoch1-train/shard_0"

    def run() -> None:
        steps.features_shard(root.parent / "examples.parquet", root.parent / "meta.json", out, name="g", fset=FSET,
                             shards=1, shard=0, split="train", ckpt="seed0-epoch1", checkpoint=checkpoint,
                             proxy=PROXY, device="cpu")

    if featurize_hook is None:
        run()
    else:
        real = steps.featurize
        steps.featurize = lambda *a, **kw: real(*a, **kw, on_chunk=featurize_hook)
        try:
            run()
        finally:
            steps.featurize = real
    return out


def _proxy_checkpoint(path: Path, examples, meta: dict, seed: int) -> Path:
    from datasel.tasks import make_task
    from datasel.training.proxy import save_checkpoint

    torch.manual_seed(seed)
    model = make_task(examples, meta, PROXY["model"]).build_model()
    save_checkpoint(path, model, model_cfg=PROXY["model"], epoch=1, seed=0)
    return path


def test_resumed_shard_restarts_when_the_checkpoint_changed(tmp_path: Path, tiny_examples, caplog) -> None:
    """A shard killed halfway and resumed after its proxy was retrained under the same name must not mix the
    features of two models: it starts over (and says so), ending equal to a fresh run with the new weights."""
    examples, meta = tiny_examples
    examples.write_parquet(tmp_path / "examples.parquet")
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    n_chunks = -(-examples.filter(pl.col("split") == "train").height // FSET["chunk_size"])
    assert n_chunks >= 4
    ckpt = _proxy_checkpoint(tmp_path / "ckpt.pt", examples, meta, seed=0)

    def kill_after(k: int):
        seen = []

        def hook(s: int, e: int) -> None:
            seen.append(s)
            if len(seen) == k:
                raise KeyboardInterrupt  # the job is killed after k whole chunks
        return hook

    def killed_run(root: Path) -> None:
        with pytest.raises(KeyboardInterrupt):
            _shard_step(root, ckpt, kill_after(2))

    # same checkpoint: the resume computes only the chunks the killed run had not finished
    killed_run(tmp_path / "same")
    computed: list[int] = []
    out = _shard_step(tmp_path / "same", ckpt, lambda s, e: computed.append(s))
    assert len(computed) == n_chunks - 2 and 0 not in computed
    old_bytes = (out / "features.f16").read_bytes()

    # retrained under the same name: other weights in the same file; the resume starts over
    killed_run(tmp_path / "changed")
    old_sha = json.loads(next((tmp_path / "changed/features/.work").rglob("meta.json")).read_text())["checkpoint_sha"]
    _proxy_checkpoint(ckpt, examples, meta, seed=1)
    computed.clear()
    with caplog.at_level(logging.WARNING, logger="datasel.features.store"):
        out = _shard_step(tmp_path / "changed", ckpt, lambda s, e: computed.append(s))
    assert sorted(computed) == [i * FSET["chunk_size"] for i in range(n_chunks)]  # every row recomputed
    new_sha = json.loads((out / "meta.json").read_text())["checkpoint_sha"]
    assert old_sha != new_sha
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("shard_0" in m and old_sha in m and new_sha in m for m in warned), warned
    fresh = _shard_step(tmp_path / "fresh", ckpt)
    assert (out / "features.f16").read_bytes() == (fresh / "features.f16").read_bytes()
    assert (out / "features.f16").read_bytes() != old_bytes
    assert json.loads((out / "meta.json").read_text()) == json.loads((fresh / "meta.json").read_text())
