"""Projectors: Johnson–Lindenstrauss accuracy, seeded block-wise determinism across processes, Adam preconditioning."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasel.errors import ConfigError
from datasel.features.projectors import AdamPreconditioner, DenseProjector, NoOpProjector, make_projector

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)


def _jl_eps(k: int, pairs: int, delta: float) -> float:
    """Smallest ε with pairs · 2·exp(-(ε²/2 - ε³/3)·k/2) <= δ (the JL tail bound for one squared norm)."""
    lo, hi = 1e-4, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if pairs * 2 * math.exp(-(mid**2 / 2 - mid**3 / 3) * k / 2) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_inner_products_within_jl_bound(kind: str) -> None:
    n, d, k = 24, 3000, 512
    g = torch.Generator().manual_seed(0)
    # correlated, heavy-ish vectors like real gradients (a shared direction plus noise)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    x = 0.7 * base + torch.randn(n, d, generator=g, dtype=torch.float64)
    u = x / x.norm(dim=1, keepdim=True)
    proj = DenseProjector(d, k, kind, seed=7, block_rows=1000)
    p = proj.project(u)
    err = (p @ p.T - u @ u.T).abs()
    # |<Pu,Pv> - <u,v>| <= ε holds for unit u, v when ‖u+v‖ and ‖u-v‖ are preserved: 2·n² squared norms.
    eps = _jl_eps(k, 2 * n * n, delta=1e-3)
    assert err.max().item() <= eps, (err.max().item(), eps)
    # and the projection is not the identity in disguise nor wrongly scaled: norms are preserved on average with
    # the spread JL predicts (var of ‖Pu‖² is about 2/k for Gaussian, a bit less for Rademacher)
    sq = p.pow(2).sum(1)
    assert abs(sq.mean().item() - 1.0) < 4 * math.sqrt(2 / k / n)
    assert 0.2 * math.sqrt(2 / k) < sq.std().item() < 2.0 * math.sqrt(2 / k)


def test_matrix_is_seeded_and_blockwise() -> None:
    a = DenseProjector(2500, 64, "rademacher", seed=3, block_rows=1000)
    b = DenseProjector(2500, 64, "rademacher", seed=3, block_rows=1000, cache_mb=0)
    c = DenseProjector(2500, 64, "rademacher", seed=4, block_rows=1000)
    ma = a.matrix()
    assert torch.equal(ma, b.matrix())
    assert not torch.equal(ma, c.matrix())
    assert set(torch.unique(ma * math.sqrt(64)).tolist()) == {-1.0, 1.0}
    assert ma.shape == (2500, 64)
    # no cache: blocks are regenerated, never stored
    b.project(torch.randn(3, 2500))
    assert not b._cache.blocks
    x = torch.randn(5, 2500, dtype=torch.float64)
    assert torch.allclose(a.project(x), x @ ma.double(), rtol=1e-10)


SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from datasel.features.projectors import DenseProjector
g = torch.from_numpy(np.load(sys.argv[1]))
p = DenseProjector(g.shape[1], 128, sys.argv[3], seed=11, block_rows=700, cache_mb=0)
np.save(sys.argv[2], p.project(g).numpy())
"""


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_shards_projected_in_other_processes_agree_with_whole(tmp_path: Path, kind: str) -> None:
    g = np.random.default_rng(0).standard_normal((40, 2000)).astype(np.float32)
    np.save(tmp_path / "a.npy", g[:17])
    np.save(tmp_path / "b.npy", g[17:])
    for part in "ab":
        subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"{part}.npy"), str(tmp_path / f"{part}_p.npy"),
                        kind], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    parts = np.concatenate([np.load(tmp_path / "a_p.npy"), np.load(tmp_path / "b_p.npy")])
    whole = DenseProjector(2000, 128, kind, seed=11, block_rows=700).project(torch.from_numpy(g)).numpy()
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)


def test_make_projector_and_errors() -> None:
    assert isinstance(make_projector({"projector": "none"}, 10), NoOpProjector)
    assert isinstance(make_projector({"dim": 0}, 10), NoOpProjector)
    p = make_projector({"projector": "gaussian", "dim": 8, "seed": 1}, 10)
    assert p.fingerprint() == {"projection": "dense", "kind": "gaussian", "dim_in": 10, "dim_out": 8, "seed": 1,
                               "block_rows": 4096}
    with pytest.raises(ConfigError, match="unknown projector"):
        make_projector({"projector": "sparse"}, 10)
    with pytest.raises(ConfigError, match="unknown projection"):
        make_projector({"projection": "lowrank", "dim": 8}, 10)
    with pytest.raises(ConfigError, match="needs the model"):
        make_projector({"projection": "factored", "dim": 8}, 10)
    with pytest.raises(ConfigError, match="gradient width"):
        p.project(torch.zeros(2, 11))


def test_adam_preconditioner_matches_torch_adam_step() -> None:
    """The preconditioned gradient is LESS's Adam update m'/sqrt(v'+eps) from torch Adam's moments (bias-free form;
    eps inside the root as in LESS's obtain_gradients_with_adam, where torch's own step uses sqrt(v')+eps)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.9), eps=1e-6)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    pre = AdamPreconditioner.from_optimizer_state(opt.state_dict(), model, ["weight", "bias"])
    assert pre is not None
    g = torch.randn(2, 15)
    m = torch.cat([opt.state[p]["exp_avg"].flatten() for p in model.parameters()])
    v = torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in model.parameters()])
    want = (0.8 * m + 0.2 * g) / (0.9 * v + 0.1 * g * g + 1e-6).sqrt()
    assert torch.allclose(pre(g), want)
    assert AdamPreconditioner.from_optimizer_state({"state": {}, "param_groups": []}, model, ["weight"]) is None


def test_proxy_checkpoints_carry_the_adam_moments_for_chosen_parameters(tmp_path) -> None:
    """The plumbing the features stage uses: moments saved with a proxy checkpoint, mapped back to parameter names."""
    from datasel.features.steps import checkpoint_preconditioner
    from datasel.models import build_model
    from datasel.training.classify import train_classifier
    from datasel.training.proxy import save_checkpoint

    torch.manual_seed(0)
    model = build_model({"name": "mlp", "hidden": [8]}, {"input_dim": 6, "num_classes": 3})
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    live: dict[int, dict[str, torch.Tensor]] = {}

    def on_checkpoint(epoch: int, m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        save_checkpoint(tmp_path / f"epoch{epoch}.pt", m, optimizer=opt.state_dict())
        live[epoch] = {n: opt.state[p]["exp_avg"].clone() for n, p in m.named_parameters() if p in opt.state}

    cfg = {"optimizer": "adam", "lr": 0.01, "batch_size": 8, "budget": {"unit": "epochs", "value": 2}}
    train_classifier(model, x, y, cfg, seed=0, checkpoint_epochs=(0, 2), on_checkpoint=on_checkpoint)
    assert checkpoint_preconditioner(tmp_path / "epoch0.pt", model, "all") is None  # no step taken yet
    pre = checkpoint_preconditioner(tmp_path / "epoch2.pt", model, "last_layer")
    assert pre is not None
    want = torch.cat([live[2]["head.weight"].flatten(), live[2]["head.bias"].flatten()])
    assert torch.equal(pre.m, want)  # the head's moments, in column order, not the body's
    from datasel.features.compute import cross_entropy, featurize
    from datasel.features.grads import per_sample_grads
    from datasel.features.store import FeatureShard

    meta = featurize(model, x, y, tmp_path / "shard", {"params": "last_layer", "dim": 16, "chunk_size": 16,
                                                        "projection": "dense"},
                     preconditioner=pre)
    assert meta["precondition"] == "adam"
    proj = make_projector({"dim": 16, "projection": "dense"}, pre.m.numel())
    want = proj.project(pre(per_sample_grads(model, x, y, cross_entropy, "last_layer"))).half().float()
    got = torch.from_numpy(FeatureShard.open(tmp_path / "shard").read(0, 40))
    assert torch.allclose(got, want, rtol=2e-3, atol=2e-3)
