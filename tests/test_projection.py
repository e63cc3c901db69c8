"""Dense, sparse and factored projections and ghost-norm GraNd, each against slow exact float64 references.

References are by definition: per-example gradients from one backward pass per example (``per_example_reference``),
matrices written out entry by entry in Python loops, inner products of exact gradients.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import per_example_reference
from test_layer_grads import CASES, META, BatchCentered, _data
from torch import nn

from datasel.errors import ConfigError, DataError
from datasel.features.compute import cross_entropy, featurize
from datasel.features.factored import FactoredProjector, layer_budget, side_dims
from datasel.features.grads import PerSampleGrads, per_sample_grad_norms, select_params
from datasel.features.norms import GradNorms
from datasel.features.projectors import DenseProjector, SparseProjector, inner_product_correlation, make_projector
from datasel.features.store import FeatureShard, check_same_space
from datasel.models import build_model

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)


class WideSequence(nn.Module):
    """A Linear over few positions with wide fans (ghost norms take the Gram route) and a LayerNorm (not factorable)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 48)
        self.norm = nn.LayerNorm(48)
        self.wide = nn.Linear(48, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.inp(x.reshape(-1, 4, 10))))
        return self.head(torch.relu(self.wide(h)).mean(1))


ALL = {**CASES, "wide": (WideSequence, (40,))}


def _model(case: str) -> nn.Module:
    torch.manual_seed(1)
    return ALL[case][0]().double().eval()


def _exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return per_example_reference(model, x, y, list(select_params(model, "all")))


# -- the matrices, entry by entry ---------------------------------------------------------------------------------
def test_sparse_matrix_is_a_countsketch() -> None:
    """Every input coordinate has exactly nnz nonzeros ±1/sqrt(nnz), one per segment, and buckets are balanced."""
    for nnz in (1, 2):
        p = SparseProjector(1000, 64, nnz=nnz, seed=5, block_rows=300)
        m = p.matrix()
        assert m.shape == (1000, 64)
        for i in range(1000):
            row = m[i]
            nz = row.nonzero().flatten().tolist()
            assert len(nz) == nnz
            assert sorted(j // (64 // nnz) for j in nz) == list(range(nnz))
            for j in nz:
                assert abs(abs(row[j].item()) - 1 / math.sqrt(nnz)) < 1e-6
        counts = (m[:300] != 0).sum(0)  # one full block: 300 coordinates over 32 or 64 buckets per segment
        assert counts.max() - counts.min() <= 1
    x = torch.randn(3, 1000, dtype=torch.float64)
    p = SparseProjector(1000, 64, nnz=2, seed=5, block_rows=300)
    assert torch.allclose(p.project(x), x @ p.matrix().double(), atol=1e-6)
    assert not torch.equal(p.matrix(), SparseProjector(1000, 64, nnz=2, seed=6, block_rows=300).matrix())
    with pytest.raises(ConfigError, match="divisible by sparse_nnz"):
        SparseProjector(10, 64, nnz=3)


def _kron_reference(proj: FactoredProjector, g: torch.Tensor) -> torch.Tensor:
    """The factored map written out: (P_out ⊗ P_in) vec(G) entry by entry, P_out b, stage 2, rest."""
    mids = []
    for lay in proj.layers.values():
        po = lay.p_out.double() if lay.p_out is not None else torch.eye(lay.fan_out, dtype=torch.float64)
        pi = lay.p_in.double() if lay.p_in is not None else torch.eye(lay.fan_in, dtype=torch.float64)
        if lay.weight_cols is not None:
            c, n = lay.weight_cols
            kron = torch.zeros(lay.k_out * lay.k_in, n, dtype=torch.float64)
            for r in range(lay.k_out):
                for s in range(lay.k_in):
                    for o in range(lay.fan_out):
                        kron[r * lay.k_in + s, o * lay.fan_in : (o + 1) * lay.fan_in] = po[r, o] * pi[s]
            mids.append(g[:, c : c + n] @ kron.T)
        if lay.bias_cols is not None:
            c, n = lay.bias_cols
            mids.append(g[:, c : c + n] @ po.T)
    out = torch.cat(mids, 1) @ proj.stage2.matrix().double()
    if proj.rest is not None:
        rest = torch.cat([g[:, c : c + n] for c, n in proj.rest_cols], 1)
        out = out + rest @ proj.rest.matrix().double()
    return out


@pytest.mark.parametrize("stage2", ["dense", "sparse"])
def test_factored_map_is_the_kronecker_sketch_of_the_gradient(stage2: str) -> None:
    model = _model("wide")
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    proj = FactoredProjector(comp, 32, layer_dim=64, out_share=0.75, rest="dense", stage2=stage2, seed=2)
    assert [(lay.k_out, lay.k_in) for lay in proj.layers.values()] == [(23, 2), (23, 2), (10, 6)]
    assert proj.rest_names == ["norm.weight", "norm.bias"]
    x, y = _data(5)
    g = _exact(model, x, y)
    # (the reference scales the float32 stage-2 matrix before the product, the projector after it: 1e-7 apart)
    assert torch.allclose(proj.project(g), _kron_reference(proj, g), rtol=1e-6, atol=1e-9)


def test_auto_budget_follows_the_layer_size() -> None:
    assert layer_budget("auto", 1_000_000) == 16384  # capped: a 1000x1000 Linear gets 128 x 128
    assert layer_budget("auto", 40_000) == 5000
    assert layer_budget("auto", 3072) == 384
    assert layer_budget("auto", 1600) == 256  # floored: small layers keep a usable sketch
    assert layer_budget(1024, 3072) == 1024  # a fixed size is used as given
    model = build_model({"name": "mlp", "hidden": [1000]}, META)
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    proj = make_projector({"projection": "factored", "dim": 64}, comp.dim, grads=comp)
    assert proj.fingerprint()["layers"] == [["body.0", *side_dims(1000, 40, 5000, 0.5)],
                                            ["head", *side_dims(10, 1000, 1250, 0.5)]]
    for bad in ("big", 0, -4, True, 2.5):  # every spelling gets the one message, through the config or directly
        with pytest.raises(ConfigError, match="neither auto nor a positive integer"):
            make_projector({"projection": "factored", "dim": 64, "factor_dim": bad}, comp.dim, grads=comp)
        with pytest.raises(ConfigError, match="neither auto nor a positive integer"):
            FactoredProjector(comp, 64, layer_dim=bad)
    as_text = make_projector({"projection": "factored", "dim": 64, "factor_dim": "512"}, comp.dim, grads=comp)
    assert as_text.fingerprint()["factor_dim"] == 512


def test_side_dims_split_the_budget() -> None:
    assert side_dims(1000, 1000, 4096, 0.5) == (64, 64)
    assert side_dims(1000, 1000, 4096, 0.75) == (512, 8)
    assert side_dims(32, 96, 1024, 0.75) == (32, 32)  # a small output side is kept exact, the input side gets more
    assert side_dims(10, 5, 4096, 0.5) == (10, 5)  # a layer under budget stays exact
    assert side_dims(32, 5, 256, 0.5) == (32, 5)  # the default CNN's first conv: 160 weights under a 256 budget
    assert side_dims(64, 5, 256, 0.5) == (51, 5)  # a capped input side hands its unused budget to the output side
    assert side_dims(10, 160, 256, 0.5) == (10, 25)


# -- the tapped path equals the map applied to exact gradients; chunking and sharding change nothing -----------------
@pytest.mark.parametrize("case", list(ALL))
def test_factored_taps_match_the_map_of_exact_gradients(case: str) -> None:
    model = _model(case)
    x, y = _data(9)
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    proj = make_projector({"projection": "factored", "dim": 24, "factor_dim": 16, "seed": 3}, comp.dim, grads=comp)
    got = proj.features(comp, x, y)
    assert proj.path == "taps"
    want = proj.project(_exact(model, x, y))
    assert ((got - want).norm() / want.norm()).item() < 1e-10


def test_factored_lora_adapters_use_the_taps() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(4)
    base = build_model({"name": "mlp", "hidden": [16]}, META).double()
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["body.0"], lora_dropout=0.0)).eval()
    x, y = _data(6)
    comp = PerSampleGrads(model, cross_entropy, "lora", "auto")
    proj = make_projector({"projection": "factored", "dim": 8, "factor_dim": 4}, comp.dim, grads=comp)
    assert len(proj.layers) == 2 and not proj.rest_names  # lora_A and lora_B are Linear layers
    got = proj.features(comp, x, y)
    assert proj.path == "taps"
    want = proj.project(per_example_reference(model, x, y, list(comp.params)))
    assert ((got - want).norm() / want.norm()).item() < 1e-10


@pytest.mark.parametrize("projection", ["dense", "sparse", "factored"])
def test_features_do_not_depend_on_chunks_or_shards(projection: str, tmp_path: Path) -> None:
    model = _model("sequence")
    x, y = _data(13)
    cfg = {"projection": projection, "dim": 16, "factor_dim": 16, "seed": 4, "block_rows": 50, "chunk_size": 13,
           "cache_mb": 0}
    whole = featurize(model, x, y, tmp_path / "whole", cfg)
    one = FeatureShard.open(tmp_path / "whole").read(0, 13)
    parts = []
    for i, (lo, hi) in enumerate([(0, 4), (4, 13)]):  # two shards, in chunks of 1 and 3
        featurize(model, x[lo:hi], y[lo:hi], tmp_path / f"s{i}", {**cfg, "chunk_size": 1 + 2 * i})
        parts.append(FeatureShard.open(tmp_path / f"s{i}").read(0, hi - lo))
    assert whole["projection"] == projection
    assert (torch.from_numpy(one) - torch.cat([torch.from_numpy(p) for p in parts])).abs().max().item() < 1e-3


# -- quality: inner products of projected vs exact gradients (fixed seeds) -----------------------------------------
@pytest.mark.parametrize("projection, floor, factor_dim", [("dense", 0.97, 256), ("sparse", 0.97, 256),
                                                          ("factored", 0.95, 256), ("factored", 0.95, "auto")])
def test_projected_inner_products_track_exact_ones(projection: str, floor: float, factor_dim: int | str) -> None:
    torch.manual_seed(0)
    model = build_model({"name": "cnn1d", "channels": 8}, META).double().eval()
    x, y = _data(64)
    exact = _exact(model, x, y)
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    proj = make_projector({"projection": projection, "dim": 256, "factor_dim": factor_dim, "seed": 0}, comp.dim,
                          grads=comp)
    feats = proj.features(comp, x, y)
    corr = inner_product_correlation(feats, exact, pairs=200, seed=0)
    assert corr >= floor, corr
    # not the identity in disguise, nor wrongly scaled: squared norms are kept on average, with JL's spread
    ratio = feats.pow(2).sum(1) / exact.pow(2).sum(1)
    assert abs(ratio.mean().item() - 1) < 0.1
    assert 0.01 < ratio.std().item() < 0.5
    # a projection that loses the structure (another seed's features against these exact gradients) scores low
    assert inner_product_correlation(feats[torch.randperm(64, generator=torch.Generator().manual_seed(1))], exact) < 0.5
    # every pair: the same figure as an explicit loop over i < j
    fi, ei = [], []
    for i in range(16):
        for j in range(i + 1, 16):
            fi.append(float(feats[i].double() @ feats[j].double()))
            ei.append(float(exact[i].double() @ exact[j].double()))
    ref = float(torch.corrcoef(torch.tensor([fi, ei], dtype=torch.float64))[0, 1])
    assert math.isclose(inner_product_correlation(feats[:16], exact[:16], pairs=None), ref, rel_tol=1e-9)


def test_factored_falls_back_when_examples_interact(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(3)
    model = BatchCentered().double()
    x, y = _data(6)
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    proj = make_projector({"projection": "factored", "dim": 8, "factor_dim": 16}, comp.dim, grads=comp)
    with caplog.at_level(logging.WARNING):
        got = proj.features(comp, x, y)
    assert proj.path == "flat"
    assert any("disagree" in r.message for r in caplog.records)
    want = proj.project(_exact(model, x, y))
    assert ((got - want).norm() / want.norm()).item() < 1e-9


def test_dense_blocks_are_cached_while_they_fit() -> None:
    x = torch.randn(4, 2500, dtype=torch.float64)
    full = DenseProjector(2500, 64, seed=1, block_rows=1000)
    part = DenseProjector(2500, 64, seed=1, block_rows=1000, cache_mb=2 * 1000 * 64 * 4 / 2**20)
    assert torch.equal(full.project(x), part.project(x))
    assert sorted(part._cache.blocks) == [0, 1]  # the third block is regenerated per chunk, the first two kept
    assert torch.equal(full.project(x), part.project(x))


# -- store: features of different projections never mix -----------------------------------------------------------
def test_store_refuses_to_mix_projections(tmp_path: Path) -> None:
    model = _model("mlp")
    x, y = _data(6)
    sparse = featurize(model, x, y, tmp_path / "a", {"projection": "sparse", "dim": 8})
    dense = featurize(model, x, y, tmp_path / "b", {"projection": "dense", "dim": 8})
    assert sparse["projection"] == "sparse" and dense["projection"] == "dense"
    assert sparse["projection_sha"] != dense["projection_sha"]
    with pytest.raises(DataError, match="projected differently: projection='sparse' vs 'dense'"):
        check_same_space(sparse, dense, tmp_path / "a")
    other = featurize(model, x, y, tmp_path / "c", {"projection": "factored", "dim": 8, "factor_out_share": 0.5})
    again = featurize(model, x, y, tmp_path / "d", {"projection": "factored", "dim": 8, "factor_out_share": 1.0})
    with pytest.raises(DataError, match="projection_sha"):  # one projection, other settings
        check_same_space(other, again, tmp_path / "c")
    with pytest.raises(DataError, match="projection='dense' \\(now 'sparse'\\)"):  # resuming with another projection
        featurize(model, x, y, tmp_path / "b", {"projection": "sparse", "dim": 8})
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    with pytest.raises(DataError, match="projection"):
        FeatureShard.open(tmp_path / "b", expect={**meta, "projection": "factored"})


# -- ghost norms --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(ALL))
def test_ghost_norms_are_exact(case: str) -> None:
    model = _model(case)
    x, y = _data(9)
    names = [n for n, p in model.named_parameters() if not n.startswith("norm.")]  # ghost needs Linear/Conv only
    want = per_example_reference(model, x, y, names).norm(dim=1)
    norms = GradNorms(model, cross_entropy, names, "auto")
    got = torch.cat([norms(x[:4], y[:4]), norms(x[4:], y[4:])])
    assert norms.mode == "ghost"
    assert ((got - want).abs() / want).max().item() < 1e-10


def test_ghost_norms_float32_and_fallbacks(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = WideSequence().eval()
    x, y = _data(8)
    want = per_example_reference(model.double(), x, y, list(select_params(model, "all"))).norm(dim=1)
    model.float()
    got = per_sample_grad_norms(model, x.float(), y, cross_entropy)  # LayerNorm: ghost does not apply
    assert ((got.double() - want).abs() / want).max().item() < 1e-5
    lin = [n for n in select_params(model, "all") if not n.startswith("norm.")]
    fast = GradNorms(model, cross_entropy, lin, "auto")
    want_lin = per_example_reference(model.double(), x, y, lin).norm(dim=1)
    model.float()
    assert ((fast(x.float(), y).double() - want_lin).abs() / want_lin).max().item() < 1e-5 and fast.mode == "ghost"
    with pytest.raises(ConfigError, match="ghost norms cannot run"):
        GradNorms(model, cross_entropy, "all", "ghost")
    inter = BatchCentered().double()
    g = GradNorms(inter, cross_entropy, "all", "auto")
    with caplog.at_level(logging.WARNING):
        got = g(x, y)
    assert g.mode != "ghost" and any("ghost norms disagree" in r.message for r in caplog.records)
    assert torch.allclose(got, _exact(inter, x, y).norm(dim=1), rtol=1e-9)
