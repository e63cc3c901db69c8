"""Per-sample gradients: vmap and the loop against the definition, chunking, parameter sets, LoRA, shard bounds."""

from __future__ import annotations

import os

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
