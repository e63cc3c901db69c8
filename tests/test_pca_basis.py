"""The fitted (pca) basis of the factored projection, against references written out from exact gradients.

References: per-example weight gradients from one backward pass per example, their stacked moments summed in a
Python loop, eigenvectors of matrices built with known eigenvectors, and the kept coordinates rebuilt by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, per_example_reference, snakemake, write_config
from test_layer_grads import CASES, META, BatchCentered, _data
from torch import nn

from datasel.errors import ConfigError
from datasel.features.compute import cross_entropy, featurize, fit_rows
from datasel.features.factored import FactoredProjector
from datasel.features.grads import PerSampleGrads, select_params
from datasel.features.pca_basis import keep_columns, top_directions
from datasel.features.projectors import inner_product_correlation, make_projector
from datasel.features.store import FeatureSet, FeatureShard
from datasel.models import build_model

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)


def _model(case: str) -> nn.Module:
    torch.manual_seed(1)
    return CASES[case][0]().double().eval()


def _weights(proj: FactoredProjector, g: torch.Tensor, path: str) -> torch.Tensor:
    lay = proj.layers[path]
    c, n = lay.weight_cols
    return g[:, c : c + n].reshape(-1, lay.fan_out, lay.fan_in)


def _pca(model: nn.Module, dim: int, x: torch.Tensor, y: torch.Tensor, **kw) -> tuple[FactoredProjector, PerSampleGrads]:
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    proj = make_projector({"projection": "factored", "factor_basis": "pca", "dim": dim, **kw}, comp.dim, grads=comp)
    proj.fit(comp, [(x[:5], y[:5]), (x[5:], y[5:])])
    return proj, comp


@pytest.mark.parametrize("case", list(CASES))
def test_side_moments_are_the_stacked_gradient_moments(case: str) -> None:
    """Taps (positions, convolution windows) and flattened gradients give Σ G Gᵀ and Σ Gᵀ G of the exact G_i."""
    model = _model(case)
    x, y = _data(9)
    proj, comp = _pca(model, 8, x, y)
    exact = per_example_reference(model, x, y, list(select_params(model, "all")))
    taps = proj._fit_taps()
    assert taps is not None
    moments = proj._moments(comp, [(x[:4], y[:4]), (x[4:], y[4:])], taps)
    flat = proj._moments(comp, [(x, y)], None)
    for path in proj.layers:
        w = _weights(proj, exact, path)
        out = sum(w[i] @ w[i].T for i in range(9))
        inp = sum(w[i].T @ w[i] for i in range(9))
        for m in (moments[path], flat[path]):
            assert torch.allclose(m.out, out, rtol=1e-9, atol=1e-12) and torch.allclose(m.inp, inp, rtol=1e-9, atol=1e-12)


def test_top_directions_are_the_leading_eigenvectors_with_fixed_signs() -> None:
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    lam = torch.tensor([1.0, 7.0, 3.0, 0.5, 5.0, 2.0], dtype=torch.float64)
    m = q @ torch.diag(lam) @ q.T
    top = top_directions(m, 3).double()
    for row, col in zip(top, (1, 4, 2)):  # eigenvalues 7, 5, 3
        want = q[:, col] * torch.sign(q[q[:, col].abs().argmax(), col])
        assert torch.allclose(row, want, atol=1e-6)
    assert (top.gather(1, top.abs().argmax(1, keepdim=True)) > 0).all()
    assert keep_columns(torch.tensor([1.0, 5.0, 5.0, 0.0, 3.0]), 3).tolist() == [1, 2, 4]  # ties in index order


@pytest.mark.parametrize("case", list(CASES))
def test_pca_features_are_the_kept_coordinates_of_the_rotated_gradient(case: str) -> None:
    model = _model(case)
    x, y = _data(9)
    proj, comp = _pca(model, 12, x, y, factor_rank=3)
    exact = per_example_reference(model, x, y, list(select_params(model, "all")))
    cands = []
    for path, lay in proj.layers.items():  # u_iᵀ G v_j for every pair of directions, then u_iᵀ b
        po, pi = lay.p_out.double(), lay.p_in.double()
        if lay.weight_cols is not None:
            cands.append(torch.einsum("ao,nof,bf->nab", po, _weights(proj, exact, path), pi).reshape(9, -1))
        if lay.bias_cols is not None:
            c, n = lay.bias_cols
            cands.append(exact[:, c : c + n] @ po.T)
    cands = torch.cat(cands, 1)
    keep = cands.pow(2).sum(0).argsort(descending=True)[:12].sort().values  # fitted on these same rows
    assert proj._keep.tolist() == keep.tolist()
    want = cands[:, keep]
    share = want.pow(2).sum() / sum(exact[:, c : c + n].pow(2).sum() for lay in proj.layers.values()
                                    for c, n in (lay.weight_cols, lay.bias_cols) if c is not None)
    assert abs(proj.energy_share - share.item()) < 1e-9
    got = proj.features(comp, x, y)
    assert proj.path == "taps"
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)
    assert torch.allclose(proj.project(exact), want, rtol=1e-8, atol=1e-10)
    for lay in proj.layers.values():  # orthonormal directions
        assert torch.allclose(lay.p_out @ lay.p_out.T, torch.eye(lay.k_out), atol=1e-5)


def test_a_full_pca_basis_keeps_inner_products_exactly() -> None:
    """With room for every coordinate the map is a rotation per layer: the Gram matrix is the exact one."""
    model = _model("sequence")
    x, y = _data(9)
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    proj = make_projector({"projection": "factored", "factor_basis": "pca", "dim": comp.dim + 3, "factor_rank": 1},
                          comp.dim, grads=comp)
    assert proj.rank > 1 and proj.dim_mid == comp.dim  # the grid widened until it holds the whole gradient
    proj.fit(comp, [(x, y)])
    feats = proj.features(comp, x, y)
    exact = per_example_reference(model, x, y, list(comp.params))
    # (to the float32 rounding of the stored directions)
    assert torch.allclose(feats @ feats.T, exact @ exact.T, rtol=1e-6, atol=1e-6)
    assert (feats[:, comp.dim :] == 0).all()


def test_pca_beats_a_random_sketch_of_the_same_size_on_held_out_rows() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "hidden": [96, 96]}, META).double().eval()
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(400, 40, generator=gen, dtype=torch.float64), torch.randint(0, 10, (400,), generator=gen)
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    exact = comp(x[:100], y[:100]).clone()
    corr = {}
    for basis in ("random", "pca"):
        proj = make_projector({"projection": "factored", "factor_basis": basis, "dim": 64}, comp.dim, grads=comp)
        if basis == "pca":
            proj.fit(comp, [(x[100:], y[100:])])  # rows the figure is not measured on
        corr[basis] = inner_product_correlation(proj.features(comp, x[:100], y[:100]), exact, None)
    assert corr["pca"] > 0.98 and corr["pca"] > corr["random"] + 0.2, corr  # measured: 0.990 against 0.753


def test_pca_needs_a_fit_and_its_fingerprint_names_the_basis(tmp_path: Path) -> None:
    model = _model("cnn1d")
    x, y = _data(13)
    comp = PerSampleGrads(model, cross_entropy, "all", "auto")
    proj = make_projector({"projection": "factored", "factor_basis": "pca", "dim": 8}, comp.dim, grads=comp)
    assert proj.needs_fit
    with pytest.raises(RuntimeError, match="fit"):
        proj.features(comp, x, y)
    with pytest.raises(ConfigError, match="factor_basis") as err:
        make_projector({"projection": "factored", "factor_basis": "svd", "dim": 8}, comp.dim, grads=comp)
    assert err.value.field == "features.factor_basis"
    # one fit for every shard: identical features and digests, though the shards' chunks fall elsewhere
    cfg = {"projection": "factored", "factor_basis": "pca", "dim": 8, "chunk_size": 5}
    whole = featurize(model, x, y, tmp_path / "whole", cfg, fit=(x, y))
    parts = [featurize(model, x[lo:hi], y[lo:hi], tmp_path / f"s{lo}", cfg, fit=(x, y)) for lo, hi in ((0, 6), (6, 13))]
    assert {p["projection_sha"] for p in parts} == {whole["projection_sha"]}
    one = torch.from_numpy(FeatureShard.open(tmp_path / "whole").read(0, 13))
    two = torch.cat([torch.from_numpy(FeatureShard.open(tmp_path / f"s{lo}").read(0, n)) for lo, n in ((0, 6), (6, 7))])
    assert torch.equal(one, two)
    # fitted on other rows: another basis, another digest (so the store refuses to mix them)
    other = featurize(model, x[:6], y[:6], tmp_path / "own", cfg)
    assert other["projection_sha"] != whole["projection_sha"]


def test_fit_rows_spread_over_the_split() -> None:
    assert fit_rows(10, 3).tolist() == [0, 3, 6]
    assert fit_rows(4, 9).tolist() == [0, 1, 2, 3]
    labels = torch.arange(3).repeat_interleave(100)  # a file sorted by class: every class is fitted on
    assert labels[fit_rows(300, 30)].bincount().tolist() == [10, 10, 10]


def test_pca_fit_steps_down_when_examples_interact() -> None:
    """A model that couples examples: the features fall back to flattened gradients, still the fitted map."""
    torch.manual_seed(3)
    model = BatchCentered().double()
    x, y = _data(6)
    proj, comp = _pca(model, 6, x, y)
    got = proj.features(comp, x, y)
    assert proj.path == "flat"
    want = proj.project(per_example_reference(model, x, y, list(comp.params)))
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)


def test_pipeline_shards_and_splits_share_one_fitted_basis(tmp_path: Path) -> None:
    cfg = {**TINY, "features": {"shards": 2, "sets": {"g": {"seeds": [0], "epochs": [1], "splits": ["train", "val"],
                                                              "dim": 16, "factor_basis": "pca",
                                                              "factor_fit_rows": 100}}},
           "scoring": {"align": {"method": "target_alignment", "features": "g", "reduce": "mean",
                                 "weights": "uniform"}},
           "selection": {"fractions": [0.5], "policies": {"top": {"policy": "top", "score": "align"}}}}
    write_config(tmp_path, cfg)
    snakemake(tmp_path, "results/selections/top_keep50.parquet")
    sets = {s: FeatureSet.open(tmp_path / f"results/features/g/seed0-epoch1-{s}/index.json") for s in ("train", "val")}
    shas = {s: fs.meta["projection_sha"] for s, fs in sets.items()}
    assert shas["train"] == shas["val"] and sets["train"].meta["projection"] == "factored"
    assert sets["train"].load().shape[1] == 16
