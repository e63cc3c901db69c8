"""Adam-preconditioned features (LESS) against a slow reference written out by hand.

The reference: per-example gradients from one autograd pass per example (``per_example_reference``), LESS's update
``m'/sqrt(v'+eps)`` spelled out entry by entry from the moments, then the projection's own matrix map
(``project``). The fast paths under test: the factored projection's grouped per-layer route (gradients formed from
the layer taps, preconditioned and projected group by group, never the ``(B, D)`` gradient) and the in-place
preconditioning of the flat route.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import per_example_reference
from test_layer_grads import META, _data
from test_projection import ALL, _model

from datasel.features import factored
from datasel.features.compute import cross_entropy, featurize
from datasel.features.grads import PerSampleGrads
from datasel.features.layer_grads import LayerGrads
from datasel.features.projectors import AdamPreconditioner, make_projector
from datasel.features.store import FeatureShard
from datasel.models import build_model

os.environ.setdefault("DATASEL_PROGRESS", "0")
torch.set_num_threads(1)
BETAS, EPS = (0.8, 0.9), 1e-6


def _moments(ref: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Moments of the gradients' own scale, so that ``(1-b2) g²`` moves ``v'`` and the map is far from linear."""
    gen = torch.Generator().manual_seed(seed)
    scale = ref.abs().mean()
    m = torch.randn(ref.shape[1], generator=gen, dtype=torch.float64) * scale
    v = torch.rand(ref.shape[1], generator=gen, dtype=torch.float64) * scale**2
    return m.to(ref.dtype), v.to(ref.dtype)


def _less_update(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """LESS's Adam update of per-example gradients, entry by entry as its formula reads (eps inside the root)."""
    b1, b2 = BETAS
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * g * g
    return m_new / torch.sqrt(v_new + EPS)


def _refuse_flat(*_args: object, **_kwargs: object) -> torch.Tensor:
    raise AssertionError("the (B, D) gradient was formed")


@pytest.mark.parametrize("case", ["mlp", "cnn1d", "conv2d", "sequence"])
@pytest.mark.parametrize("group_bytes", [1, 64 << 20])  # one layer per group, and every same-shaped layer at once
def test_factored_preconditioned_matches_reference(case: str, group_bytes: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared layers (sequence: summed over calls before the nonlinear update), unused layers (their zero gradient
    still maps to ``b1 m / sqrt(b2 v + eps)``), convolutions and biases, in float64 to 1e-10."""
    monkeypatch.setattr(factored, "GROUP_BYTES", group_bytes)
    model = _model(case)
    x, y = _data(9, ALL[case][1])
    comp = PerSampleGrads(model, cross_entropy, "all", "layers", reuse=True)
    proj = make_projector({"projection": "factored", "dim": 24, "factor_dim": 16, "seed": 3}, comp.dim, grads=comp)
    ref = per_example_reference(model, x, y, list(comp.params))
    m, v = _moments(ref)
    want = proj.project(_less_update(ref, m, v))
    pre = AdamPreconditioner(m, v, BETAS, EPS)
    monkeypatch.setattr(LayerGrads, "__call__", _refuse_flat)
    got = torch.cat([proj.preconditioned(comp, x[s : s + 4], y[s : s + 4], pre) for s in range(0, 9, 4)])
    assert ((got - want).norm() / want.norm()).item() < 1e-10
    assert (got - proj.project(ref)).norm() > 0.1 * want.norm()  # the update changes the features


def test_factored_preconditioned_lora_float32_equals_the_flat_route() -> None:
    """LoRA adapters in float32, as the LM chain runs them: the grouped route gives the flat route's features."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(4)
    base = build_model({"name": "mlp", "hidden": [16, 16]}, META)
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["body.0", "body.2"],
                                                      lora_dropout=0.0)).eval()
    x, y = _data(7)
    x = x.float()
    comp = PerSampleGrads(model, cross_entropy, "lora", "layers", reuse=True)
    proj = make_projector({"projection": "factored", "dim": 8, "factor_dim": 4}, comp.dim, grads=comp)
    ref = per_example_reference(model, x, y, list(comp.params))
    m, v = _moments(ref)
    pre = AdamPreconditioner(m, v, BETAS, EPS)
    got = proj.preconditioned(comp, x, y, pre)
    flat = proj.project(pre(comp(x, y)))
    torch.testing.assert_close(got, flat, rtol=1e-5, atol=1e-7)
    want = proj.project(_less_update(ref.double(), m.double(), v.double()))
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-4


def test_in_place_preconditioning_is_the_formula() -> None:
    """``apply_`` on the whole gradient, on a block at a start column and on an index tensor of columns."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5, 60, generator=gen, dtype=torch.float64)
    m, v = _moments(g)
    pre = AdamPreconditioner(m, v, BETAS, EPS)
    want = _less_update(g, m, v)
    assert ((pre(g) - want).abs().max() / want.abs().max()).item() < 1e-14
    block = pre.apply_(g[:, 12:36].clone().view(5, 4, 6), 12)
    torch.testing.assert_close(block.reshape(5, -1), want[:, 12:36], rtol=1e-14, atol=0)
    cols = torch.tensor([[[3, 7]], [[40, 41]]])  # (2 groups, 1, 2): broadcast over the rows
    picked = pre.apply_(torch.stack([g[:, [3, 7]], g[:, [40, 41]]]), cols)
    torch.testing.assert_close(picked, torch.stack([want[:, [3, 7]], want[:, [40, 41]]]), rtol=1e-14, atol=0)


@pytest.mark.parametrize("projection, mode", [("factored", "layers"), ("factored", "auto"), ("sparse", "layers")])
def test_featurize_preconditioned_matches_reference(projection: str, mode: str, tmp_path: Path) -> None:
    """The whole feature step, chunked (auto takes the flat route on its first chunk, the grouped one after)."""
    model = _model("sequence")
    x, y = _data(11)
    comp = PerSampleGrads(model, cross_entropy, "all", "loop")
    ref = per_example_reference(model, x, y, list(comp.params))
    m, v = _moments(ref)
    cfg = {"projection": projection, "dim": 16, "factor_dim": 16, "seed": 2, "chunk_size": 4, "mode": mode,
           "precondition": "adam"}
    meta = featurize(model, x, y, tmp_path / "shard", cfg, preconditioner=AdamPreconditioner(m, v, BETAS, EPS))
    assert meta["precondition"] == "adam"
    got = torch.from_numpy(FeatureShard.open(tmp_path / "shard").read(0, 11)).double()
    proj = make_projector(cfg, comp.dim, grads=comp)
    want = proj.project(_less_update(ref, m, v))
    assert ((got - want).norm() / want.norm()).item() < 1e-3  # the shard stores float16 (2^-11 relative)
    unconditioned = proj.project(ref)
    assert ((got - unconditioned).norm() / unconditioned.norm()).item() > 0.1
